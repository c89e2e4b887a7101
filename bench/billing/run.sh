#!/usr/bin/env bash
# Billing export bench: one local month (2026-10, 2,980 fifteen-minute intervals incl. the
# 25-hour DST day) for N customers (default 10,000), one energy counter each, with raw
# readings for the reconciliation. Release build; time and peak RSS from /usr/bin/time -v.
#
#   bench/billing/run.sh [customers] [workdir]
set -euo pipefail
N=${1:-10000}
WORK=${2:-/tmp/gridmeter-billing-bench}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
cargo build --release -p gridmeter-billing
BIN="$ROOT/target/release/gridmeter-billing"
DATA="$WORK/n$N"
if [ ! -f "$DATA/billing.toml" ]; then
  mkdir -p "$DATA"
  python3 "$ROOT/bench/billing/gen.py" "$DATA" "$N"
fi
cd "$DATA"
echo "data: $(du -sh usage_15m | cut -f1) usage, $(du -sh raw | cut -f1) raw"
run() {
  local name=$1 config=$2
  rm -rf exports
  /usr/bin/time -v "$BIN" run --config "$config" --period 2026-10 2> "time-$name.txt" | tail -2
  echo "$name: elapsed $(grep 'Elapsed (wall clock)' "time-$name.txt" | awk '{print $NF}')," \
       "peak RSS $(grep 'Maximum resident' "time-$name.txt" | awk '{print $NF}') KiB," \
       "output $(du -sh exports | cut -f1)"
}
# Everything: statements, invoices (JSON + HTML), ESPI feeds, raw reconciliation.
run full billing.toml
# Without the Green Button feeds and without the raw side of the reconciliation.
cp billing.toml billing-lean.toml
printf 'green_button = false\nreconcile_raw = false\n' >> billing-lean.toml
run lean billing-lean.toml
