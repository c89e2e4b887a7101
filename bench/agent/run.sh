#!/bin/sh
# Agent benchmarks: buffer throughput vs raw SQLite, end-to-end to a loopback Mosquitto vs
# mosquitto_pub, bytes per reading (compact vs JSON), release binary end-to-end and
# footprint (RSS, CPU, stripped size). Needs mosquitto and mosquitto-clients.
# Prints one "name value" line per figure.
set -eu
cd "$(dirname "$0")/../.."
cargo build --release --workspace --bins --examples --locked
GRIDMETER_AGENT_BIN="$PWD/target/release/gridmeter-agent" cargo bench -p gridmeter-agent --bench agent
