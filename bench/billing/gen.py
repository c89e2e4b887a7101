"""Generates a bench data set for the billing export: N household customers (Europe/Berlin,
time-of-use + standing charge), one meter each with an `energy_import` Wh counter, one local
month (2026-10, 2,980 fifteen-minute intervals including the 25-hour DST day) of usage
(the `usage_15m` Delta table, schema gridmeter_core::schema::usage) and the raw counter readings it came from
(`raw/date=YYYY-MM-DD/`, schema gridmeter_core::schema::raw), plus registry/tariff/config TOML.

usage: python3 gen.py <dir> [customers=10000]
"""
import os
import sys

import numpy as np
import pyarrow as pa
from deltalake import write_deltalake

out = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
chunk = 1000
start_us = 1790805600 * 1_000_000  # 2026-09-30T22:00:00Z = 2026-10-01 00:00 Europe/Berlin
end_us = 1793487600 * 1_000_000  # 2026-10-31T23:00:00Z = 2026-11-01 00:00 Europe/Berlin
step = 900 * 1_000_000
slots = (end_us - start_us) // step
assert slots == 2980, slots
rng = np.random.default_rng(42)
ts_t = pa.timestamp("us", tz="UTC")
dec_t = pa.decimal128(38, 9)

with open(os.path.join(out, "registry.toml"), "w") as f:
    for i in range(n):
        f.write(f'[[customers]]\nid = "C{i:05d}"\ntariff = "household"\ncurrency = "EUR"\n'
                f'tax_rate = "0.19"\ntime_zone = "Europe/Berlin"\n\n'
                f'[[sites]]\nid = "S{i:05d}"\ncustomer = "C{i:05d}"\n\n'
                f'[[devices]]\nid = "m{i:05d}"\nsite = "S{i:05d}"\n\n')
with open(os.path.join(out, "tariffs.toml"), "w") as f:
    f.write('''[tariffs.household]
[[tariffs.household.components]]
type = "time_of_use"
name = "energy"
quantity = "import_energy"
unit = "kWh"
default_period = "offpeak"
holidays = ["2026-10-03"]
holiday_period = "offpeak"
periods = [ { name = "peak", rate = "0.3512" }, { name = "offpeak", rate = "0.2475" } ]
rules = [ { period = "peak", days = ["mon", "tue", "wed", "thu", "fri"], from_hour = 7, to_hour = 21 } ]
[[tariffs.household.components]]
type = "fixed"
name = "standing_charge"
monthly = "12.40"
''')
with open(os.path.join(out, "billing.toml"), "w") as f:
    f.write('data_root = "."\nregistry = "registry.toml"\ntariffs = "tariffs.toml"\n')

ws = start_us + step * np.arange(slots, dtype=np.int64)
for c0 in range(0, n, chunk):
    devs = pa.array([f"m{i:05d}" for i in range(c0, min(n, c0 + chunk))], pa.string())
    k = len(devs)
    # Wh per interval with 3 decimals (exact decimals, not floats): 0.000 .. 300.000
    milli = rng.integers(0, 300_000, size=(k, slots), dtype=np.int64)
    rows = k * slots
    dev_col = devs.take(pa.array(np.repeat(np.arange(k), slots)))
    start = np.tile(ws, k)
    wh = pa.Array.from_buffers(dec_t, rows, [None, pa.py_buffer(
        np.stack([milli.reshape(-1) * 1_000_000, np.where(milli.reshape(-1) < 0, -1, 0)], axis=1).astype(np.int64).tobytes())])
    table = pa.table({
        "device_id": dev_col,
        "channel": pa.repeat(pa.scalar("energy_import", pa.string()), rows),
        "kind": pa.repeat(pa.scalar("counter", pa.string()), rows),
        "unit": pa.repeat(pa.scalar("Wh", pa.string()), rows),
        "window": pa.repeat(pa.scalar("15m", pa.string()), rows),
        "window_start": pa.array(start).cast(ts_t),
        "window_end": pa.array(start + step).cast(ts_t),
        "usage": wh,
        "min": pa.nulls(rows, dec_t),
        "max": pa.nulls(rows, dec_t),
        "avg": pa.nulls(rows, dec_t),
        "last": pa.nulls(rows, dec_t),
        "readings": pa.array(np.ones(rows, dtype=np.int64)),
        "first_ts": pa.array(start).cast(ts_t),
        "last_ts": pa.array(start + step).cast(ts_t),
        "coverage": pa.array(np.ones(rows, dtype=np.int64)).cast(dec_t),
        "flags": pa.repeat(pa.scalar("", pa.string()), rows),
        "revision": pa.array(np.ones(rows, dtype=np.int64)),
        "computed_at": pa.array(start + step).cast(ts_t),
    })
    days_col = pa.array((start // 86_400_000_000).astype("int32")).cast(pa.date32())
    write_deltalake(os.path.join(out, "usage_15m"), table.append_column("date", days_col),
                    partition_by=["date"], mode="append")
    # Raw readings at every boundary (slots + 1 per device): cumulative register in milli-Wh.
    cum = np.concatenate([np.zeros((k, 1), dtype=np.int64), np.cumsum(milli, axis=1)], axis=1) + 5_000_000
    rts = start_us + step * np.arange(slots + 1, dtype=np.int64)
    days = (rts // 86_400_000_000)
    # All days of the chunk in one commit, one file per date partition.
    vals = cum.reshape(-1) * 1_000_000
    m = slots + 1
    rr = k * m
    seqs = np.tile(np.arange(m, dtype=np.int64) + 1, k)
    tss = np.tile(rts, k)
    raw = pa.table({
        "device_id": devs.take(pa.array(np.repeat(np.arange(k), m))),
        "seq": pa.array(seqs),
        "ts": pa.array(tss).cast(ts_t),
        "channel": pa.repeat(pa.scalar("energy_import", pa.string()), rr),
        "kind": pa.repeat(pa.scalar("counter", pa.string()), rr),
        "unit": pa.repeat(pa.scalar("Wh", pa.string()), rr),
        "value": pa.Array.from_buffers(dec_t, rr, [None, pa.py_buffer(
            np.stack([vals, np.zeros_like(vals)], axis=1).astype(np.int64).tobytes())]),
        "quality": pa.repeat(pa.scalar("", pa.string()), rr),
        "received_at": pa.array(tss + 2_000_000).cast(ts_t),
    })
    raw = raw.append_column("date", pa.array(np.tile(days, k).astype(np.int32)).cast(pa.date32()))
    write_deltalake(os.path.join(out, "raw"), raw, partition_by=["date"], mode="append")
    print(f"devices {c0 + k}/{n}", flush=True)
