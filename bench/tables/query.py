"""The reader query "usage of one customer's devices for one month", timed in DuckDB 1.4.4
(run with the python of scripts/install-deps.sh's virtualenv):
- new: delta_scan over `usage_15m` (the current table: a WHERE and a GROUP BY);
- old: the pre-Delta layout (`usage/15m/part-*.parquet`, every revision, one part per daily
  run) through its "latest revision" view (a window function).
Both give the same sums (checked). Prints median seconds of 7 runs each.

usage: <venv>/bin/python bench/tables/query.py <data_root>
"""
import glob
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import duckdb_delta  # noqa: E402

import duckdb  # noqa: E402

root = sys.argv[1]
customer = [f"meter-{d:04d}" for d in range(100, 110)]
ids = ", ".join(f"'{d}'" for d in customer)
month = "window_start >= TIMESTAMPTZ '2026-01-01 00:00:00+00' AND window_start < TIMESTAMPTZ '2026-02-01 00:00:00+00'"

con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
con.execute(f"LOAD '{duckdb_delta._extension('delta')}'")
con.execute("SET TimeZone = 'UTC'")
# The old layout: the history rows, one part file per day (as daily runs committed them).
old = os.path.join(root, "old", "usage", "15m")
if not glob.glob(f"{old}/part-*.parquet"):
    os.makedirs(old, exist_ok=True)
    con.execute(f"CREATE TABLE h AS SELECT * EXCLUDE (date) FROM delta_scan('{root}/usage_history_15m')")
    for i, (d,) in enumerate(con.execute("SELECT DISTINCT window_start::DATE FROM h ORDER BY 1").fetchall()):
        con.execute(f"COPY (SELECT * FROM h WHERE window_start::DATE = DATE '{d}' ORDER BY device_id, channel, window_start) "
                    f"TO '{old}/part-{i + 1:010d}.parquet' (FORMAT parquet, COMPRESSION zstd)")
queries = {
    "delta_scan usage_15m": f"SELECT device_id, sum(usage) FROM delta_scan('{root}/usage_15m') "
                            f"WHERE device_id IN ({ids}) AND {month} GROUP BY 1 ORDER BY 1",
    "old layout view": f"SELECT device_id, sum(usage) FROM (SELECT * FROM read_parquet('{old}/*.parquet') "
                       "QUALIFY row_number() OVER (PARTITION BY device_id, channel, window_start ORDER BY revision DESC) = 1) "
                       f"WHERE device_id IN ({ids}) AND {month} GROUP BY 1 ORDER BY 1",
}
results = {}
for name, sql in queries.items():
    times = []
    for _ in range(7):
        t = time.perf_counter()
        rows = con.execute(sql).fetchall()
        times.append(time.perf_counter() - t)
    results[name] = rows
    print(f"{name}: {statistics.median(times):.4f} s median of 7 ({len(rows)} devices)")
a, b = results.values()
assert a == b and len(a) == len(customer), "the two layouts disagree"
print("same sums from both layouts")
