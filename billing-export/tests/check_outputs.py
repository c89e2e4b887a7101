"""Independent loader check of a billing run directory (used by tests/export.rs).

1. pandas reads statement_lines.csv with the documented dtypes, and DuckDB reads the same
   CSV and the Parquet file; line amounts and totals agree with the invoices.
2. Every ESPI feed has the Atom/ESPI element names and nesting of the ESPI schema.
"""
import decimal
import glob
import json
import os
import sys
import xml.etree.ElementTree as ET

import duckdb
import pandas as pd

run = sys.argv[1]
D = decimal.Decimal

# The documented schema: text columns as str, decimals as exact text -> Decimal.
dtypes = {c: "string" for c in [
    "run", "line_type", "customer_id", "site_id", "device_id", "channel", "component", "band",
    "period", "unit", "currency", "usage_unit", "peak_at_local",
    "quantity", "rate", "amount", "tax_rate", "usage_quantity", "quality", "edited_share"]}
dtypes.update({"revision": "int64", "previous_revision": "Int64"})
df = pd.read_csv(os.path.join(run, "statement_lines.csv"), dtype=dtypes, keep_default_na=False,
                 na_values={"previous_revision": [""]}, parse_dates=["period_start", "period_end"])
assert list(df.columns)[:3] == ["run", "line_type", "customer_id"], df.columns
assert str(df["period_start"].dt.tz) == "UTC", df["period_start"].dtype
for col in ["quantity", "rate", "usage_quantity"]:
    assert all("e" not in v.lower() and len(v.split(".")[1]) == 9 for v in df[col]), col
# Shares of the usage from estimated / edited intervals: 4 places, 0..1.
for col in ["quality", "edited_share"]:
    assert all(len(v.split(".")[1]) == 4 and 0 <= D(v) <= 1 for v in df[col]), col
amounts = [D(v) for v in df["amount"]]

for inv_path in sorted(glob.glob(os.path.join(run, "invoices", "*.json"))):
    inv = json.load(open(inv_path))
    mine = [D(a) for a, c in zip(df["amount"], df["customer_id"]) if c == inv["customer_id"]]
    assert sum(mine) == D(inv["total"]), (inv_path, sum(mine), inv["total"])

con = duckdb.connect()
csv_total = con.execute(
    f"select sum(cast(amount as decimal(38,9))) from read_csv('{run}/statement_lines.csv', header=true, all_varchar=true)"
).fetchone()[0]
pq = con.execute(f"select sum(amount), count(*), typeof(any_value(amount)) from read_parquet('{run}/statement_lines.parquet')").fetchone()
assert D(csv_total) == sum(amounts) == D(pq[0]), (csv_total, sum(amounts), pq)
assert pq[1] == len(df), pq
assert pq[2] == "DECIMAL(38,9)", pq

A = "{http://www.w3.org/2005/Atom}"
E = "{http://naesb.org/espi}"
for feed_path in sorted(glob.glob(os.path.join(run, "espi", "*.xml"))):
    root = ET.parse(feed_path).getroot()
    assert root.tag == A + "feed", root.tag
    for child in ("id", "title", "updated"):
        assert root.find(A + child) is not None, child
    kinds = {}
    for entry in root.findall(A + "entry"):
        for child in ("id", "title", "updated", "content"):
            assert entry.find(A + child) is not None, child
        assert entry.find(A + "link[@rel='self']") is not None
        content = entry.find(A + "content")
        (resource,) = list(content)
        kinds.setdefault(resource.tag, []).append(resource)
    assert set(kinds) == {E + "UsagePoint", E + "MeterReading", E + "ReadingType", E + "IntervalBlock",
                          E + "LocalTimeParameters", E + "ElectricPowerUsageSummary"}, kinds.keys()
    for up in kinds[E + "UsagePoint"]:
        assert up.find(f"{E}ServiceCategory/{E}kind") is not None
    rt_order = ["accumulationBehaviour", "commodity", "dataQualifier", "flowDirection", "intervalLength",
                "kind", "phase", "powerOfTenMultiplier", "timeAttribute", "uom"]
    for rt in kinds[E + "ReadingType"]:
        assert [c.tag for c in rt] == [E + n for n in rt_order], [c.tag for c in rt]
    n = 0
    for ib in kinds[E + "IntervalBlock"]:
        children = list(ib)
        assert children[0].tag == E + "interval"
        assert [c.tag for c in children[0]] == [E + "duration", E + "start"]
        for ir in children[1:]:
            assert ir.tag == E + "IntervalReading", ir.tag
            tags = [c.tag for c in ir]
            # ESPI sequence: cost?, ReadingQuality*, timePeriod?, value?
            assert tags[-2:] == [E + "timePeriod", E + "value"], tags
            tp = ir.find(E + "timePeriod")
            assert [c.tag for c in tp] == [E + "duration", E + "start"]
            int(ir.find(E + "value").text)
            n += 1
    print(f"espi {os.path.basename(feed_path)} readings {n}")

print(f"lines {len(df)} total {sum(amounts)}")
