#!/usr/bin/env bash
# Collector benchmark: readings/s from loopback publishers through Mosquitto (the shipped
# deploy/mosquitto config, mTLS) into the raw landing, against the mosquitto_sub ceiling
# measured in the same run, plus redelivery catch-up after kill -9.
# Needs: mosquitto, mosquitto_sub. Usage: bench/collector/run.sh [BENCH_MESSAGES=200000]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --workspace --bins --examples --locked
exec target/release/examples/collector_bench
