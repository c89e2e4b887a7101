#!/usr/bin/env python3
"""The security properties of the deployment files (docs/security.md), checked.

docker-compose.yml
  - the CA volume (pki-ca) is mounted by the `pki` service only;
  - the broker, collector and agent each mount only their own TLS volume, read-only, and
    the `pki` service copies into each only that component's certificate and key (and the
    CA certificate, the broker also the CRL), never ca.key;
  - Prometheus and Grafana publish their ports on 127.0.0.1 only; Grafana's admin password
    is a required variable, not a default.
deploy/k8s/
  - every gridmeter workload is selected by a NetworkPolicy with Ingress and Egress, and
    the union of its policies allows exactly: agents -> broker 8883; collectors -> broker
    8883 and S3 443; aggregator and billing -> S3 443; metrics only from Prometheus;
  - each S3 user mounts only its own credential Secret, configs name the secret by file;
  - the collector container does not mount the Secret holding every replica's key.
deploy/k8s/s3-bucket-policy.json, evaluated (explicit deny > allow > implicit deny):
  - the collector can only write (and read) raw/, gaps/, deadletter/, devices/; the
    aggregator reads raw/, usage_*/, _state/, exceptions/, edits/ and writes those but raw/;
    billing only reads raw/, usage_15m/ and exceptions/; nobody deletes but the compactor (compact, vacuum);
    plain-HTTP requests are refused.

Usage: deploy/tools/check_security.py [--root DIR]
"""
import argparse
import fnmatch
import json
import re
import sys
from pathlib import Path

import yaml

errors = []


def fail(msg):
    errors.append(msg)


# --- docker compose ------------------------------------------------------------------------
OWN_TLS = {"mosquitto": "tls-broker", "collector": "tls-collector", "agent": "tls-agent"}
# What the pki service may copy into each component's volume (paths in the PKI directory).
ALLOWED_COPIES = {
    "/tls/broker/": {"/pki/ca.crt", "/pki/crl.pem", "/pki/server.crt", "/pki/server.key"},
    "/tls/collector/": {"/pki/ca.crt", "/pki/collectors/collector-0.crt", "/pki/collectors/collector-0.key"},
    "/tls/agent/": {"/pki/ca.crt", "/pki/devices/edge-1.crt", "/pki/devices/edge-1.key"},
}


def named_mounts(service):
    """(volume name, target, read_only) of the named volumes a service mounts."""
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            src, target = parts[0], parts[1] if len(parts) > 1 else ""
            ro = len(parts) > 2 and "ro" in parts[2].split(",")
        else:
            src, target, ro = v.get("source", ""), v.get("target", ""), bool(v.get("read_only"))
        if src and not src.startswith((".", "/", "~")):
            out.append((src, target, ro))
    return out


def check_compose(path):
    doc = yaml.safe_load(path.read_text())
    services = doc.get("services") or {}
    for name, s in services.items():
        mounts = named_mounts(s)
        for vol, target, ro in mounts:
            if vol == "pki-ca" and name != "pki":
                fail(f"compose: {name} mounts the CA volume pki-ca")
            if vol.startswith("tls-") and name != "pki":
                if OWN_TLS.get(name) != vol:
                    fail(f"compose: {name} mounts {vol}, which is not its own")
                if not ro:
                    fail(f"compose: {name} mounts {vol} writable")
        if name in OWN_TLS and OWN_TLS[name] not in {m[0] for m in mounts}:
            fail(f"compose: {name} does not mount its TLS volume {OWN_TLS[name]}")
    cmd = " ".join(services.get("pki", {}).get("command") or [])
    copies = re.findall(r"install\s+((?:-\S+\s+(?:\S+\s+)?)*)((?:/\S+\s+)+?)(/tls/\w+/)", cmd)
    if len(copies) < 6:
        fail(f"compose: the pki service's install commands were not understood: {cmd}")
    seen_dest = set()
    for _, sources, dest in copies:
        seen_dest.add(dest)
        for src in sources.split():
            if src not in ALLOWED_COPIES.get(dest, set()):
                fail(f"compose: pki copies {src} into {dest}")
            if src.endswith(".key") and "0600" not in _:
                fail(f"compose: {src} copied without mode 0600")
    if seen_dest != set(ALLOWED_COPIES):
        fail(f"compose: pki fills {sorted(seen_dest)}, expected {sorted(ALLOWED_COPIES)}")
    if "ca.key" in cmd:
        fail("compose: the pki service copies ca.key")
    for name in ("prometheus", "grafana"):
        for p in services.get(name, {}).get("ports") or []:
            if not str(p).startswith("127.0.0.1:"):
                fail(f"compose: {name} publishes {p} beyond loopback")
    for name, s in services.items():
        if name != "mosquitto" and name not in ("prometheus", "grafana") and s.get("ports"):
            fail(f"compose: {name} publishes ports {s['ports']}")
    env = services.get("grafana", {}).get("environment") or {}
    pw = str(env.get("GF_SECURITY_ADMIN_PASSWORD", ""))
    if not re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", pw):
        fail(f"compose: Grafana's admin password must be a required variable, is {pw!r}")


# --- Kubernetes ------------------------------------------------------------------------------
WORKLOADS = {
    "gridmeter-agent": {"egress": {("pod", "emqx", 8883)}, "ingress": {9101}},
    "gridmeter-collector": {"egress": {("pod", "emqx", 8883), ("ip", None, 443)}, "ingress": {9102}},
    "gridmeter-aggregator": {"egress": {("ip", None, 443)}, "ingress": {9103}},
    "gridmeter-aggregator-shards": {"egress": {("ip", None, 443)}, "ingress": {9103}},
    "gridmeter-billing": {"egress": {("ip", None, 443)}, "ingress": set()},
}
S3_SECRET = {
    "gridmeter-collector": "gridmeter-s3-collector",
    "gridmeter-aggregator": "gridmeter-s3-aggregator",
    "gridmeter-aggregator-shards": "gridmeter-s3-aggregator",
    "gridmeter-billing": "gridmeter-s3-billing",
}


def pod_template(obj):
    spec = obj.get("spec") or {}
    if obj["kind"] == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    return spec.get("template") or {}


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def is_prometheus(peer):
    ns = (peer.get("namespaceSelector") or {}).get("matchLabels") or {}
    pod = (peer.get("podSelector") or {}).get("matchLabels") or {}
    return ns.get("kubernetes.io/metadata.name") == "monitoring" and pod.get("app.kubernetes.io/name") == "prometheus"


def is_dns(rule):
    return all(
        ((p.get("podSelector") or {}).get("matchLabels") or {}).get("k8s-app") == "kube-dns"
        for p in rule.get("to") or [{}]
    ) and {x.get("port") for x in rule.get("ports") or []} == {53}


def check_k8s(k8s):
    objs = []
    for p in sorted(k8s.glob("*.yaml")):
        objs += [d for d in yaml.safe_load_all(p.read_text()) if d]
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    workloads = [o for o in objs if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "CronJob")]
    found = set()
    for w in workloads:
        name = w["metadata"]["name"]
        tmpl = pod_template(w)
        labels = (tmpl.get("metadata") or {}).get("labels") or {}
        found.add(name)
        want = WORKLOADS.get(name)
        if want is None:
            fail(f"k8s: workload {name} has no expected network access in check_security.py")
            continue
        mine = [p for p in policies if selects(p["spec"].get("podSelector") or {}, labels)]
        types = {t for p in mine for t in p["spec"].get("policyTypes") or []}
        if types != {"Ingress", "Egress"}:
            fail(f"k8s: {name} is not isolated for both ingress and egress ({types})")
        egress, ingress = set(), set()
        for p in mine:
            for rule in p["spec"].get("egress") or []:
                if is_dns(rule):
                    continue
                ports = {x.get("port") for x in rule.get("ports") or []}
                if not rule.get("to") or not ports:
                    fail(f"k8s: {p['metadata']['name']} allows {name} egress to anything")
                for peer in rule.get("to") or []:
                    for port in ports:
                        if "ipBlock" in peer:
                            egress.add(("ip", None, port))
                        else:
                            app = ((peer.get("podSelector") or {}).get("matchLabels") or {}).get("app.kubernetes.io/name")
                            egress.add(("pod", app, port))
            for rule in p["spec"].get("ingress") or []:
                peers = rule.get("from") or []
                if not peers or not all(is_prometheus(x) for x in peers):
                    fail(f"k8s: {p['metadata']['name']} admits {name} traffic from beyond Prometheus")
                ingress |= {x.get("port") for x in rule.get("ports") or []}
        if egress != want["egress"]:
            fail(f"k8s: {name} may reach {sorted(map(str, egress))}, expected {sorted(map(str, want['egress']))}")
        if ingress != want["ingress"]:
            fail(f"k8s: {name} admits ports {sorted(ingress)}, expected {sorted(want['ingress'])}")
        # S3 credentials: only its own Secret.
        pod = tmpl.get("spec") or {}
        text = json.dumps(pod)
        for other_name, secret in S3_SECRET.items():
            if secret in text and secret != S3_SECRET.get(name):
                fail(f"k8s: {name} uses {secret}")
        if name in S3_SECRET and S3_SECRET[name] not in text:
            fail(f"k8s: {name} does not use its S3 credential {S3_SECRET[name]}")
        if "gridmeter-object-store" in text:
            fail(f"k8s: {name} uses the shared S3 Secret gridmeter-object-store")
        # The Secret with every collector's key reaches the init container only.
        vol_secret = {v["name"]: (v.get("secret") or {}).get("secretName") for v in pod.get("volumes") or []}
        for c in pod.get("containers") or []:
            for m in c.get("volumeMounts") or []:
                if vol_secret.get(m.get("name")) == "gridmeter-collector-tls":
                    fail(f"k8s: container {c['name']} of {name} mounts every collector's key")
    missing = set(WORKLOADS) - found
    if missing:
        fail(f"k8s: workloads not found: {sorted(missing)}")
    for o in objs:
        if o["kind"] == "ConfigMap":
            for key, text in (o.get("data") or {}).items():
                if re.search(r"^\s*secret_access_key\s*=", text, re.M):
                    fail(f"k8s: ConfigMap {o['metadata']['name']} {key} holds an inline secret_access_key")


# --- S3 bucket policy ------------------------------------------------------------------------
BUCKET = "arn:aws:s3:::gridmeter-landing"


def _list(x):
    return x if isinstance(x, list) else [x]


def _match(patterns, value):
    return any(fnmatch.fnmatchcase(value, p) for p in _list(patterns))


def statement_applies(st, principal, action, resource, ctx):
    p = st.get("Principal")
    if p != "*" and principal not in _list((p or {}).get("AWS", [])):
        return False
    if "Action" in st and not _match(st["Action"], action):
        return False
    if "NotAction" in st and _match(st["NotAction"], action):
        return False
    if "Resource" in st and not _match(st["Resource"], resource):
        return False
    if "NotResource" in st and _match(st["NotResource"], resource):
        return False
    for op, conds in (st.get("Condition") or {}).items():
        for key, want in conds.items():
            have = ctx.get(key)
            if op == "StringLike" and (have is None or not _match(want, have)):
                return False
            if op == "Bool" and str(have).lower() != str(want).lower():
                return False
    return True


def allowed(policy, principal, action, resource, ctx):
    hits = [s for s in policy["Statement"] if statement_applies(s, principal, action, resource, ctx)]
    if any(s["Effect"] == "Deny" for s in hits):
        return False
    return any(s["Effect"] == "Allow" for s in hits)


def check_bucket_policy(path):
    policy = json.loads(path.read_text())
    user = lambda n: f"arn:aws:iam::123456789012:user/gridmeter-{n}"  # noqa: E731
    obj = lambda k: f"{BUCKET}/prod/{k}"  # noqa: E731
    tls = {"aws:SecureTransport": "true"}
    cases = []  # (who, action, resource, extra ctx, expected)
    for who, can_put, can_get, can_delete, can_list in [
        ("collector", *[{"raw", "gaps", "deadletter", "devices"}] * 2, set(),
         {"raw", "gaps", "deadletter", "devices"}),
        ("aggregator", {"usage_15m", "usage_history_1d", "_state", "exceptions", "edits"},
         {"raw", "usage_15m", "usage_history_1d", "_state", "exceptions", "edits"}, set(),
         {"raw", "usage_15m", "usage_history_1d", "_state", "exceptions", "edits"}),
        ("billing", set(), {"raw", "usage_15m", "exceptions"}, set(), {"raw", "usage_15m", "exceptions"}),
        ("compactor", *[{"raw", "gaps", "deadletter", "usage_15m", "usage_history_1d"}] * 4),
    ]:
        for table in ("raw", "gaps", "deadletter", "usage_15m", "usage_history_1d", "_state", "exports",
                      "exceptions", "edits", "devices"):
            key = f"{table}/date=2026-10-01/x.parquet"
            cases.append((who, "s3:PutObject", obj(key), {}, table in can_put))
            cases.append((who, "s3:GetObject", obj(key), {}, table in can_get))
            cases.append((who, "s3:DeleteObject", obj(key), {}, table in can_delete))
            cases.append((who, "s3:ListBucket", BUCKET, {"s3:prefix": f"prod/{table}/"}, table in can_list))
        cases.append((who, "s3:PutBucketPolicy", BUCKET, {}, False))
        cases.append((who, "s3:PutObject", f"{BUCKET}/other/raw/x", {}, False))
    for who, action, resource, ctx, want in cases:
        got = allowed(policy, user(who), action, resource, {**tls, **ctx})
        if got != want:
            fail(f"bucket policy: {who} {action} {resource} {ctx}: {'allowed' if got else 'denied'}, expected {'allowed' if want else 'denied'}")
    if allowed(policy, user("aggregator"), "s3:GetObject", obj("raw/x"), {"aws:SecureTransport": "false"}):
        fail("bucket policy: a plain-HTTP request is allowed")
    return len(cases) + 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2]))
    root = Path(ap.parse_args().root)
    check_compose(root / "deploy" / "docker-compose.yml")
    check_k8s(root / "deploy" / "k8s")
    n = check_bucket_policy(root / "deploy" / "k8s" / "s3-bucket-policy.json")
    for e in errors:
        print(f"  FAIL: {e}")
    print(f"  compose mounts and ports, k8s network policies and S3 secrets, {n} bucket-policy cases checked")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
