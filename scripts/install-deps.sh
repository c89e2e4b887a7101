#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine with the Rust toolchain: socat (pty
# pairs standing in for serial lines in the agent's meter protocol tests), Mosquitto and its
# clients, Prometheus (promtool), Chromium, pdftotext and a font (the billing test that
# prints invoices), xmllint (libxml2-utils: the Green Button schema check), and the Python
# packages of .ci/requirements.txt (localstripe: the Stripe push test), and psql
# (postgresql-client: the gridmeter serve tests).
# Already-installed packages are skipped, so it is cheap to run every time.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=(mosquitto mosquitto-clients prometheus openssl chromium poppler-utils fonts-dejavu-core libxml2-utils socat postgresql-client)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing system packages: ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The packages may start a broker/Prometheus of their own where a service manager runs;
  # the tests start their own on free ports.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    $sudo systemctl stop mosquitto prometheus 2>/dev/null || true
  fi
fi

# pip checks the versions itself and installs only what is missing or too old.
echo "== Python packages (.ci/requirements.txt)"
python3 -m pip install -q --disable-pip-version-check -r .ci/requirements.txt

# DuckDB's delta extension for the independent-reader checks (tests/faults, the demo check):
# the PyPI package duckdb-ext-delta is built for duckdb 1.4.4 and loads offline, so that
# duckdb is pinned in a virtualenv of its own (the rest of the tests use the duckdb of
# .ci/requirements.txt). scripts/duckdb_delta.py runs queries there.
venv="${GRIDMETER_DUCKDB_DELTA_VENV:-$HOME/.cache/gridmeter/duckdb-delta-1.4.4}"
if ! "$venv/bin/python" -c "import duckdb, duckdb_ext, pytz" 2>/dev/null; then
  echo "== installing duckdb 1.4.4 with the delta and httpfs extensions in $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "duckdb==1.4.4" "duckdb-ext-delta==1.4.4.20260205" "duckdb-ext-httpfs==1.4.4.20260205" pytz
fi
