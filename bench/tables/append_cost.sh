#!/usr/bin/env bash
# The cost of one small append to the raw Delta table as its number of active files grows
# (one file per collector commit). Usage: bench/tables/append_cost.sh [appends=3000]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --workspace --bins --examples --locked
exec target/release/examples/append_cost "${1:-3000}"
