# Irregular raw readings (jittered ~7 min, register rollover at 999999 on one meter, a
# duplicate delivery) for 3 meters over 2026-10-24..2026-10-28 UTC, Europe/Berlin customers.
import os, random
from decimal import Decimal
import pyarrow as pa
from deltalake import write_deltalake
random.seed(7)
ts_t = pa.timestamp("us", tz="UTC"); dec_t = pa.decimal128(38, 9)
start = 1792800000 * 1_000_000  # 2026-10-24T00:00:00Z
end = start + 5 * 86400 * 1_000_000
rows = []
for dev, v0 in [("m1", Decimal("1000")), ("m2", Decimal("999000")), ("m3", Decimal("5"))]:
    t, v, seq = start - 3600_000_000, v0, 1
    while t < end + 3600_000_000:
        rows.append((dev, seq, t, v, t + 3_000_000))
        if dev == "m2" and seq == 5:
            rows.append((dev, seq, t, v + 7, t + 9_000_000))  # duplicate, later received
        t += random.randint(300, 540) * 1_000_000
        v += Decimal(random.randint(0, 90000)) / 1000
        if dev == "m2" and v > 999999:
            v -= 1000000
        seq += 1
by_day = {}
for r in rows:
    by_day.setdefault(r[2] // 86_400_000_000, []).append(r)
for day, rs in by_day.items():
    import datetime
    d = datetime.date(1970, 1, 1) + datetime.timedelta(days=int(day))
    write_deltalake("data/raw", pa.table({
        "device_id": [r[0] for r in rs], "seq": pa.array([r[1] for r in rs], pa.int64()),
        "ts": pa.array([r[2] for r in rs], pa.int64()).cast(ts_t),
        "channel": ["energy_import"] * len(rs), "kind": ["counter"] * len(rs), "unit": ["Wh"] * len(rs),
        "value": pa.array([r[3] for r in rs], dec_t), "quality": [""] * len(rs),
        "received_at": pa.array([r[4] for r in rs], pa.int64()).cast(ts_t),
        "date": pa.array([d] * len(rs), pa.date32())}), partition_by=["date"], mode="append")
