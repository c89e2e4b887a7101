"""Every column of every row of statement_lines.csv equals statement_lines.parquet.

The CSV is parsed as RFC 4180 by Python's csv module and the Parquet file read by pyarrow.
Text columns compare as text after undoing the CSV's formula neutralisation (a text cell that
starts with ' had one ' added); decimals compare as exact decimals; timestamps as instants;
integers as integers; an empty CSV cell is a null in Parquet where the column is nullable.

Usage: csv_equals_parquet.py RUN_DIR -> prints "rows N columns M" on success.
"""
import csv
import datetime
import decimal
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq

run = sys.argv[1]
D = decimal.Decimal

with open(os.path.join(run, "statement_lines.csv"), newline="", encoding="utf-8") as f:
    reader = csv.reader(f)
    header = next(reader)
    rows = list(reader)
table = pq.read_table(os.path.join(run, "statement_lines.parquet"))
assert header == table.column_names, (header, table.column_names)
assert len(rows) == table.num_rows, (len(rows), table.num_rows)

problems = []
for c, name in enumerate(header):
    field = table.schema.field(name)
    values = table.column(name).to_pylist()
    for r, (row, pv) in enumerate(zip(rows, values)):
        cell = row[c]
        t = field.type
        if pa.types.is_string(t):
            ok = (cell[1:] if cell.startswith("'") else cell) == pv
        elif pa.types.is_decimal(t):
            ok = pv is not None and D(cell) == pv
        elif pa.types.is_timestamp(t):
            if pv is None:
                ok = cell == ""
            else:
                assert str(t.tz) == "UTC", t
                text = pv.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                ok = cell == text and pv.microsecond == 0
        elif pa.types.is_integer(t):
            ok = (cell == "" and pv is None) if pv is None else int(cell) == pv
        else:
            ok = False
            problems.append(f"column {name}: unexpected type {t}")
        if not ok:
            problems.append(f"row {r + 2} column {name}: csv {cell!r} parquet {pv!r}")

if problems:
    print("\n".join(problems[:50]))
    sys.exit(1)
print(f"rows {len(rows)} columns {len(header)}")
