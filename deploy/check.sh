#!/usr/bin/env bash
# Validates everything under deploy/ and dashboards/ that a tool can validate. CI runs it;
# it exits non-zero if any check fails and prints a summary either way.
#
#   deploy/check.sh            # from anywhere inside the repository
#
# Needs: promtool (Debian package `prometheus`), python3 with PyYAML. Optional (skipped with
# a message when absent): systemd-analyze, mosquitto (the collector engineer's
# deploy/mosquitto/ has its own tests), docker compose.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PROMTOOL="${PROMTOOL:-$(command -v promtool || true)}"

declare -a RESULTS=()
FAILED=0
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# run NAME CMD...: runs a check, records PASS/FAIL, shows its output on failure.
run() {
  local name="$1"; shift
  if "$@" >"$TMP/out" 2>&1; then
    RESULTS+=("PASS  $name")
  else
    RESULTS+=("FAIL  $name")
    FAILED=$((FAILED + 1))
    echo "---- FAIL: $name"
    sed 's/^/    /' "$TMP/out"
  fi
}
skip() { RESULTS+=("SKIP  $1 ($2)"); }
# run_verbose NAME CMD...: like run, and always shows the command's warnings.
run_verbose() {
  run "$@"
  grep -i 'warning' "$TMP/out" | sed 's/^/    /' || true
}

# --- Prometheus ------------------------------------------------------------------------
if [[ -n "$PROMTOOL" ]]; then
  run "promtool check config deploy/prometheus/prometheus.yml" \
    "$PROMTOOL" check config deploy/prometheus/prometheus.yml
  run "promtool check rules deploy/prometheus/rules/*.yml" \
    "$PROMTOOL" check rules deploy/prometheus/rules/*.yml
  run "promtool test rules deploy/prometheus/tests/*.yml" \
    "$PROMTOOL" test rules deploy/prometheus/tests/*.yml
else
  RESULTS+=("FAIL  promtool not found (apt-get install prometheus)")
  FAILED=$((FAILED + 1))
fi

# --- catalogue, dashboards, rule coverage ------------------------------------------------
run "dashboards/*.json are up to date with dashboards/generate.py" \
  python3 dashboards/generate.py --check
run_verbose "catalogue: dashboards + rules use only docs/metrics.md names; every alert tested" \
  python3 deploy/tools/check_catalogue.py --root "$ROOT" ${PROMTOOL:+--promtool "$PROMTOOL"} \
  ${STRICT_CODE:+--strict-code}
for f in dashboards/*.json; do
  run "json.tool $f" python3 -m json.tool "$f"
done

# --- YAML manifests ----------------------------------------------------------------------
run "YAML well-formed + Kubernetes/compose/provisioning schema basics" \
  python3 deploy/tools/check_yaml.py --root "$ROOT"

# --- security properties -------------------------------------------------------------------
run "security: compose mounts/ports, k8s NetworkPolicies and S3 secrets, bucket policy" \
  python3 deploy/tools/check_security.py --root "$ROOT"

# --- systemd units -----------------------------------------------------------------------
if command -v systemd-analyze >/dev/null 2>&1; then
  # The binaries are not installed here: verify copies whose ExecStart points to /bin/true
  # (systemd-analyze verify insists that the executable exists). Any message is a failure:
  # verify exits 0 on "Unknown key" warnings.
  mkdir -p "$TMP/units"
  for u in deploy/systemd/*.service deploy/systemd/*.timer; do
    sed -E 's#/usr/bin/gridmeter-[a-z]+#/bin/true#g' "$u" >"$TMP/units/$(basename "$u")"
  done
  verify_units() {
    local out
    out="$(cd "$TMP/units" && systemd-analyze verify --man=no ./*.service ./*.timer 2>&1)" || { echo "$out"; return 1; }
    if [[ -n "$out" ]]; then echo "$out"; return 1; fi
  }
  run "systemd-analyze verify deploy/systemd/*" verify_units
else
  skip "systemd-analyze verify deploy/systemd/*" "systemd-analyze not installed"
fi

# --- docker compose ----------------------------------------------------------------------
if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
  run "docker compose config" docker compose -f deploy/docker-compose.yml config -q
else
  skip "docker compose config" "docker compose not installed; YAML checked above"
fi

# --- shell scripts -----------------------------------------------------------------------
for s in deploy/check.sh deploy/tests/*.sh; do
  run "bash -n $s" bash -n "$s"
done
if command -v shellcheck >/dev/null 2>&1; then
  run "shellcheck deploy/**/*.sh" shellcheck deploy/check.sh deploy/tests/*.sh
fi

echo
echo "deploy/check.sh summary:"
printf '  %s\n' "${RESULTS[@]}"
if ((FAILED > 0)); then
  echo "$FAILED check(s) failed"
  exit 1
fi
echo "all checks passed"
