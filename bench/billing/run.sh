#!/usr/bin/env bash
# Billing export bench: one local month (2026-10, 2,980 fifteen-minute intervals incl. the
# 25-hour DST day) for N customers (default 10,000), one energy counter each, with raw
# readings for the reconciliation. Release build; wall, CPU (user + sys) and peak RSS from
# /usr/bin/time -v, the stage times from the export's log. Against a peer in the same run:
# DuckDB (delta_scan) computing the per-customer energy totals from the same usage table,
# compared with the export's load + billing stages of the lean run, and checked equal to the
# energy the statements bill.
#
#   bench/billing/run.sh [customers] [workdir]
#
# Data: gen.py up to 10,000 customers; above, gen_scale.py (the same layout, blocks of 1,000
# meters repeating the first block's readings, written in one commit per table). Above
# 20,000 customers the plain-XML Green Button run is skipped (≈ 0.57 MB a customer on disk);
# the gzip run is the full-output figure.
set -euo pipefail
N=${1:-10000}
WORK=${2:-/tmp/gridmeter-billing-bench}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${GRIDMETER_DUCKDB_DELTA_VENV:-$HOME/.cache/gridmeter/duckdb-delta-1.4.4}
cd "$ROOT"
cargo build --release --workspace --bins --examples --locked
BIN="$ROOT/target/release/gridmeter-billing"
DATA="$WORK/n$N"
if [ ! -f "$DATA/billing.toml" ]; then
  mkdir -p "$DATA"
  if [ "$N" -le 10000 ]; then
    python3 "$ROOT/bench/billing/gen.py" "$DATA" "$N"
  else
    python3 "$ROOT/bench/billing/gen_scale.py" "$DATA" "$N"
  fi
fi
cd "$DATA"
echo "data: $(du -sh usage_15m | cut -f1) usage, $(du -sh raw | cut -f1) raw"
field() { grep "$1" "$2" | awk '{print $NF}'; }
# The previous run's files are moved aside, and deleted only at the end: on ext4 without a
# journal, creating files right after deleting many makes each inode allocation skip the ones
# freed in the last minute (up to six while their blocks are dirty), which would be timed as
# the export's.
TRASH="$WORK/.trash-$$"
trap 'rm -rf "$TRASH"' EXIT
mkdir -p "$TRASH"
run() {
  local name=$1 config=$2
  if [ -e exports ]; then mv exports "$TRASH/exports-$name"; fi
  /usr/bin/time -v "$BIN" run --config "$config" --period 2026-10 2> "time-$name.txt" | tail -2
  local user sys
  user=$(field 'User time' "time-$name.txt"); sys=$(field 'System time' "time-$name.txt")
  echo "$name: wall $(field 'Elapsed (wall clock)' "time-$name.txt")," \
       "CPU $(echo "$user + $sys" | bc) s, peak RSS $(field 'Maximum resident' "time-$name.txt") KiB," \
       "output $(du -sh exports | cut -f1)"
  if [ -d exports/2026-10/run-0001/espi ]; then
    echo "  espi: $(du -sb exports/2026-10/run-0001/espi | cut -f1) bytes in $(ls exports/2026-10/run-0001/espi | wc -l) files"
  fi
  # The log colours its fields; the stage times are read without the escape codes.
  sed 's/\x1b\[[0-9;]*m//g' "time-$name.txt" | grep -o 'load_s=[0-9.]* bill_s=[0-9.]* publish_s=[0-9.]*' \
    > "stages-$name.txt" || true
  sed 's/^/  stages: /' "stages-$name.txt"
}
# Seconds of one stage of a run, from its stages file.
stage() { grep -o "$1=[0-9.]*" "stages-$2.txt" | cut -d= -f2; }
# Everything: statements, invoices (JSON + HTML), ESPI feeds gzip-compressed, raw reconciliation.
cp billing.toml billing-gz.toml
printf 'green_button_gzip = true\n' >> billing-gz.toml
run full-gzip billing-gz.toml
# The same with plain XML feeds.
if [ "$N" -le 20000 ]; then
  run full billing.toml
fi
# Without the Green Button feeds and without the raw side of the reconciliation.
cp billing.toml billing-lean.toml
printf 'green_button = false\nreconcile_raw = false\n' >> billing-lean.toml
run lean billing-lean.toml
# The peer: per-customer (= per-meter here) energy totals of the month from the same table.
SQL="COPY (SELECT device_id, sum(usage) AS wh FROM delta_scan('$DATA/usage_15m')
  WHERE window_start >= TIMESTAMPTZ '2026-09-30 22:00:00+00' AND window_start < TIMESTAMPTZ '2026-10-31 23:00:00+00'
  GROUP BY device_id) TO '$DATA/duckdb-totals.parquet' (FORMAT parquet)"
/usr/bin/time -v "$VENV/bin/python" "$ROOT/scripts/duckdb_delta.py" "$SQL" 2> time-duckdb.txt
echo "duckdb totals: wall $(field 'Elapsed (wall clock)' time-duckdb.txt)," \
     "CPU $(echo "$(field 'User time' time-duckdb.txt) + $(field 'System time' time-duckdb.txt)" | bc) s"
# m:ss.ss or h:mm:ss as seconds.
secs() { echo "$1" | awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }'; }
DUCK=$(secs "$(field 'Elapsed (wall clock)' time-duckdb.txt)")
STEP=$(echo "$(stage load_s lean) + $(stage bill_s lean)" | bc)
echo "totals step: export load + billing $STEP s vs DuckDB $DUCK s: ratio $(echo "scale=2; $STEP / $DUCK" | bc)"
"$VENV/bin/python" "$ROOT/scripts/duckdb_delta.py" "SELECT
  (SELECT count(*) FROM read_parquet('$DATA/duckdb-totals.parquet')) AS customers,
  (SELECT sum(wh) FROM read_parquet('$DATA/duckdb-totals.parquet')) AS duckdb_wh,
  (SELECT sum(usage_quantity) FROM read_parquet('$DATA/exports/2026-10/run-0001/statement_lines.parquet')
    WHERE component = 'energy') AS billed_wh"
