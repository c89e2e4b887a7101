"""A month of 15-minute counter readings of N devices, written as the `raw` Delta table
(python deltalake, partitioned by date, the schema of core/src/schema.rs).

usage: python3 bench/tables/month.py <data_root> [devices] [days]
"""
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pyarrow as pa
from deltalake import write_deltalake

root, devices, days = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1000, int(sys.argv[3]) if len(sys.argv) > 3 else 31
t0 = int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp() * 1_000_000)
step = 900_000_000
ts_t = pa.timestamp("us", tz="UTC")
schema = pa.schema([
    pa.field("device_id", pa.string(), False), pa.field("seq", pa.int64(), False),
    pa.field("ts", ts_t, False), pa.field("channel", pa.string(), False),
    pa.field("kind", pa.string(), False), pa.field("unit", pa.string(), False),
    pa.field("value", pa.decimal128(38, 9), False), pa.field("quality", pa.string(), False),
    pa.field("received_at", ts_t, False), pa.field("date", pa.date32(), False),
])
rng = np.random.default_rng(7)
for day in range(days):
    n = 96
    ids, seqs, tss, vals = [], [], [], []
    for d in range(devices):
        base = d * 1_000_000 + day * 96 * 250
        inc = np.cumsum(rng.integers(1, 500, n))
        k = np.arange(n)
        ids += [f"meter-{d:04d}"] * n
        seqs += list(day * n + k + 1)
        tss += list(t0 + (day * n + k) * step + (d % 60) * 1_000_000)
        vals += list(base * 1000 + inc)
    date = (datetime(2026, 1, 1) + timedelta(days=day)).date()
    m = len(ids)
    table = pa.table({
        "device_id": pa.array(ids), "seq": pa.array(np.asarray(seqs, dtype=np.int64)),
        "ts": pa.array(np.asarray(tss, dtype=np.int64)).cast(ts_t), "channel": pa.array(["energy_import"] * m),
        "kind": pa.array(["counter"] * m), "unit": pa.array(["Wh"] * m),
        "value": pa.array([Decimal(int(v)).scaleb(-3) for v in vals], pa.decimal128(38, 9)),
        "quality": pa.array([""] * m), "received_at": pa.array(np.asarray(tss, dtype=np.int64) + 2_000_000).cast(ts_t),
        "date": pa.array([date] * m, pa.date32()),
    }, schema=schema)
    write_deltalake(f"{root}/raw", table, partition_by=["date"], mode="append")
print(f"raw: {devices} devices x {days} days x 96 readings = {devices * days * 96}")
