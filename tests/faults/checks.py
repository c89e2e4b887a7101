"""Independent checks over what the pipeline wrote: DuckDB/pyarrow readers, not our Rust code.

- `exactly_once`: every (device_id, seq) an agent produced is in the raw landing exactly
  once, except seqs the agent reported lost (gap records with reason buffer_full /
  buffer_corrupt), and no seq is both landed and reported lost.
- `reconcile_usage`: per (device, channel) counter, the sum of the current usage rows
  equals the consumption curve's difference over the span they cover, recomputed here from
  the raw registers with the rules documented in aggregator/src/series.rs (rollover,
  reset, negative step; linear interpolation at a clamped boundary, rounded half-to-even
  to 9 places), in exact rational arithmetic.
"""

from decimal import Decimal
from fractions import Fraction

import duckdb
from pathlib import Path

LOSS_REASONS = ("buffer_full", "buffer_corrupt")


def _con():
    return duckdb.connect()


def raw_glob(root):
    return f"{root}/raw/**/*.parquet"


def landed_counts(root, files=None):
    """{device: (rows, distinct seqs)} of the raw landing."""
    src = files if files is not None else raw_glob(root)
    try:
        rows = _con().execute(
            "SELECT device_id, count(*), count(DISTINCT seq) FROM read_parquet(?, union_by_name=true) GROUP BY 1",
            [src]).fetchall()
    except duckdb.IOException:
        return {}
    return {d: (n, k) for d, n, k in rows}


def lost_seqs(root, files=None):
    """{device: set(seq)} reported lost by agents."""
    src = files if files is not None else f"{root}/gaps/*.parquet"
    try:
        rows = _con().execute(
            "SELECT device_id, from_seq, to_seq, reason FROM read_parquet(?)", [src]).fetchall()
    except duckdb.IOException:
        return {}
    out = {}
    for d, a, b, reason in rows:
        if reason in LOSS_REASONS:
            out.setdefault(d, set()).update(range(a, b + 1))
    return out


def exactly_once(root, produced, raw_files=None, gap_files=None):
    """Returns a list of problems (empty = pass). `produced`: {device: highest seq}."""
    problems = []
    src = raw_files if raw_files is not None else raw_glob(root)
    con = _con()
    dups = con.execute(
        "SELECT device_id, seq, count(*) c FROM read_parquet(?, union_by_name=true) "
        "GROUP BY ALL HAVING c > 1 LIMIT 5", [src]).fetchall()
    if dups:
        problems.append(f"duplicates in raw: {dups}")
    lost = lost_seqs(root, gap_files)
    landed = {}
    for d, seq in con.execute("SELECT DISTINCT device_id, seq FROM read_parquet(?, union_by_name=true)",
                              [src]).fetchall():
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


def reconcile_usage(root, window, register_max, default_register_max):
    """Returns (problems, series checked)."""
    con = _con()
    if not list(Path(root, "usage", window).glob("*.parquet")):
        return [], 0
    usage = con.execute(
        f"SELECT device_id, channel, epoch_us(window_start), epoch_us(window_end), CAST(usage AS VARCHAR) "
        f"FROM read_parquet('{root}/usage/{window}/*.parquet') WHERE kind = 'counter' "
        "QUALIFY row_number() OVER (PARTITION BY device_id, channel, window_start ORDER BY revision DESC) = 1"
    ).fetchall()
    per = {}
    for d, ch, s, e, u in usage:
        per.setdefault((d, ch), []).append((s, e, Fraction(Decimal(u)) if u is not None else Fraction(0)))
    raw = {}
    for d, ch, t, v in con.execute(
            f"SELECT DISTINCT ON (device_id, seq) device_id, channel, epoch_us(ts), CAST(value AS VARCHAR) "
            f"FROM read_parquet('{raw_glob(root)}', union_by_name=true) WHERE kind = 'counter' "
            "ORDER BY device_id, seq, received_at").fetchall():
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


def current_rows(root, window):
    """Current usage rows (latest revision per key) without computed_at, sorted, as tuples."""
    return _con().execute(
        f"SELECT * EXCLUDE (computed_at) FROM read_parquet('{root}/usage/{window}/*.parquet') "
        "QUALIFY row_number() OVER (PARTITION BY device_id, channel, window_start ORDER BY revision DESC) = 1 "
        "ORDER BY device_id, channel, window_start").fetchall()
