"""A month of 15-minute usage rows of N devices (one device per customer), written as the
`usage_15m` Delta table (python deltalake, partitioned by date, the schema of
core/src/schema.rs `usage()`): the table the billing export and `gridmeter serve` read.

usage: python3 bench/serve/gen.py <data_root> [devices] [days]
"""
import sys
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
from deltalake import write_deltalake

root = sys.argv[1]
devices = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
days = int(sys.argv[3]) if len(sys.argv) > 3 else 31
ts_t = pa.timestamp("us", tz="UTC")
dec = pa.decimal128(38, 9)
schema = pa.schema([
    pa.field("device_id", pa.string(), False), pa.field("channel", pa.string(), False),
    pa.field("kind", pa.string(), False), pa.field("unit", pa.string(), False),
    pa.field("window", pa.string(), False), pa.field("window_start", ts_t, False),
    pa.field("window_end", ts_t, False), pa.field("usage", dec, True),
    pa.field("min", dec, True), pa.field("max", dec, True), pa.field("avg", dec, True),
    pa.field("last", dec, True), pa.field("readings", pa.int64(), False),
    pa.field("first_ts", ts_t, True), pa.field("last_ts", ts_t, True),
    pa.field("coverage", dec, False), pa.field("flags", pa.string(), False),
    pa.field("revision", pa.int64(), False), pa.field("computed_at", ts_t, False),
    pa.field("date", pa.date32(), False),
])
t0 = int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp() * 1_000_000)
step = 900_000_000
rng = np.random.default_rng(11)
ids = np.array([f"meter-{d:05d}" for d in range(devices)], dtype=object)
for day in range(days):
    n = 96 * devices
    dev = np.repeat(ids, 96)
    starts = t0 + day * 96 * step + np.tile(np.arange(96, dtype=np.int64) * step, devices)
    usage = pa.array(rng.integers(0, 400, n)).cast(dec)  # whole Wh, exact
    flags = np.where(rng.random(n) < 0.02, "estimated,gap", "")
    cols = {
        "device_id": pa.array(dev, pa.string()),
        "channel": pa.array(np.full(n, "energy_import", dtype=object), pa.string()),
        "kind": pa.array(np.full(n, "counter", dtype=object), pa.string()),
        "unit": pa.array(np.full(n, "Wh", dtype=object), pa.string()),
        "window": pa.array(np.full(n, "15m", dtype=object), pa.string()),
        "window_start": pa.array(starts, ts_t),
        "window_end": pa.array(starts + step, ts_t),
        "usage": usage,
        "min": pa.nulls(n, dec), "max": pa.nulls(n, dec), "avg": pa.nulls(n, dec),
        "last": usage,
        "readings": pa.array(np.ones(n, dtype=np.int64)),
        "first_ts": pa.array(starts, ts_t), "last_ts": pa.array(starts + step - 1, ts_t),
        "coverage": pa.array([1] * n, pa.int64()).cast(dec),
        "flags": pa.array(flags, pa.string()),
        "revision": pa.array(np.ones(n, dtype=np.int64)),
        "computed_at": pa.array(np.full(n, t0 + 40 * 86400 * 1_000_000), ts_t),
        "date": pa.array(np.full(n, (t0 // 86_400_000_000) + day, dtype=np.int32), pa.date32()),
    }
    table = pa.Table.from_pydict(cols, schema=schema)
    write_deltalake(f"{root}/usage_15m", table, mode="append", partition_by=["date"])
    print(f"day {day + 1}/{days}: {n} rows", flush=True)
