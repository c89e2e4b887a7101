#!/usr/bin/env bash
# gridmeter serve benchmark: the month-per-customer query (sum of a month of usage_15m per
# device, one device per customer) for 10,000 customers (29.8 M rows), through gridmeter serve
# (release, psycopg over TLS) against DuckDB 1.4.4's delta_scan on the same table, in the
# same run. Figures: serve/README.md ("Benchmark").
# Usage: bench/serve/run.sh [dir] [customers]
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:-/tmp/gridmeter-serve-bench}"
customers="${2:-10000}"
venv="${GRIDMETER_DUCKDB_DELTA_VENV:-$HOME/.cache/gridmeter/duckdb-delta-1.4.4}"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "psycopg[binary]>=3.1"
cargo build --release --workspace --bins --examples --locked
bin=target/release/gridmeter
if [ ! -d "$dir/data/usage_15m" ]; then
  rm -rf "$dir"
  mkdir -p "$dir/data"
  python3 bench/serve/gen.py "$dir/data" "$customers" 31
fi
rm -rf "$dir/pki"
"$bin" pki init --dir "$dir/pki" >/dev/null
head -c 18 /dev/urandom | base64 > "$dir/password"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$dir/serve.toml" <<TOML
listen = "127.0.0.1:$port"
data_root = "$dir/data"
query_timeout = "300s"
query_memory_mib = 2048
[tls]
cert = "$dir/pki/server.crt"
key = "$dir/pki/server.key"
[[users]]
name = "bench"
password_file = "$dir/password"
TOML
RUST_LOG=warn "$bin" serve --config "$dir/serve.toml" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.2
done
echo "cores: $(nproc)"
"$venv/bin/python" bench/serve/query.py "$dir/data" "$port" "$dir/pki/ca.crt" "$dir/password"
