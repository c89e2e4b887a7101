"""Runs SQL in DuckDB 1.4.4 with its delta extension (and httpfs), offline.

usage (with the python of the virtualenv scripts/install-deps.sh makes):
    $GRIDMETER_DUCKDB_DELTA_VENV/bin/python scripts/duckdb_delta.py 'SELECT ... FROM delta_scan(...)' [setup SQL]
Prints the rows as JSON lines (values as text). The extensions come from the PyPI packages
duckdb-ext-delta and duckdb-ext-httpfs, loaded from their files (no download). A second
argument is run first (e.g. a CREATE SECRET for S3).

From other Python code: `python_of_venv()` and `query(sql, setup=None)` below.
"""
import glob
import json
import os
import subprocess
import sys


def venv():
    return os.environ.get("GRIDMETER_DUCKDB_DELTA_VENV",
                          os.path.expanduser("~/.cache/gridmeter/duckdb-delta-1.4.4"))


def python_of_venv():
    return os.path.join(venv(), "bin", "python")


def query(sql, setup=None):
    """Runs `sql` in the virtualenv's DuckDB with the delta extension; returns rows of text."""
    args = [python_of_venv(), os.path.abspath(__file__), sql] + ([setup] if setup else [])
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"duckdb delta_scan failed: {r.stderr[-3000:]}")
    return [tuple(json.loads(line)) for line in r.stdout.splitlines() if line.strip()]


def _extension(name):
    import duckdb_ext  # a namespace package: the extension packages share it
    found = [f for base in duckdb_ext.__path__
             for f in glob.glob(os.path.join(base, "extensions", "*", "*", f"{name}.duckdb_extension"))]
    if not found:
        raise SystemExit(f"no {name}.duckdb_extension under {list(duckdb_ext.__path__)}")
    return found[0]


def main():
    import duckdb
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    for ext in ("delta", "httpfs"):
        con.execute(f"LOAD '{_extension(ext)}'")
    con.execute("SET TimeZone = 'UTC'")
    if len(sys.argv) > 2:
        con.execute(sys.argv[2])
    for row in con.execute(sys.argv[1]).fetchall():
        print(json.dumps([None if v is None else str(v) for v in row]))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
