"""The month-per-customer query timed through `gridmeter serve` (psycopg over TLS) and in
DuckDB 1.4.4 (delta_scan on the same usage_15m), in the same run; checks both give the same
sums and prints the medians and their ratio.

usage: <duckdb-delta venv python> bench/serve/query.py <data_root> <port> <ca.crt> <password file>
(the venv needs psycopg too: bench/serve/run.sh installs it there)
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import duckdb_delta  # noqa: E402

import duckdb  # noqa: E402
import psycopg  # noqa: E402

root, port, ca, pwfile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
RUNS = 5
month = ("window_start >= TIMESTAMP '2026-01-01 00:00:00+00' "
         "AND window_start < TIMESTAMP '2026-02-01 00:00:00+00'")
sql = ("SELECT device_id, sum(usage) AS wh FROM {t} WHERE channel = 'energy_import' AND "
       + month + " GROUP BY device_id ORDER BY device_id")

con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
con.execute(f"LOAD '{duckdb_delta._extension('delta')}'")
con.execute("SET TimeZone = 'UTC'")
pw = open(pwfile).read().splitlines()[0]
pg = psycopg.connect(host="127.0.0.1", port=port, dbname="gridmeter", user="bench", password=pw,
                     sslmode="verify-full", sslrootcert=ca, autocommit=True)


def timed(run):
    times, rows = [], None
    for _ in range(RUNS):
        t = time.perf_counter()
        rows = run()
        times.append(time.perf_counter() - t)
    return statistics.median(times), rows


duck_s, duck_rows = timed(lambda: con.execute(sql.format(t=f"delta_scan('{root}/usage_15m')")).fetchall())
serve_s, serve_rows = timed(lambda: pg.execute(sql.format(t="usage_15m")).fetchall())
assert len(duck_rows) == len(serve_rows), (len(duck_rows), len(serve_rows))
assert all(a[0] == b[0] and a[1] == b[1] for a, b in zip(duck_rows, serve_rows)), "sums differ"
(n,), = con.execute(f"SELECT count(*) FROM delta_scan('{root}/usage_15m') WHERE {month}").fetchall()
print(f"month per customer, {len(serve_rows)} customers, {n} usage_15m rows scanned, median of {RUNS}:")
print(f"  gridmeter serve (psycopg, TLS): {serve_s:.3f} s")
print(f"  DuckDB 1.4.4 delta_scan:        {duck_s:.3f} s")
print(f"  ratio serve / DuckDB:           {serve_s / duck_s:.2f}x (target: within 2x)")
