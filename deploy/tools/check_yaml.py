#!/usr/bin/env python3
"""YAML well-formedness and basic schema checks for deploy/ and dashboards/provisioning/.

- every *.yml / *.yaml parses (all documents);
- Kubernetes manifests (deploy/k8s/): apiVersion, kind, metadata.name on every object;
  workloads have a selector matching their pod template labels, named containers with an
  image, and volumeMounts that refer to declared volumes; Services have a selector and
  ports; no object name is duplicated within its kind and namespace;
- docker-compose.yml: every service has an image or a build, and every volume/config
  file it mounts from the repository exists;
- Grafana provisioning: apiVersion 1 and the expected top-level list.
The Prometheus files are validated by promtool (see deploy/check.sh), not here.
"""
import argparse
import sys
from pathlib import Path

import yaml

errors = []


def fail(msg):
    errors.append(msg)


def check_k8s(path, docs):
    seen = set()
    for i, d in enumerate(docs):
        if d is None:
            continue
        where = f"{path}#{i}"
        for key in ("apiVersion", "kind"):
            if not d.get(key):
                fail(f"{where}: no {key}")
        name = (d.get("metadata") or {}).get("name")
        if not name:
            fail(f"{where}: no metadata.name")
        ident = (d.get("kind"), (d.get("metadata") or {}).get("namespace"), name)
        if ident in seen:
            fail(f"{where}: duplicate {ident}")
        seen.add(ident)
        kind = d.get("kind")
        if kind in ("Deployment", "DaemonSet", "StatefulSet"):
            spec = d.get("spec") or {}
            sel = (spec.get("selector") or {}).get("matchLabels") or {}
            tmpl = spec.get("template") or {}
            labels = (tmpl.get("metadata") or {}).get("labels") or {}
            if not sel or any(labels.get(k) != v for k, v in sel.items()):
                fail(f"{where} {kind}/{name}: selector {sel} does not match template labels {labels}")
            pod = tmpl.get("spec") or {}
            volumes = {v.get("name") for v in pod.get("volumes") or []}
            volumes |= {(c.get("metadata") or {}).get("name") for c in spec.get("volumeClaimTemplates") or []}
            if kind == "StatefulSet" and not spec.get("serviceName"):
                fail(f"{where} StatefulSet/{name}: no serviceName")
            containers = (pod.get("containers") or []) + (pod.get("initContainers") or [])
            if not pod.get("containers"):
                fail(f"{where} {kind}/{name}: no containers")
            for c in containers:
                if not c.get("name") or not c.get("image"):
                    fail(f"{where} {kind}/{name}: container without name or image")
                for m in c.get("volumeMounts") or []:
                    if m.get("name") not in volumes:
                        fail(f"{where} {kind}/{name}: container {c.get('name')} mounts undeclared volume {m.get('name')}")
        if kind == "Service":
            spec = d.get("spec") or {}
            if not spec.get("selector") or not spec.get("ports"):
                fail(f"{where} Service/{name}: needs selector and ports")
        if kind in ("ConfigMap", "Secret") and not (d.get("data") or d.get("stringData")):
            fail(f"{where} {kind}/{name}: empty")


def check_compose(path, doc, root):
    services = (doc or {}).get("services") or {}
    if not services:
        fail(f"{path}: no services")
    base = path.parent
    for name, s in services.items():
        if not (s.get("image") or s.get("build")):
            fail(f"{path}: service {name} has neither image nor build")
        b = s.get("build")
        if isinstance(b, dict):
            ctx = (base / b.get("context", ".")).resolve()
            df = ctx / b.get("dockerfile", "Dockerfile")
            if not df.exists():
                fail(f"{path}: service {name}: {df} does not exist")
        for v in s.get("volumes") or []:
            src = v.split(":", 1)[0] if isinstance(v, str) else (v.get("source") or "")
            if src.startswith((".", "/")) and src.startswith("."):
                if not (base / src).resolve().exists():
                    fail(f"{path}: service {name} mounts {src}, which does not exist")
        for dep in s.get("depends_on") or []:
            if dep not in services:
                fail(f"{path}: service {name} depends on unknown service {dep}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2]))
    root = Path(ap.parse_args().root)
    files = sorted(
        [p for p in (root / "deploy").rglob("*") if p.suffix in (".yml", ".yaml")]
        + [p for p in (root / "dashboards").rglob("*") if p.suffix in (".yml", ".yaml")]
    )
    n_objects = 0
    for p in files:
        rel = p.relative_to(root)
        try:
            docs = list(yaml.safe_load_all(p.read_text()))
        except yaml.YAMLError as e:
            fail(f"{rel}: not valid YAML: {e}")
            continue
        parts = rel.parts
        if parts[:2] == ("deploy", "k8s"):
            check_k8s(rel, docs)
            n_objects += sum(1 for d in docs if d)
        elif p.name in ("docker-compose.yml", "compose.yml"):
            check_compose(p, docs[0], root)
        elif parts[:2] == ("dashboards", "provisioning"):
            d = docs[0] or {}
            if d.get("apiVersion") != 1:
                fail(f"{rel}: apiVersion must be 1")
            if not (d.get("datasources") or d.get("providers")):
                fail(f"{rel}: neither datasources nor providers")
    for e in errors:
        print(f"  FAIL: {e}")
    print(f"  {len(files)} YAML files parsed, {n_objects} Kubernetes objects checked")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
