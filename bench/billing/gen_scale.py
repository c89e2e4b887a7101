"""Bench data for the billing export at scale, fast: the layout of gen.py (the usage_15m and
raw Delta tables, one file per date partition and block of 1,000 meters, the same registry,
tariffs and config) for N customers, where every block of 1,000 meters repeats the readings
of the first block under its own device ids. The first block is written with deltalake
(creating the tables), the others with pyarrow and added to each table in one commit, with
the per-file statistics (numRecords, device_id, window_start / ts) readers prune on.

usage: python3 gen_scale.py <dir> <customers, a multiple of 1000>
"""
import json
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import write_deltalake

out = sys.argv[1]
n = int(sys.argv[2])
block = 1000
assert n % block == 0 and n >= block
start_us = 1790805600 * 1_000_000  # 2026-09-30T22:00:00Z = 2026-10-01 00:00 Europe/Berlin
step = 900 * 1_000_000
slots = 2980
day_us = 86_400_000_000
rng = np.random.default_rng(42)
ts_t = pa.timestamp("us", tz="UTC")
dec_t = pa.decimal128(38, 9)

with open(os.path.join(out, "registry.toml"), "w") as f:
    for i in range(n):
        f.write(f'[[customers]]\nid = "C{i:06d}"\ntariff = "household"\ncurrency = "EUR"\n'
                f'tax_rate = "0.19"\ntime_zone = "Europe/Berlin"\n\n'
                f'[[sites]]\nid = "S{i:06d}"\ncustomer = "C{i:06d}"\n\n'
                f'[[devices]]\nid = "m{i:06d}"\nsite = "S{i:06d}"\n\n')
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen.py")) as g:
    text = g.read()
    tariffs = text[text.index("f.write('''") + len("f.write('''"):text.index("''')")]
with open(os.path.join(out, "tariffs.toml"), "w") as f:
    f.write(tariffs)
with open(os.path.join(out, "billing.toml"), "w") as f:
    f.write('data_root = "."\nregistry = "registry.toml"\ntariffs = "tariffs.toml"\n')


def dec(v):
    return pa.Array.from_buffers(dec_t, len(v), [None, pa.py_buffer(
        np.stack([v, np.zeros_like(v)], axis=1).astype(np.int64).tobytes())])


def rep(s, k):
    return pa.repeat(pa.scalar(s, pa.string()), k)


ids = lambda c0: pa.array([f"m{i:06d}" for i in range(c0, c0 + block)], pa.string())
ws = start_us + step * np.arange(slots, dtype=np.int64)
milli = rng.integers(0, 300_000, size=(block, slots), dtype=np.int64)
rows = block * slots
start = np.tile(ws, block)
u_dev = np.repeat(np.arange(block), slots)
usage = pa.table({
    "device_id": ids(0).take(pa.array(u_dev)),
    "channel": rep("energy_import", rows), "kind": rep("counter", rows), "unit": rep("Wh", rows),
    "window": rep("15m", rows),
    "window_start": pa.array(start).cast(ts_t), "window_end": pa.array(start + step).cast(ts_t),
    "usage": dec(milli.reshape(-1) * 1_000_000),
    "min": pa.nulls(rows, dec_t), "max": pa.nulls(rows, dec_t), "avg": pa.nulls(rows, dec_t),
    "last": pa.nulls(rows, dec_t),
    "readings": pa.array(np.ones(rows, dtype=np.int64)),
    "first_ts": pa.array(start).cast(ts_t), "last_ts": pa.array(start + step).cast(ts_t),
    "coverage": pa.array(np.ones(rows, dtype=np.int64)).cast(dec_t),
    "flags": rep("", rows),
    "revision": pa.array(np.ones(rows, dtype=np.int64)),
    "computed_at": pa.array(start + step).cast(ts_t),
})
u_days = start // day_us
cum = np.concatenate([np.zeros((block, 1), dtype=np.int64), np.cumsum(milli, axis=1)], axis=1) + 5_000_000
m = slots + 1
rr = block * m
rts = np.tile(start_us + step * np.arange(m, dtype=np.int64), block)
r_dev = np.repeat(np.arange(block), m)
raw = pa.table({
    "device_id": ids(0).take(pa.array(r_dev)),
    "seq": pa.array(np.tile(np.arange(m, dtype=np.int64) + 1, block)),
    "ts": pa.array(rts).cast(ts_t),
    "channel": rep("energy_import", rr), "kind": rep("counter", rr), "unit": rep("Wh", rr),
    "value": dec(cum.reshape(-1) * 1_000_000),
    "quality": rep("", rr),
    "received_at": pa.array(rts + 2_000_000).cast(ts_t),
})
r_days = rts // day_us


def date_text(d):
    return time.strftime("%Y-%m-%d", time.gmtime(int(d) * 86400))


def ts_text(us):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(us // 1_000_000)) + ".000Z"


for name, table, days, ts_col in (("usage_15m", usage, u_days, "window_start"), ("raw", raw, r_days, "ts")):
    dev_idx = r_dev if name == "raw" else u_dev
    tbl = os.path.join(out, name)
    write_deltalake(tbl, table.append_column("date", pa.array(days.astype(np.int32)).cast(pa.date32())),
                    partition_by=["date"], mode="append")
    parts = []
    for d in np.unique(days):
        idx = np.nonzero(days == d)[0]
        t_ts = np.asarray(table.column(ts_col).cast(pa.int64()))[idx]
        parts.append((d, table.take(pa.array(idx)), pa.array(dev_idx[idx]), int(t_ts.min()), int(t_ts.max())))
    adds = []
    for c0 in range(block, n, block):
        devs = ids(c0)
        for d, part, didx, lo, hi in parts:
            rel = f"date={date_text(d)}/part-{c0:07d}.snappy.parquet"
            path = os.path.join(tbl, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            pq.write_table(part.set_column(0, "device_id", devs.take(didx)), path, compression="snappy")
            stats = {"numRecords": part.num_rows,
                     "minValues": {"device_id": f"m{c0:06d}", ts_col: ts_text(lo)},
                     "maxValues": {"device_id": f"m{c0 + block - 1:06d}", ts_col: ts_text(hi)},
                     "nullCount": {"device_id": 0, ts_col: 0}}
            adds.append({"add": {"path": rel, "partitionValues": {"date": date_text(d)},
                                 "size": os.path.getsize(path), "modificationTime": int(time.time() * 1000),
                                 "dataChange": True, "stats": json.dumps(stats)}})
        print(f"{name}: devices {c0 + block}/{n}", flush=True)
    if adds:
        log = os.path.join(tbl, "_delta_log")
        version = max(int(f.split(".")[0]) for f in os.listdir(log) if f.endswith(".json")) + 1
        with open(os.path.join(log, f"{version:020d}.json"), "x") as f:
            f.write(json.dumps({"commitInfo": {"timestamp": int(time.time() * 1000), "operation": "WRITE",
                                               "operationParameters": {"mode": "Append"}}}) + "\n")
            for a in adds:
                f.write(json.dumps(a) + "\n")
