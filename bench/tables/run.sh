#!/usr/bin/env bash
# Tables benchmark on a month of 15-minute readings of 1,000 devices (2.98 M readings):
# 1. the aggregator (release) over it, unsharded, and as 3 shards at once on the same machine;
# 2. the reader query "usage of one customer's devices for one month" through DuckDB's
#    delta_scan on usage_15m, against the same query on the pre-Delta layout.
# Usage: bench/tables/run.sh [dir] [devices]
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:-/tmp/gridmeter-tables-bench}"
devices="${2:-1000}"
venv="${GRIDMETER_DUCKDB_DELTA_VENV:-$HOME/.cache/gridmeter/duckdb-delta-1.4.4}"
cargo build --release --workspace --bins --examples --locked
rm -rf "$dir"
mkdir -p "$dir/one/data" "$dir/three/data"
python3 bench/tables/month.py "$dir/one/data" "$devices" 31
cp -r "$dir/one/data/raw" "$dir/three/data/raw"
for d in one three; do
  printf 'data_root = "%s"\nwindows = ["15m", "1h", "1d"]\nallowed_lateness = "0s"\n' "$dir/$d/data" > "$dir/$d/aggregator.toml"
done
agg=target/release/gridmeter-aggregator
t0=$(date +%s.%N)
RUST_LOG=warn "$agg" --config "$dir/one/aggregator.toml" run
t1=$(date +%s.%N)
for i in 0 1 2; do RUST_LOG=warn "$agg" --config "$dir/three/aggregator.toml" run --shard "$i/3" & done
wait
t2=$(date +%s.%N)
echo "aggregator unsharded: $(echo "$t1 - $t0" | bc) s; 3 shards at once: $(echo "$t2 - $t1" | bc) s (cores: $(nproc))"
"$venv/bin/python" bench/tables/query.py "$dir/one/data"
