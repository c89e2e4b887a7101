"""Checks a running `gridmeter serve` with real PostgreSQL clients against DuckDB.

usage: python3 serve/tests/check_serve.py --port P --ca ca.crt --password-file F --data DIR
           --registry registry.toml [--cert-user U --cert C --key K] [--timeout-secs N]
           [--row-limit N]

- psql (libpq) and psycopg connect over TLS (sslmode=verify-full against the CA) and run the
  example queries of serve/examples/; the rows equal DuckDB's (delta extension over the same
  Delta tables, read_parquet over the same statement files, the registry read with tomllib);
- a write statement is refused (SQLSTATE 25006), and so is a plaintext connection;
- a query running past the server's query_timeout is cancelled with SQLSTATE 57014;
- a wrong password and an unknown user are refused (28P01);
- a client certificate logs in as its CN (when --cert-user is given);
- a result longer than row_limit is cut there with a warning.
Prints ok/FAIL per check; exits 1 if any failed.
"""
import argparse
import datetime as dt
import decimal
import glob
import os
import subprocess
import sys
import tomllib

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import duckdb_delta  # noqa: E402

problems = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    if not cond:
        problems.append(what)


def examples():
    out = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "serve", "examples", "*.sql"))):
        out[os.path.basename(path)[:-4]] = open(path, encoding="utf-8").read()
    return out


def canon(v):
    """One comparable form for a value from psycopg, DuckDB or psql text."""
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float, decimal.Decimal)):
        return float(v) if isinstance(v, float) else decimal.Decimal(v)
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=dt.timezone.utc)
        return v.astimezone(dt.timezone.utc)
    if isinstance(v, dt.date):
        return v
    text = str(v)
    try:
        return decimal.Decimal(text)
    except decimal.InvalidOperation:
        pass
    try:
        t = dt.datetime.fromisoformat(text.replace(" ", "T"))
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.timezone.utc)
        return t.astimezone(dt.timezone.utc)
    except ValueError:
        return text


def same_value(a, b):
    a, b = canon(a), canon(b)
    if a is None or b is None:
        return a is b
    num = (float, decimal.Decimal)
    if isinstance(a, num) and isinstance(b, num):
        fa, fb = float(a), float(b)
        if isinstance(a, float) or isinstance(b, float):
            return abs(fa - fb) <= 1e-9 * max(1.0, abs(fa), abs(fb))
        return a == b
    return a == b


def same_rows(got, want):
    if len(got) != len(want):
        return False, f"{len(got)} rows, DuckDB {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        if len(g) != len(w) or not all(same_value(x, y) for x, y in zip(g, w)):
            return False, f"row {i}: {g!r} vs DuckDB {w!r}"
    return True, f"{len(got)} rows"


def duckdb_rows(sql, data, registry):
    """Runs `sql` in DuckDB over views of the same tables (names as served)."""
    reg = tomllib.load(open(registry, "rb"))
    sites = {s["id"]: s for s in reg.get("sites", [])}
    customers = {c["id"]: c for c in reg.get("customers", [])}
    values = []
    for d in reg.get("devices", []):
        s = sites.get(d["site"], {})
        c = customers.get(s.get("customer", ""), {})
        row = [d["id"], d["site"], s.get("name", ""), s.get("customer", ""), c.get("name", ""),
               c.get("tariff", ""), c.get("currency", ""), c.get("time_zone", "")]
        values.append("(" + ", ".join("'" + x.replace("'", "''") + "'" for x in row) + ")")
    setup = [
        "CREATE TABLE meters (device_id VARCHAR, site_id VARCHAR, site_name VARCHAR, "
        "customer_id VARCHAR, customer_name VARCHAR, tariff VARCHAR, currency VARCHAR, "
        "time_zone VARCHAR)",
    ]
    if values:
        setup.append("INSERT INTO meters VALUES " + ", ".join(values))
    for name in sorted(os.listdir(data)):
        if os.path.isdir(os.path.join(data, name, "_delta_log")):
            setup.append(f"CREATE VIEW {name} AS SELECT * FROM delta_scan('{os.path.join(data, name)}')")
    statements = glob.glob(os.path.join(data, "exports", "*", "run-*", "statement_lines.parquet"))
    if statements:
        setup.append("CREATE VIEW statement_lines AS SELECT * FROM read_parquet("
                     + repr(sorted(statements)) + ")")
    # duckdb_delta.query returns text cells; run the setup in the same connection.
    rows = duckdb_delta.query(sql, "; ".join(setup))
    return [tuple(r) for r in rows]


def conninfo(a, user=None, password=None, sslmode="verify-full", **extra):
    parts = {
        "host": "127.0.0.1", "port": str(a.port), "dbname": "gridmeter",
        "user": user or a.user, "sslmode": sslmode, "sslrootcert": a.ca,
        "connect_timeout": "10",
    }
    if password is not None:
        parts["password"] = password
    parts.update(extra)
    return " ".join(f"{k}={v}" for k, v in parts.items())


def psql(a, sql, password, **extra):
    env = dict(os.environ, PGPASSWORD=password)
    r = subprocess.run(
        ["psql", "-X", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", conninfo(a, **extra), "-c", sql],
        capture_output=True, text=True, env=env, timeout=120)
    rows = [tuple(None if c == "" else c for c in line.split("\t"))
            for line in r.stdout.splitlines() if line.strip()]
    return r.returncode, rows, r.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--user", default="gridmeter")
    ap.add_argument("--password-file", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--registry", required=True)
    ap.add_argument("--cert-user")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--timeout-secs", type=float)
    ap.add_argument("--row-limit", type=int)
    a = ap.parse_args()
    password = open(a.password_file, encoding="utf-8").read().splitlines()[0]

    conn = psycopg.connect(conninfo(a, password=password), autocommit=True)
    check(conn.info.pgconn.ssl_in_use, "psycopg connected over TLS (sslmode=verify-full)")
    for name, sql in examples().items():
        want = duckdb_rows(sql, a.data, a.registry)
        got = [tuple(r) for r in conn.execute(sql).fetchall()]
        ok, why = same_rows(got, want)
        check(ok and len(got) > 0, f"psycopg {name}: equals DuckDB ({why})")
        # psql: the simple query protocol, rows as text.
        rc, rows, err = psql(a, sql, password)
        ok, why = same_rows(rows, want)
        check(rc == 0 and ok, f"psql {name}: equals DuckDB ({why}{'; ' + err.strip()[:200] if rc else ''})")

    n = conn.execute("SELECT count(*) FROM raw WHERE device_id = %s", ("hh-0001",)).fetchone()[0]
    want = duckdb_rows("SELECT count(*) FROM raw WHERE device_id = 'hh-0001'", a.data, a.registry)[0][0]
    check(n > 0 and same_value(n, want), f"psycopg with a bound parameter: {n} readings of hh-0001 (DuckDB {want})")

    for sql in ("INSERT INTO raw (device_id) VALUES ('x')", "DELETE FROM usage_1d",
                "CREATE TABLE t AS SELECT 1", "COPY (SELECT 1) TO '/tmp/gridmeter-serve-copy.csv'",
                "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'"):
        try:
            conn.execute(sql)
            check(False, f"write statement refused: {sql}")
        except psycopg.Error as e:
            check(e.sqlstate == "25006" and "read-only" in str(e),
                  f"write statement refused: {sql.split()[0]} -> {e.sqlstate} {str(e).strip()[:90]}")
    rc, _, err = psql(a, "DROP TABLE raw", password)
    check(rc != 0 and "read-only" in err, f"psql: DROP TABLE refused ({err.strip()[:80]})")
    check(not os.path.exists("/tmp/gridmeter-serve-copy.csv"), "COPY wrote no file")

    if a.timeout_secs:
        started = dt.datetime.now()
        try:
            conn.execute("SELECT count(*) FROM generate_series(1, 100000000000) WHERE value % 7 = 3")
            check(False, "a query past query_timeout is cancelled")
        except psycopg.Error as e:
            took = (dt.datetime.now() - started).total_seconds()
            check(e.sqlstate == "57014" and "statement timeout" in str(e)
                  and took < a.timeout_secs + 10,
                  f"a query past query_timeout is cancelled after {took:.1f} s: {e.sqlstate} {str(e).strip()[:80]}")
        check(conn.execute("SELECT 1").fetchone()[0] == 1, "the connection works after the timeout")

    if a.row_limit:
        notices = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        rows = conn.execute(f"SELECT value FROM generate_series(1, {a.row_limit * 3})").fetchall()
        check(len(rows) == a.row_limit and any("row_limit" in n for n in notices),
              f"a longer result is cut at row_limit ({len(rows)} rows, notice: {notices[:1]})")
    conn.close()

    for user, pw, what in ((a.user, password + "x", "a wrong password"),
                           ("nobody", password, "an unknown user")):
        try:
            psycopg.connect(conninfo(a, user=user, password=pw)).close()
            check(False, f"{what} is refused")
        except psycopg.OperationalError as e:
            check("password authentication failed" in str(e).lower(), f"{what} is refused ({str(e).strip()[:90]})")
    rc, _, err = psql(a, "SELECT 1", password + "x")
    check(rc != 0 and "password authentication failed" in err.lower(), "psql: a wrong password is refused")
    try:
        psycopg.connect(conninfo(a, password=password, sslmode="disable")).close()
        check(False, "a plaintext connection is refused")
    except psycopg.OperationalError as e:
        check("requires TLS" in str(e), f"a plaintext connection is refused ({str(e).strip()[:80]})")

    if a.cert_user:
        with psycopg.connect(conninfo(a, user=a.cert_user, sslcert=a.cert, sslkey=a.key)) as c:
            who = c.execute("SELECT count(*) FROM usage_1d").fetchone()[0]
            check(who > 0, f"client certificate login as {a.cert_user} ({who} daily usage rows)")
        try:
            psycopg.connect(conninfo(a, user=a.cert_user)).close()
            check(False, "certificate user without a certificate is refused")
        except psycopg.OperationalError as e:
            check("certificate authentication failed" in str(e),
                  f"certificate user without a certificate is refused ({str(e).strip()[:80]})")

    if problems:
        print(f"{len(problems)} check(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
