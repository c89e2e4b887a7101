#!/usr/bin/env bash
# The README's Usage screenshot: the demo's tables, the HTML usage report of
# `gridmeter serve --report` (the main panels of the "gridmeter / Usage" dashboard; Grafana
# itself is not installable from the Debian/PyPI/npm registries here), taken with headless
# Chromium. Usage: scripts/usage-screenshot.sh [demo out dir] [png]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-demo-data}"
png="${2:-docs/usage-report.png}"
bin=target/release/gridmeter
[ -x "$bin" ] || cargo build --release --workspace --bins --examples --locked
[ -f "$out/config/serve.toml" ] || "$bin" demo --out "$out"
# A port of its own, so a running `demo --hold` does not get in the way.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed "s/^listen = .*/listen = \"127.0.0.1:$port\"/" "$out/config/serve.toml" > "$out/config/serve-report.toml"
"$bin" serve --config "$out/config/serve-report.toml" --report "$out/usage-report.html"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
  --user-data-dir="$profile" --window-size=1240,720 --screenshot="$png" \
  "file://$(realpath "$out/usage-report.html")"
echo "screenshot: $png"
