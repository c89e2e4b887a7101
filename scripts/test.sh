#!/usr/bin/env bash
# The test command (README): unit, property, integration and interop tests of every crate,
# deployment checks, and the demo in its short mode, checked end to end.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test"
cargo test --workspace --locked

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
