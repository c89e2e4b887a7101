"""Independent checks over what the pipeline wrote: not our Rust code, but the Python
deltalake package (reading each Delta table through its log) and DuckDB's delta extension
(`delta_scan`, duckdb 1.4.4 in its own virtualenv: scripts/duckdb_delta.py).

- `exactly_once`: every (device_id, seq) an agent produced is in `raw` exactly once, except
  seqs the agent reported lost (gap records with reason buffer_full / buffer_corrupt), and no
  seq is both landed and reported lost.
- `reconcile_usage`: per (device, channel) counter, the sum of the rows of `usage_<window>`
  (the current table: one row per key, no window function) equals the consumption curve's
  difference over the span they cover, recomputed here from the raw registers with the rules
  documented in aggregator/src/series.rs (rollover, reset, negative step; linear
  interpolation at a clamped boundary, rounded half-to-even to 9 places), in exact rational
  arithmetic.
- `readers_agree`: `raw`, `usage_<w>` and `usage_history_<w>` read by both readers hold the
  same rows (every column, as text), and `usage_<w>` is the latest revision of every key of
  `usage_history_<w>`.

Tables are on a local data root or on S3 (a moto endpoint): `Tables(root)` or
`Tables("s3://bucket/prefix", endpoint)`.
"""

import os
import sys
from decimal import Decimal
from fractions import Fraction
from urllib.parse import urlparse

import duckdb
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import duckdb_delta  # noqa: E402

LOSS_REASONS = ("buffer_full", "buffer_corrupt")


class Tables:
    """The Delta tables under a data root: a local directory or s3://bucket/prefix."""

    def __init__(self, root, endpoint=None):
        self.root = str(root).rstrip("/")
        self.endpoint = endpoint

    def uri(self, name):
        return f"{self.root}/{name}"

    def storage_options(self):
        if not self.endpoint:
            return None
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                "AWS_ALLOW_HTTP": "true"}

    def arrow(self, name):
        """The table's current snapshot as a pyarrow table, or None if there is no table."""
        try:
            return DeltaTable(self.uri(name), storage_options=self.storage_options()).to_pyarrow_table()
        except TableNotFoundError:
            return None

    def con(self, *names):
        """A DuckDB connection with the named tables registered (read by deltalake)."""
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        for n in names:
            t = self.arrow(n)
            if t is not None:
                con.register(n, t)
        return con, {n for n in names if n in [r[0] for r in con.execute("SHOW TABLES").fetchall()]}

    def duck_secret(self):
        """Setup SQL for delta_scan on the moto endpoint."""
        if not self.endpoint:
            return None
        host = urlparse(self.endpoint).netloc
        return ("CREATE SECRET s3 (TYPE s3, KEY_ID 'testing', SECRET 'testing', REGION 'us-east-1', "
                f"ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false)")


def landed_counts(tables):
    """{device: (rows, distinct seqs)} of the raw table."""
    con, have = tables.con("raw")
    if "raw" not in have:
        return {}
    rows = con.execute("SELECT device_id, count(*), count(DISTINCT seq) FROM raw GROUP BY 1").fetchall()
    return {d: (n, k) for d, n, k in rows}


def lost_seqs(tables):
    """{device: set(seq)} reported lost by agents."""
    con, have = tables.con("gaps")
    if "gaps" not in have:
        return {}
    out = {}
    for d, a, b, reason in con.execute("SELECT device_id, from_seq, to_seq, reason FROM gaps").fetchall():
        if reason in LOSS_REASONS:
            out.setdefault(d, set()).update(range(a, b + 1))
    return out


def raw_dates(tables):
    """The date partitions of raw, as YYYY-MM-DD."""
    con, have = tables.con("raw")
    if "raw" not in have:
        return []
    return [str(d) for (d,) in con.execute("SELECT DISTINCT date FROM raw ORDER BY 1").fetchall()]


def exactly_once(tables, produced):
    """Returns a list of problems (empty = pass). `produced`: {device: highest seq}."""
    problems = []
    con, have = tables.con("raw")
    if "raw" not in have:
        return ["no raw table"]
    dups = con.execute("SELECT device_id, seq, count(*) c FROM raw GROUP BY ALL HAVING c > 1 LIMIT 5").fetchall()
    if dups:
        problems.append(f"duplicates in raw: {dups}")
    lost = lost_seqs(tables)
    landed = {}
    for d, seq in con.execute("SELECT DISTINCT device_id, seq FROM raw").fetchall():
        landed.setdefault(d, set()).add(seq)
    for d, n in produced.items():
        want = set(range(1, n + 1))
        got = landed.get(d, set())
        gone = lost.get(d, set())
        if got & gone:
            problems.append(f"{d}: {len(got & gone)} seqs both landed and reported lost")
        missing = want - got - gone
        extra = got - want
        if missing:
            problems.append(f"{d}: {len(missing)} seqs neither landed nor in a gap record, e.g. {sorted(missing)[:5]}")
        if extra:
            problems.append(f"{d}: {len(extra)} landed seqs above the agent's counter, e.g. {sorted(extra)[:5]}")
    for d in landed.keys() - produced.keys():
        problems.append(f"unexpected device {d} in raw")
    return problems


def _round9(fr):
    """Fraction rounded half-to-even to 9 decimal places, exactly."""
    scaled = fr * 10**9
    n = scaled.numerator // scaled.denominator
    rem = scaled - n
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and n % 2 == 1):
        n += 1
    return Fraction(n, 10**9)


def consumption_curve(points, register_max):
    """points: sorted [(ts_us, Fraction value)] -> [(ts_us, C)] per series.rs rules."""
    out = []
    c = Fraction(0)
    rng = register_max + 1
    prev = None
    for t, v in points:
        if prev is not None:
            before = prev
            if v >= before:
                c += v - before
            elif (rng - before) + v <= rng / 10:
                c += (rng - before) + v
            elif v <= before / 10:
                c += v
            else:
                c += v - before
        out.append((t, c))
        prev = v
    return out


def curve_at(curve, t):
    """C(t) with t clamped to the span; interpolated boundaries rounded once."""
    if t <= curve[0][0]:
        return curve[0][1]
    if t >= curve[-1][0]:
        return curve[-1][1]
    lo, hi = 0, len(curve) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if curve[mid][0] <= t:
            lo = mid
        else:
            hi = mid
    (t0, c0), (t1, c1) = curve[lo], curve[hi]
    if t == t0:
        return c0
    return c0 + _round9((c1 - c0) * Fraction(t - t0, t1 - t0))


def reconcile_usage(tables, window, register_max, default_register_max):
    """Returns (problems, series checked)."""
    cur = f"usage_{window}"
    con, have = tables.con(cur, "raw")
    if cur not in have:
        return [], 0
    usage = con.execute(
        f"SELECT device_id, channel, epoch_us(window_start), epoch_us(window_end), CAST(usage AS VARCHAR) "
        f"FROM {cur} WHERE kind = 'counter'").fetchall()
    per = {}
    for d, ch, s, e, u in usage:
        per.setdefault((d, ch), []).append((s, e, Fraction(Decimal(u)) if u is not None else Fraction(0)))
    raw = {}
    for d, ch, t, v in con.execute(
            "SELECT DISTINCT ON (device_id, seq) device_id, channel, epoch_us(ts), CAST(value AS VARCHAR) "
            "FROM raw WHERE kind = 'counter' ORDER BY device_id, seq, received_at").fetchall():
        raw.setdefault((d, ch), []).append((t, Fraction(Decimal(v))))
    problems = []
    for key, rows in sorted(per.items()):
        pts = sorted(raw.get(key, []), key=lambda p: p[0])
        if not pts:
            problems.append(f"{key}: usage rows without raw readings")
            continue
        rows.sort()
        for (s0, e0, _), (s1, _, _) in zip(rows, rows[1:]):
            if e0 != s1:
                problems.append(f"{key}: windows not contiguous at {e0}")
                break
        rmax = Fraction(Decimal(register_max.get(key[1], default_register_max)))
        curve = consumption_curve(pts, rmax)
        want = curve_at(curve, rows[-1][1]) - curve_at(curve, rows[0][0])
        got = sum(r[2] for r in rows)
        if want != got:
            problems.append(f"{key}: sum(usage) {float(got)} != register difference {float(want)} "
                            f"over {len(rows)} windows")
    return problems, len(per)


def current_rows(tables, window):
    """Rows of usage_<window> without computed_at, sorted, as tuples."""
    con, have = tables.con(f"usage_{window}")
    if f"usage_{window}" not in have:
        return []
    return con.execute(
        f"SELECT * EXCLUDE (computed_at) FROM usage_{window} ORDER BY device_id, channel, window_start").fetchall()


# Every column as text, in a fixed order (the payload of dead letters is left out).
_TEXT = {
    "raw": "device_id, seq::VARCHAR, ts::VARCHAR, channel, kind, unit, value::VARCHAR, quality, "
           "received_at::VARCHAR, date::VARCHAR",
    "usage": "device_id, channel, kind, unit, \"window\", window_start::VARCHAR, window_end::VARCHAR, "
             "usage::VARCHAR, \"min\"::VARCHAR, \"max\"::VARCHAR, avg::VARCHAR, \"last\"::VARCHAR, "
             "readings::VARCHAR, first_ts::VARCHAR, last_ts::VARCHAR, coverage::VARCHAR, flags, "
             "revision::VARCHAR, computed_at::VARCHAR, date::VARCHAR",
}


def readers_agree(tables, windows=("15m",)):
    """Returns (problems, {table: rows}): deltalake and delta_scan read the same rows."""
    problems, sizes = [], {}
    names = ["raw"] + [t for w in windows for t in (f"usage_{w}", f"usage_history_{w}")]
    con, have = tables.con(*names)
    for name in names:
        if name not in have:
            problems.append(f"{name}: no table")
            continue
        cols = _TEXT["raw" if name == "raw" else "usage"]
        ours = con.execute(f"SELECT {cols} FROM {name} ORDER BY ALL").fetchall()
        theirs = duckdb_delta.query(f"SELECT {cols} FROM delta_scan('{tables.uri(name)}') ORDER BY ALL",
                                    tables.duck_secret())
        norm = lambda rows: [tuple(None if v is None else str(v) for v in r) for r in rows]
        a, b = norm(ours), norm(theirs)
        sizes[name] = len(a)
        if a != b:
            diff = [r for r in a if r not in set(b)][:2] + [r for r in b if r not in set(a)][:2]
            problems.append(f"{name}: deltalake read {len(a)} rows, delta_scan {len(b)}; e.g. {diff}")
        elif not a and name == "raw":
            problems.append(f"{name}: empty")
    for w in windows:
        cur, hist = f"usage_{w}", f"usage_history_{w}"
        if cur in have and hist in have:
            bad = con.execute(
                f"""SELECT count(*) FROM (
                      SELECT * EXCLUDE (date) FROM {hist}
                      QUALIFY row_number() OVER (PARTITION BY device_id, channel, window_start ORDER BY revision DESC) = 1
                    ) h FULL JOIN (SELECT * EXCLUDE (date) FROM {cur}) c
                    USING (device_id, channel, window_start)
                    WHERE h.revision IS DISTINCT FROM c.revision OR h.usage IS DISTINCT FROM c.usage
                       OR h.avg IS DISTINCT FROM c.avg OR h.flags IS DISTINCT FROM c.flags""").fetchone()[0]
            if bad:
                problems.append(f"{cur}: {bad} keys differ from the latest revision in {hist}")
    return problems, sizes
