#!/usr/bin/env bash
# Runs the README's demo in its short mode and checks its outputs with independent readers.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
RUST_LOG="warn,rumqttd=off" cargo run -q -p gridmeter --locked -- demo --short --out "$tmp/demo" | tee "$tmp/demo.log"
python3 scripts/check_demo.py "$tmp/demo" "$tmp/demo.log"
