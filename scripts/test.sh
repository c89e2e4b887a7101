#!/usr/bin/env bash
# The test command (README): unit, property, integration and interop tests of every crate,
# deployment checks, and the demo in its short mode, checked end to end.
#
# Every step after `cargo test` uses the binaries that `cargo test --workspace` built
# (target/debug): building them again with another package selection would resolve other
# features and compile the workspace a second time.
#
# GRIDMETER_FULL=1 adds the aggregator's month-scale check in release (1,000 devices × a
# month of 15-min readings, checked exactly, against DuckDB and by a rebuild from raw). It
# needs a release build of its own (about 25 minutes cold on 2 cores); the debug run covers
# the same test on 60 devices.
set -euo pipefail
cd "$(dirname "$0")/.."

# Mosquitto, Prometheus and the Python interop packages, if missing.
bash scripts/install-deps.sh

echo "== cargo test"
cargo test --workspace --locked

if [ "${GRIDMETER_FULL:-0}" = 1 ]; then
  echo "== aggregator: month of 1,000 devices (release)"
  cargo test --release --locked -p gridmeter-aggregator --test tables month_of_1000
fi

echo "== deploy/check.sh"
bash deploy/check.sh

echo "== demo (short mode)"
bash scripts/demo-check.sh

echo "== Prometheus scrapes agent and collector"
BIN_DIR="$PWD/target/debug" bash deploy/tests/prometheus_scrape.sh

echo "== fault-injection suite (short mode)"
GRIDMETER_BIN_DIR="$PWD/target/debug" python3 tests/faults/fault_suite.py --short
echo "== all checks passed"
