#!/usr/bin/env bash
# A real Prometheus scrapes a running collector and agent and sees the catalogue's metrics.
#
#   cargo test --workspace --no-run   (builds target/debug/gridmeter-{agent,collector})
#   deploy/tests/prometheus_scrape.sh
#
# Starts, all on 127.0.0.1 with free ports and in a temporary directory:
#   - a PKI made with openssl (CA, broker, collector and device certificates, ECDSA P-256),
#   - mosquitto with mTLS (require_certificate, identity as username) and the per-device ACL,
#   - gridmeter-collector and gridmeter-agent (simulator source) from $BIN_DIR,
#   - Prometheus (Debian /usr/bin/prometheus) scraping both every second, with the
#     gridmeter rules loaded.
# Then polls the Prometheus HTTP API until every metric in REQUIRED has samples, both
# targets are up, the agent is connected and the collector has accepted readings, and the
# rules evaluate without errors. Exits 0 on success, 1 on failure or timeout (printing the
# logs), and always stops what it started.
#
# Environment: BIN_DIR (default <repo>/target/debug), PROMETHEUS (/usr/bin/prometheus),
# MOSQUITTO (/usr/sbin/mosquitto), TIMEOUT_SECS (180), KEEP_TMP=1 to keep the directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN_DIR="${BIN_DIR:-$ROOT/target/debug}"
PROMETHEUS="${PROMETHEUS:-/usr/bin/prometheus}"
MOSQUITTO="${MOSQUITTO:-/usr/sbin/mosquitto}"
TIMEOUT_SECS="${TIMEOUT_SECS:-180}"
DEVICE="scrape-dev-1"

# Metrics that must have samples (non-vector metrics exist from start-up; the labelled
# ones listed here get a series as soon as readings flow).
REQUIRED=(
  gridmeter_agent_readings_collected_total
  gridmeter_agent_readings_sent_total
  gridmeter_agent_buffer_rows
  gridmeter_agent_buffer_bytes
  gridmeter_agent_buffer_budget_bytes
  gridmeter_agent_oldest_unsent_age_seconds
  gridmeter_agent_connected
  gridmeter_agent_publish_latency_seconds_bucket
  gridmeter_agent_reconnects_total
  gridmeter_agent_gap_records_pending
  gridmeter_agent_readings_confirmed_total
  gridmeter_agent_unconfirmed_readings
  gridmeter_agent_oldest_unconfirmed_age_seconds
  gridmeter_agent_resends_total
  gridmeter_collector_messages_received_total
  gridmeter_collector_readings_received_total
  gridmeter_collector_readings_accepted_total
  gridmeter_collector_readings_duplicate_total
  gridmeter_collector_landing_latency_seconds_bucket
  gridmeter_collector_transmission_delay_seconds_bucket
  gridmeter_collector_devices_seen
  gridmeter_collector_devices_stale
  gridmeter_collector_bytes_written_total
  gridmeter_collector_write_errors_total
  gridmeter_collector_wal_bytes
  gridmeter_collector_connected
  gridmeter_collector_confirmations_sent_total
  gridmeter_tls_certificate_expiry_timestamp_seconds
)
# Conditions (PromQL that must return a non-empty result).
CONDITIONS=(
  'up{job="gridmeter-agent"} == 1'
  'up{job="gridmeter-collector"} == 1'
  'gridmeter_agent_connected == 1'
  'gridmeter_collector_connected == 1'
  # Both report their client certificate's expiry (openssl -days 2: within 3 days).
  'gridmeter_tls_certificate_expiry_timestamp_seconds{job="gridmeter-agent",component="agent"} > time()'
  'gridmeter_tls_certificate_expiry_timestamp_seconds{job="gridmeter-collector",component="collector"} < time() + 3 * 86400'
  'gridmeter_collector_readings_accepted_total > 0'
  'gridmeter_agent_readings_sent_total > 0'
  'gridmeter_agent_readings_confirmed_total > 0'
  'gridmeter_collector_confirmations_sent_total > 0'
)

for bin in "$BIN_DIR/gridmeter-agent" "$BIN_DIR/gridmeter-collector" "$PROMETHEUS" "$MOSQUITTO"; do
  if [[ ! -x "$bin" ]]; then
    {
      echo "prometheus_scrape: $bin is missing"
      echo "  build: cargo test --workspace --no-run; apt-get install prometheus mosquitto"
    } >&2
    exit 1
  fi
done
command -v openssl >/dev/null || { echo "prometheus_scrape: openssl is missing" >&2; exit 1; }

TMP="$(mktemp -d -t gm-scrape.XXXXXX)"
PIDS=()
STATUS=1

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    # up to 10 s each for a graceful stop, then SIGKILL
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ "$STATUS" != 0 ]]; then
    for log in "$TMP"/*.log; do
      [[ -f "$log" ]] || continue
      echo "----- $(basename "$log") (last 40 lines)"
      tail -n 40 "$log"
    done
  fi
  if [[ "${KEEP_TMP:-0}" == 1 ]]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
wait_port() { # wait_port PORT NAME PID
  local deadline=$((SECONDS + 30))
  until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null; do
    if ! kill -0 "$3" 2>/dev/null; then echo "prometheus_scrape: $2 exited" >&2; return 1; fi
    if ((SECONDS > deadline)); then echo "prometheus_scrape: $2 does not listen on $1" >&2; return 1; fi
    sleep 0.2
  done
}

MQTT_PORT="$(free_port)"
AGENT_PORT="$(free_port)"
COLLECTOR_PORT="$(free_port)"
PROM_PORT="$(free_port)"

# ---- PKI (openssl; same layout as gridmeter_core::pki) ---------------------------------
PKI="$TMP/pki"
mkdir -p "$PKI/devices" "$PKI/collectors"
(
  cd "$PKI"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=gridmeter test CA/O=gridmeter" -keyout ca.key -out ca.crt \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  issue() { # issue NAME SUBJECT EKU [SAN]
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" \
      -keyout "$1.key" -out "$1.csr"
    {
      echo "basicConstraints=critical,CA:FALSE"
      echo "keyUsage=critical,digitalSignature,keyEncipherment"
      echo "extendedKeyUsage=$3"
      echo "authorityKeyIdentifier=keyid"
      if [[ -n "${4:-}" ]]; then echo "subjectAltName=$4"; fi
    } >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile "$1.ext" -out "$1.crt"
    rm -f "$1.csr" "$1.ext"
  }
  issue server "/CN=localhost/O=gridmeter" serverAuth "DNS:localhost,IP:127.0.0.1"
  issue collectors/collector-0 "/CN=collector-0/OU=collector/O=gridmeter" clientAuth
  issue "devices/$DEVICE" "/CN=$DEVICE/OU=device/O=gridmeter" clientAuth
) >"$TMP/pki.log" 2>&1

# ---- mosquitto ----------------------------------------------------------------------------
# The ACL that ships.
cp "$ROOT/deploy/mosquitto/acl" "$TMP/acl"
mkdir -p "$TMP/mosquitto-data"
cat >"$TMP/mosquitto.conf" <<CONF
# Run as the invoking user: as root, mosquitto would otherwise switch to user "mosquitto",
# which cannot read this private temporary directory.
user $(id -un)
per_listener_settings false
allow_anonymous false
persistence true
persistence_location $TMP/mosquitto-data/
log_dest file $TMP/mosquitto.log
listener $MQTT_PORT 127.0.0.1
cafile $PKI/ca.crt
certfile $PKI/server.crt
keyfile $PKI/server.key
require_certificate true
use_identity_as_username true
use_username_as_clientid true
acl_file $TMP/acl
CONF
"$MOSQUITTO" -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.stdout.log" 2>&1 &
PIDS+=($!)
wait_port "$MQTT_PORT" mosquitto "${PIDS[-1]}"

# ---- collector ----------------------------------------------------------------------------
cat >"$TMP/collector.toml" <<TOML
collector_id = "scrape"
data_root = "$TMP/data"
wal_dir = "$TMP/wal"
metrics_listen = "127.0.0.1:$COLLECTOR_PORT"
flush_interval_ms = 1000

[mqtt]
host = "127.0.0.1"
port = $MQTT_PORT
client_id = "gridmeter-collector-scrape"
tls = { ca = "$PKI/ca.crt", cert = "$PKI/collectors/collector-0.crt", key = "$PKI/collectors/collector-0.key" }
TOML
mkdir -p "$TMP/data" "$TMP/wal"
RUST_LOG="${RUST_LOG:-info}" "$BIN_DIR/gridmeter-collector" --config "$TMP/collector.toml" \
  >"$TMP/collector.log" 2>&1 &
PIDS+=($!)
wait_port "$COLLECTOR_PORT" gridmeter-collector "${PIDS[-1]}"

# ---- agent --------------------------------------------------------------------------------
cat >"$TMP/agent.toml" <<TOML
device_id = "$DEVICE"
metrics_listen = "127.0.0.1:$AGENT_PORT"

[mqtt]
host = "127.0.0.1"
port = $MQTT_PORT
tls = { ca = "$PKI/ca.crt", cert = "$PKI/devices/$DEVICE.crt", key = "$PKI/devices/$DEVICE.key" }

[buffer]
path = "$TMP/agent-buffer.sqlite"

[[sources]]
type = "simulator"
name = "meter"
profile = "household_meter"
interval_ms = 500
seed = 7
TOML
RUST_LOG="${RUST_LOG:-info}" "$BIN_DIR/gridmeter-agent" --config "$TMP/agent.toml" \
  >"$TMP/agent.log" 2>&1 &
PIDS+=($!)
wait_port "$AGENT_PORT" gridmeter-agent "${PIDS[-1]}"

# ---- Prometheus ---------------------------------------------------------------------------
mkdir -p "$TMP/prometheus/rules"
cp "$ROOT/deploy/prometheus/rules/gridmeter.rules.yml" "$TMP/prometheus/rules/"
cat >"$TMP/prometheus/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - rules/gridmeter.rules.yml
scrape_configs:
  - job_name: gridmeter-agent
    static_configs: [{targets: ["127.0.0.1:$AGENT_PORT"]}]
  - job_name: gridmeter-collector
    static_configs: [{targets: ["127.0.0.1:$COLLECTOR_PORT"]}]
YAML
"$PROMETHEUS" --config.file="$TMP/prometheus/prometheus.yml" \
  --storage.tsdb.path="$TMP/prometheus/data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" \
  >"$TMP/prometheus.log" 2>&1 &
PIDS+=($!)
wait_port "$PROM_PORT" prometheus "${PIDS[-1]}"

# ---- poll the Prometheus API --------------------------------------------------------------
echo "prometheus_scrape: waiting up to ${TIMEOUT_SECS}s for ${#REQUIRED[@]} metrics and ${#CONDITIONS[@]} conditions"
if python3 - "$PROM_PORT" "$TIMEOUT_SECS" "${#REQUIRED[@]}" "${REQUIRED[@]}" "${CONDITIONS[@]}" <<'PY'
import json, sys, time, urllib.parse, urllib.request
port, timeout, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
metrics, conditions = sys.argv[4:4 + n], sys.argv[4 + n:]
base = f"http://127.0.0.1:{port}/api/v1"

def get(path, **params):
    url = f"{base}/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{url}: {body}")
    return body["data"]

def unhealthy_rules():
    groups = get("rules")["groups"]
    if not groups:
        return ["(no rule groups loaded)"], groups
    bad = [f"rule {g['name']}/{r.get('name')}: {r.get('health')} {r.get('lastError', '')}"
           for g in groups for r in g["rules"] if r.get("health") != "ok"]
    return bad, groups

deadline = time.monotonic() + timeout
pending = list(metrics) + list(conditions)
groups = []
while True:
    still = []
    for q in pending:
        try:
            if not get("query", query=q)["result"]:
                still.append(q)
        except Exception:  # Prometheus still starting, or a query error
            still.append(q)
    pending = still
    # The rules file loaded in a real Prometheus and every rule evaluated without error.
    try:
        bad_rules, groups = unhealthy_rules()
    except Exception as e:
        bad_rules = [f"(rules API: {e})"]
    if not pending and not bad_rules:
        break
    if time.monotonic() > deadline:
        print("prometheus_scrape: FAILED, no samples for (or unhealthy):")
        for q in pending + bad_rules:
            print(f"  {q}")
        try:
            for t in get("targets")["activeTargets"]:
                print(f"  target {t['labels'].get('job')} {t['scrapeUrl']}: {t['health']} {t.get('lastError', '')}")
        except Exception as e:
            print(f"  (targets: {e})")
        sys.exit(1)
    time.sleep(1)

# Report every catalogue metric of the agent and collector seen (vectors appear on first use).
seen = sorted({m["__name__"] for m in get("series", **{"match[]": '{__name__=~"gridmeter_(agent|collector)_.*"}'})})
print(f"prometheus_scrape: OK: {len(metrics)} required metrics and {len(conditions)} conditions seen; "
      f"{sum(len(g['rules']) for g in groups)} rules healthy; {len(seen)} gridmeter series names scraped:")
for s in seen:
    print(f"  {s}")
PY
then
  STATUS=0
fi
exit "$STATUS"
