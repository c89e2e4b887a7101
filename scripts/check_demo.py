"""Checks the outputs of `gridmeter demo` with independent readers: the Python deltalake
package (tables read through their Delta logs, into DuckDB), DuckDB's delta extension
(`delta_scan`, running the one-liner the demo prints) and pandas. With the simulated faults:
the open-end estimate of the meter that stopped, the spike exception and what billing did
with their customers (held with the reason, or billed with the estimated share), each
against the tables.

usage: python3 scripts/check_demo.py <demo out dir> <demo log>
Fails (exit 1) naming what is wrong.
"""
import decimal
import glob
import json
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
lines = pd.read_csv(os.path.join(run, "statement_lines.csv"),
                    dtype={"amount": str, "quantity": str, "quality": str, "edited_share": str})
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

# --- Validation, estimation, editing: the stopped meter, the spike and what billing did. ---
# The summary the demo prints, checked against the tables read independently (deltalake into
# DuckDB, pandas for the run's CSV and JSON files).
D = decimal.Decimal
con.register("exceptions", DeltaTable(os.path.join(data, "exceptions")).to_pyarrow_table())
est_re = re.compile(r"^  estimate  (\S+) (\S+): (\d+) windows (\S+) \.\. (\S+), method (\S+), (\S+) kWh estimated$", re.M)
exc_re = re.compile(r"^  exception (\S+) (\S+): rule (\S+) \((\S+)\), window (\S+) \.\. (\S+), observed (\S+) > threshold (\S+), action (\S+)$", re.M)
out_re = re.compile(r"^  outcome   (\S+) \((\S+)\): (held|billed)[,:] (.*)$", re.M)
estimates, exceptions, outcomes = est_re.findall(log), exc_re.findall(log), out_re.findall(log)
open_end = [e for e in estimates if e[5] == "open_end"]
check(len(open_end) == 1, f"the summary shows one open-end estimate (the meter that stopped reporting): {open_end}")
for device, channel, n, first, last, method, kwh in open_end:
    rows = con.execute(
        """select count(*), min(window_start), max(window_end), sum(usage)
             from usage_15m where device_id = ? and channel = ? and flags like '%method_open_end%'
              and flags like '%estimated%'""", [device, channel]).fetchone()
    to_iso = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")
    check(rows[0] == int(n) and to_iso(rows[1]) == first and to_iso(rows[2]) == last
          and D(rows[3]) / 1000 == D(kwh),
          f"usage_15m holds the {n} open-end windows of {device} {first} .. {last}, {kwh} kWh (found {rows})")
    last_raw, = con.execute("select max(ts) from raw where device_id = ? and channel = ?", [device, channel]).fetchone()
    check(to_iso(last_raw) <= first < last,
          f"{device} stopped reporting at {to_iso(last_raw)}: its open end starts there and runs to the period end {last}")
spikes = [e for e in exceptions if e[2] == "spike"]
check(len(spikes) == 1 and spikes[0][3] == "critical" and spikes[0][8] == "estimate",
      f"the summary shows one critical spike exception, replaced by an estimate: {exceptions}")
for device, channel, rule, severity, ws, we, observed, threshold, action in spikes:
    rows = con.execute(
        """select observed, threshold, revision, action from exceptions
             where device_id = ? and channel = ? and rule = ? and strftime(window_start, '%Y-%m-%dT%H:%M:%SZ') = ?""",
        [device, channel, rule, ws]).fetchall()
    check(len(rows) == 1 and D(rows[0][0]) == D(observed) and D(rows[0][1]) == D(threshold)
          and D(observed) > D(threshold) and rows[0][3] == action,
          f"the exceptions table has the spike of {device} at {ws}: observed {observed} > threshold {threshold} ({rows})")
    cur = con.execute(
        """select flags, revision from usage_15m where device_id = ? and channel = ?
             and strftime(window_start, '%Y-%m-%dT%H:%M:%SZ') = ?""", [device, channel, ws]).fetchall()
    check(len(cur) == 1 and "rule_spike" in cur[0][0] and "estimated" in cur[0][0]
          and "edited" not in cur[0][0] and rows and cur[0][1] == rows[0][2],
          f"its window is estimated and flagged rule_spike, and still has the exception's revision (open): {cur}")
    check(any(e[0] == device and e[5] == "linear" for e in estimates),
          f"the spike's readings are replaced by a linear estimate ({[e for e in estimates if e[0] == device]})")

held = pd.read_csv(os.path.join(run, "exceptions.csv"), dtype=str, keep_default_na=False)
invoice_ids = {os.path.basename(p)[:-5] for p in invoices}
by_device = {o[1]: o for o in outcomes}
for device, channel, *_ in open_end + spikes:
    o = by_device.get(device)
    check(o is not None, f"the summary shows what billing did with {device}")
    if o is None:
        continue
    customer, kind = o[0], o[2]
    reasons = list(held[held["customer_id"] == customer]["reason"])
    check((kind == "held") == bool(reasons) and (kind == "held") != (customer in invoice_ids),
          f"{customer} is {kind}: exceptions.csv has {len(reasons)} reason(s), invoice {'written' if customer in invoice_ids else 'not written'}")
# The open exception holds its customer (demo config: exception_severity = "critical").
for device, *_ in spikes:
    o = by_device.get(device)
    if o:
        reasons = list(held[held["customer_id"] == o[0]]["reason"])
        check(any(r.startswith("hold rule exception_severity: open \"critical\" exception \"spike\"") for r in reasons),
              f"{o[0]} is held for the open critical spike exception ({reasons})")
# The stopped meter: its estimated share of the billed energy (computed here from usage_15m over
# the customer's Berlin period) decides, against max_estimated_share = 0.20.
for device, channel, *_ in open_end:
    o = by_device.get(device)
    if not o:
        continue
    customer = o[0]
    period = re.search(r"billing export (\d{4}-\d{2}-\d{2})_(\d{4}-\d{2}-\d{2})|billing export (\d{4}-\d{2}):", log)
    # Berlin local midnights of the period (the demo's households are in Europe/Berlin).
    if period.group(1):
        lo, hi = period.group(1), period.group(2)
    else:
        lo = period.group(3) + "-01"
        hi = (pd.Timestamp(lo) + pd.offsets.MonthBegin(1)).strftime("%Y-%m-%d")
    t0 = pd.Timestamp(lo, tz="Europe/Berlin").tz_convert("UTC")
    t1 = pd.Timestamp(hi, tz="Europe/Berlin").tz_convert("UTC")
    est, total = con.execute(
        """select sum(case when flags like '%estimated%' then abs(usage) else 0 end), sum(abs(usage))
             from usage_15m where device_id = ? and channel = ? and window_start >= ? and window_start < ?""",
        [device, channel, t0.to_pydatetime(), t1.to_pydatetime()]).fetchone()
    share = D(est) / D(total)
    want = "held" if share > D("0.20") else "billed"
    check(o[2] == want, f"{customer}: {share * 100:.2f} % of its billed energy estimated against the 20 % limit: {want} (demo says {o[2]})")
    if want == "held":
        reasons = list(held[held["customer_id"] == customer]["reason"])
        check(any(r.startswith("hold rule max_estimated_share: ") for r in reasons), f"{customer} held for its estimated share ({reasons})")
    else:
        inv = json.load(open(os.path.join(run, "invoices", f"{customer}.json")))
        meter = [m for m in inv["meters"] if m["device_id"] == device and m["channel"] == channel]
        check(len(meter) == 1 and D(meter[0]["estimated_share"]) == share.quantize(D("0.0001"), rounding=decimal.ROUND_HALF_EVEN),
              f"{customer}'s invoice shows the estimated share {share:.6f} to 4 places ({[m['estimated_share'] for m in meter]})")
        cust_lines = lines[(lines["customer_id"] == customer) & (lines["device_id"] == device)]
        check(any(D(q) > 0 for q in cust_lines["quality"]) and all(D(e) == 0 for e in cust_lines["edited_share"]),
              f"{customer}'s energy lines carry their estimated share (quality {list(cust_lines['quality'])}) and no edited share")
        feed = open(os.path.join(run, "espi", f"{customer}.xml"), encoding="utf-8").read()
        n_open, = con.execute(
            """select count(*) from usage_15m where device_id = ? and channel = ? and flags like '%method_open_end%'
                 and window_start >= ? and window_start < ?""", [device, channel, t0.to_pydatetime(), t1.to_pydatetime()]).fetchone()
        check(feed.count("<espi:quality>12</espi:quality>") == n_open,
              f"{customer}'s Green Button feed marks its {n_open} open-end intervals projected (QualityOfReading 12)")

if problems:
    print(f"{len(problems)} demo check(s) failed")
    sys.exit(1)
print("demo outputs exist and reconcile")
