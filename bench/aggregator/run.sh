#!/usr/bin/env bash
# Aggregator benchmark: one day of 1-minute data from 10,000 devices (14.4 M readings),
# aggregated by gridmeter-aggregator (release) and the same windowed query in DuckDB on the
# same raw Parquet in the same run; then the cost of restating one device-day after a late
# reading. Usage: bench/aggregator/run.sh [dir] [devices]
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:-/tmp/gridmeter-agg-bench}"
devices="${2:-10000}"
cargo build --release --workspace --bins --examples --locked
RUST_LOG=warn ./target/release/examples/aggregator_bench "$dir" "$devices"
