#!/usr/bin/env bash
# Runs the README's demo in its short mode and checks its outputs with independent readers.
# Uses target/debug/gridmeter as `cargo test --workspace` builds it (the same features, so
# nothing is compiled again); builds it that way if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/debug/gridmeter
[ -x "$bin" ] || cargo test --workspace --locked --no-run -q
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
RUST_LOG="warn,rumqttd=off" "$bin" demo --short --out "$tmp/demo" | tee "$tmp/demo.log"
python3 scripts/check_demo.py "$tmp/demo" "$tmp/demo.log"
