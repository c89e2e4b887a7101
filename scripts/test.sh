#!/usr/bin/env bash
# The test command (README): unit, property, integration and interop tests of every crate,
# deployment checks, and the demo in its short mode, checked end to end.
set -euo pipefail
cd "$(dirname "$0")/.."

# Mosquitto, Prometheus and the Python interop packages, if missing.
bash scripts/install-deps.sh

echo "== cargo test"
cargo test --workspace --locked

# The aggregator's month-scale sum check (1,000 devices × a month of 15-min readings, checked
# exactly, against DuckDB, and by a rebuild from raw) takes minutes unoptimised; it runs in
# release. The debug run above covers the same test on 60 devices.
echo "== aggregator: month of 1,000 devices (release)"
cargo test --release --locked -p gridmeter-aggregator --test tables month_of_1000

if [ -x deploy/check.sh ] || [ -f deploy/check.sh ]; then
  echo "== deploy/check.sh"
  bash deploy/check.sh
fi

if [ -f scripts/demo-check.sh ]; then
  echo "== demo (short mode)"
  bash scripts/demo-check.sh
fi

if [ -f deploy/tests/prometheus_scrape.sh ]; then
  echo "== Prometheus scrapes agent and collector"
  cargo build --workspace --bins --locked
  bash deploy/tests/prometheus_scrape.sh
fi
if [ -f tests/faults/fault_suite.py ]; then
  echo "== fault-injection suite (short mode)"
  cargo build --workspace --bins --locked
  python3 tests/faults/fault_suite.py --short
fi
echo "== all checks passed"
