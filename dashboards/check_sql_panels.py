"""Runs the SQL of every panel of the dashboards on `gridmeter serve` (PostgreSQL data source)
against a running server and checks that each returns rows.

usage: python3 dashboards/check_sql_panels.py --port P --ca ca.crt --password-file F [--user U]

Grafana's macros are expanded as its PostgreSQL data source does, for a time range covering
everything: `$__timeFilter(col)` -> `col BETWEEN '<from>' AND '<to>'`, `$__timeFrom()` and
`$__timeTo()` -> the bounds, `$__interval` -> `1 day`. Exits 1 naming every panel that fails.
"""
import argparse
import glob
import json
import os
import re
import sys

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
FROM, TO = "2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z"
SQL_TYPES = {"grafana-postgresql-datasource", "postgres"}


def expand(sql):
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", lambda m: f"{m.group(1)} BETWEEN '{FROM}' AND '{TO}'", sql)
    sql = sql.replace("$__timeFrom()", f"'{FROM}'").replace("$__timeTo()", f"'{TO}'")
    return sql.replace("$__interval", "1 day")


def sql_panels(board):
    for p in board.get("panels", []):
        yield from sql_panels(p)
        ds = p.get("datasource") or {}
        for t in p.get("targets", []):
            tds = t.get("datasource") or ds
            if tds.get("type") in SQL_TYPES and t.get("rawSql"):
                yield p.get("title", "?"), t["rawSql"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--password-file", required=True)
    ap.add_argument("--user", default="gridmeter")
    a = ap.parse_args()
    password = open(a.password_file, encoding="utf-8").read().splitlines()[0]
    conn = psycopg.connect(host="127.0.0.1", port=a.port, dbname="gridmeter", user=a.user,
                           password=password, sslmode="verify-full", sslrootcert=a.ca,
                           autocommit=True)
    failed, checked = [], 0
    for path in sorted(glob.glob(os.path.join(HERE, "*.json"))):
        board = json.load(open(path, encoding="utf-8"))
        for title, sql in sql_panels(board):
            checked += 1
            where = f"{os.path.basename(path)}: {title}"
            try:
                rows = conn.execute(expand(sql)).fetchall()
            except psycopg.Error as e:
                failed.append(f"{where}: {str(e).strip()[:300]}")
                print(f"FAIL  {where}: {str(e).strip()[:300]}")
                continue
            ok = len(rows) > 0
            print(("ok    " if ok else "FAIL  ") + f"{where}: {len(rows)} rows")
            if not ok:
                failed.append(f"{where}: no rows")
    if checked == 0:
        failed.append("no SQL panels found")
    if failed:
        print(f"{len(failed)} of {checked} panel queries failed", file=sys.stderr)
        sys.exit(1)
    print(f"all {checked} panel queries returned rows")


if __name__ == "__main__":
    main()
