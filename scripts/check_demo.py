"""Checks the outputs of `gridmeter demo` with independent readers: the Python deltalake
package (tables read through their Delta logs, into DuckDB), DuckDB's delta extension
(`delta_scan`, running the one-liner the demo prints) and pandas.

usage: python3 scripts/check_demo.py <demo out dir> <demo log>
Fails (exit 1) naming what is wrong.
"""
import glob
import os
import re
import sys

import duckdb
import pandas as pd
from deltalake import DeltaTable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import duckdb_delta  # noqa: E402

out, log_path = sys.argv[1], sys.argv[2]
data = os.path.join(out, "data")
log = open(log_path, encoding="utf-8").read()
problems = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what)
    if not cond:
        problems.append(what)


check("embedded broker is for local demos only" in log and "no ACL" in log,
      "the demo says its embedded broker is for local demos only (no ACL)")

landed = int(re.search(r"readings landed: (\d+)", log).group(1))
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
for name in ("raw", "usage_15m", "usage_1d", "usage_history_15m"):
    con.register(name, DeltaTable(os.path.join(data, name)).to_pyarrow_table())
total, distinct = con.execute("select count(*), count(distinct (device_id, seq)) from raw").fetchone()
check(total == landed, f"raw table holds the {landed} readings the demo reported (found {total})")
check(total == distinct, f"every (device_id, seq) exactly once in raw ({total} rows, {distinct} distinct)")

n15, keys15 = con.execute(
    "select count(*), count(distinct (device_id, channel, window_start)) from usage_15m").fetchone()
check(n15 > 0 and n15 == keys15, f"usage_15m holds one row per key ({n15} rows, {keys15} keys)")
hist, = con.execute("select count(*) from usage_history_15m").fetchone()
check(hist >= n15, f"usage_history_15m holds every revision ({hist} rows)")
# Sum check: per counter channel, the 15-minute usage sum equals the daily sum.
rows = con.execute(
    """select d.device_id, d.channel, d.window_start, d.usage, q.s
        from usage_1d d
        join (select device_id, channel, time_bucket(interval 1 day, window_start) as day, sum(usage) s
              from usage_15m where kind = 'counter' group by all) q
          on q.device_id = d.device_id and q.channel = d.channel and q.day = d.window_start
        where d.kind = 'counter'"""
).fetchall()
bad = [r for r in rows if r[3] != r[4]]
check(len(rows) > 0 and not bad, f"sum check: each daily counter usage equals the sum of its 15-minute usages exactly ({len(rows)} device-days, mismatches: {bad[:5]})")

# The DuckDB one-liner the demo prints, run with the delta extension (loaded from its PyPI
# package instead of INSTALL, which needs the network).
m = re.search(r'duckdb -c "INSTALL delta; LOAD delta; (.*)"', log)
check(m is not None, "the demo prints a DuckDB one-liner")
if m:
    got = duckdb_delta.query(m.group(1))
    want = con.execute(
        "select device_id, channel, any_value(unit), sum(usage) from usage_1d group by all order by all").fetchall()
    norm = lambda rows: [tuple(None if v is None else str(v) for v in r) for r in rows]
    check(len(got) > 0 and norm(got) == norm(want),
          f"the one-liner (delta_scan) gives the usage the deltalake reader gives ({len(got)} rows)")

runs = sorted(glob.glob(f"{data}/exports/*/run-*"))
check(len(runs) == 1, f"one billing export run ({runs})")
run = runs[-1]
lines = pd.read_csv(os.path.join(run, "statement_lines.csv"), dtype={"amount": str, "quantity": str})
check(len(lines) > 0, f"statement lines parse with pandas ({len(lines)} lines)")
recon = pd.read_csv(os.path.join(run, "reconciliation.csv"), dtype=str)
check(len(recon) > 0 and (recon["status"] == "ok").all(), f"reconciliation: {len(recon)} rows, all ok")
customers = lines["customer_id"].nunique()
invoices = glob.glob(os.path.join(run, "invoices", "*.json"))
check(len(invoices) == customers, f"one JSON invoice per customer ({len(invoices)} for {customers})")
feeds = sorted(glob.glob(os.path.join(run, "espi", "*.xml")))
check(len(feeds) > 0, "Green Button ESPI feeds written")
# Every feed against the official ESPI 3.3 schemas (wrapper and content) and conventions.
import subprocess
espi = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "..", "billing-export", "tests", "espi_schema.py"), *feeds],
                      capture_output=True, text=True)
check(espi.returncode == 0 and bool(feeds),
      f"{len(feeds)} Green Button feeds valid against the ESPI 3.3 schemas, with LocalTimeParameters and the usage summary"
      + ("" if espi.returncode == 0 else f"\n{espi.stdout[-2000:]}{espi.stderr[-2000:]}"))

if problems:
    print(f"{len(problems)} demo check(s) failed")
    sys.exit(1)
print("demo outputs exist and reconcile")
