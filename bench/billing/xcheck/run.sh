#!/usr/bin/env bash
# Cross-check with the real aggregator: irregular raw readings (jittered 5-9 min, a register
# rollover at 999999, a duplicate (device_id, seq) delivery, a meter installed mid-window,
# the 2026-10-25 DST day) -> gridmeter-aggregator -> gridmeter-billing, whose raw
# reconciliation must match the aggregator's usage to the last decimal.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp "$HERE"/{gen_raw.py,agg.toml,registry.toml,tariffs.toml,billing.toml} "$WORK"/
cd "$ROOT" && cargo build -q -p gridmeter-aggregator -p gridmeter-billing
cd "$WORK"
python3 gen_raw.py
"$ROOT/target/debug/gridmeter-aggregator" -c agg.toml run
"$ROOT/target/debug/gridmeter-billing" run --config billing.toml --from 2026-10-24 --to 2026-10-28
cat data/exports/*/run-0001/reconciliation.csv
python3 "$ROOT/billing-export/tests/check_outputs.py" data/exports/*/run-0001
