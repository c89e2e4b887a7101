#!/usr/bin/env python3
"""Keeps the metrics catalogue, the dashboards, the alert rules and their tests consistent.

Checks (each failure is printed; exit status 1 if any):
  1. docs/metrics.md parses: every metric row has a name, a known type and labels.
  2. Every dashboard JSON is valid, has a unique uid and schemaVersion, and every panel
     query uses only catalogue metrics, `up`, or recording rules defined in the rules file.
     The queries are also parsed by `promtool check rules` (Grafana variables replaced), so
     a PromQL syntax error in a panel fails here and not in front of an operator.
  3. Every rule expression uses only catalogue metrics (or recording rules).
  4. Every alert has a unit test where it fires (non-empty exp_alerts) and one where it must
     not (exp_alerts: []), and appears in the catalogue's alert table (and vice versa).
  5. The catalogue's "used by" column names dashboard panels and alerts that exist.
  6. (report) Metric names registered in the components' code (*/src/**/*.rs) that are
     not in the catalogue, and catalogue names no component registers yet. Failures with
     --strict-code, otherwise warnings (components evolve in parallel).

Usage: deploy/tools/check_catalogue.py [--root DIR] [--promtool PATH] [--strict-code]
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

DASHBOARD_CODES = {"PH": "pipeline-health.json", "FL": "fleet.json", "US": "usage.json"}
TYPES = {"counter", "gauge", "histogram", "summary"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                "group_left", "group_right", "inf", "nan", "atan2", "start", "end",
                # aggregation operators (followed by `by`/`without`, not by a parenthesis)
                "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                "bottomk", "topk", "quantile"}
OTHER_SERIES = {"up"}

errors = []
warnings = []


def fail(msg):
    errors.append(msg)


def parse_catalogue(path):
    metrics, recording, alerts_doc, used_by = {}, set(), set(), []
    section = None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip().lower()
            continue
        if not line.startswith("| `") and not (section and section.startswith("alerts") and line.startswith("| Gridmeter")):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if section and section.startswith("alerts"):
            alerts_doc.add(cells[0])
            continue
        name = cells[0].strip("`")
        if section and section.startswith("recording"):
            recording.add(name)
            used_by.append((name, cells[-1]))
            continue
        if section and section.startswith("other"):
            used_by.append((name, cells[-1]))
            continue
        if not name.startswith("gridmeter_"):
            continue
        if len(cells) != 5:
            fail(f"docs/metrics.md: row for {name} has {len(cells)} cells, expected 5")
            continue
        mtype = cells[1].split()[0]
        if mtype not in TYPES:
            fail(f"docs/metrics.md: {name} has unknown type {cells[1]!r}")
        if name in metrics:
            fail(f"docs/metrics.md: {name} listed twice")
        if not cells[2]:
            fail(f"docs/metrics.md: {name} has an empty labels cell (use –)")
        metrics[name] = mtype
        used_by.append((name, cells[4]))
    return metrics, recording, alerts_doc, used_by


def strip_promql(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"'(?:[^'\\]|\\.)*'", "''", e)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", e)
    return e


def metric_names(expr):
    e = strip_promql(expr)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
        tok, call = m.group(1), m.group(2)
        if call or tok.lower() in PROMQL_WORDS:
            continue
        names.add(tok)
    return names


def known(name, metrics, recording):
    if name in metrics or name in recording or name in OTHER_SERIES:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and metrics.get(name[: -len(suffix)]) in ("histogram", "summary"):
            return suffix != "_bucket" or metrics[name[: -len(suffix)]] == "histogram"
    return False


def grafana_to_promql(expr):
    e = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    e = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(:[a-z]+)?\}?", ".*", e)
    return e


def panels_of(board):
    for p in board.get("panels", []):
        yield p
        for q in p.get("panels", []) or []:
            yield q


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2]))
    ap.add_argument("--promtool", default=shutil.which("promtool"))
    ap.add_argument("--strict-code", action="store_true")
    args = ap.parse_args()
    root = Path(args.root)

    metrics, recording_doc, alerts_doc, used_by = parse_catalogue(root / "docs/metrics.md")
    if len(metrics) < 40:
        fail(f"docs/metrics.md: only {len(metrics)} metrics parsed; the table format changed?")

    rules_path = root / "deploy/prometheus/rules/gridmeter.rules.yml"
    rules = yaml.safe_load(rules_path.read_text())
    recording, alerts = set(), {}
    for g in rules["groups"]:
        for r in g["rules"]:
            if "record" in r:
                recording.add(r["record"])
            else:
                alerts[r["alert"]] = r
            for n in metric_names(r["expr"]):
                if not known(n, metrics, recording | {x.get("record") for gg in rules["groups"] for x in gg["rules"]}):
                    fail(f"rules: {r.get('alert') or r.get('record')} uses {n}, not in docs/metrics.md")
    if recording != recording_doc:
        fail(f"recording rules in the rules file {sorted(recording)} differ from docs/metrics.md {sorted(recording_doc)}")

    # 4. alert coverage by unit tests, and the catalogue's alert table
    fires, silent = set(), set()
    for tf in sorted((root / "deploy/prometheus/tests").glob("*.yml")):
        for t in yaml.safe_load(tf.read_text()).get("tests", []):
            for a in t.get("alert_rule_test", []) or []:
                (fires if a.get("exp_alerts") else silent).add(a["alertname"])
    for a in sorted(alerts):
        if a not in fires:
            fail(f"alert {a}: no unit test where it fires")
        if a not in silent:
            fail(f"alert {a}: no unit test where it must stay silent")
        if a not in alerts_doc:
            fail(f"alert {a}: missing from the alert table of docs/metrics.md")
    for a in sorted(alerts_doc - set(alerts)):
        fail(f"docs/metrics.md lists alert {a}, which the rules file does not define")

    # 2. dashboards
    uids, titles, exprs = {}, {}, []
    boards = sorted((root / "dashboards").glob("*.json"))
    if not boards:
        fail("dashboards/: no *.json")
    for bp in boards:
        try:
            board = json.loads(bp.read_text())
        except ValueError as e:
            fail(f"{bp.name}: invalid JSON: {e}")
            continue
        for key in ("uid", "title", "schemaVersion", "panels"):
            if key not in board:
                fail(f"{bp.name}: no {key}")
        uid = board.get("uid")
        if uid in uids:
            fail(f"{bp.name}: uid {uid} also used by {uids[uid]}")
        uids[uid] = bp.name
        titles[bp.name] = set()
        ids = set()
        for p in panels_of(board):
            titles[bp.name].add(p.get("title"))
            if p.get("id") in ids:
                fail(f"{bp.name}: duplicate panel id {p.get('id')}")
            ids.add(p.get("id"))
            if p.get("type") in ("row", "text"):
                continue
            targets = p.get("targets") or []
            if not targets:
                fail(f"{bp.name}: panel {p.get('title')!r} has no query")
            for t in targets:
                if (t.get("datasource") or {}).get("type") == "grafana-postgresql-datasource":
                    # SQL on gridmeter serve: run against the demo's tables by
                    # dashboards/check_sql_panels.py (gridmeter/tests/serve.rs).
                    if not t.get("rawSql"):
                        fail(f"{bp.name}: panel {p.get('title')!r} has an empty SQL query")
                    continue
                expr = t.get("expr", "")
                if not expr:
                    fail(f"{bp.name}: panel {p.get('title')!r} has an empty query")
                    continue
                exprs.append((f"{bp.name}: {p.get('title')}", expr))
                for n in metric_names(grafana_to_promql(expr)):
                    if not known(n, metrics, recording):
                        fail(f"{bp.name}: panel {p.get('title')!r} uses {n}, not in docs/metrics.md")
    if args.promtool and exprs:
        with tempfile.TemporaryDirectory() as td:
            f = Path(td) / "dashboards.rules.yml"
            rs = [{"record": f"dashboard:expr_{i}", "expr": grafana_to_promql(e)} for i, (_, e) in enumerate(exprs)]
            f.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rs}]}))
            r = subprocess.run([args.promtool, "check", "rules", str(f)], capture_output=True, text=True)
            if r.returncode != 0:
                out = r.stdout + r.stderr
                for i, (where, e) in enumerate(exprs):
                    if f"\"dashboard:expr_{i}\"" in out:
                        fail(f"{where}: PromQL does not parse: {e}")
                fail("dashboard queries: promtool check rules failed:\n" + out.strip())
    elif not args.promtool:
        warnings.append("promtool not found: dashboard PromQL syntax not checked")

    # 5. "used by" references
    for name, cell in used_by:
        for code, title in re.findall(r'\b(PH|FL|US)(?:/(?:PH|FL|US))? "([^"]+)"', cell):
            board = DASHBOARD_CODES[code]
            if title not in titles.get(board, set()):
                fail(f"docs/metrics.md: {name} is said to be used by {code} panel {title!r}, which {board} lacks")
        for a in re.findall(r"\b(Gridmeter[A-Za-z]+)", cell):
            if a not in alerts:
                fail(f"docs/metrics.md: {name} is said to be used by alert {a}, which does not exist")

    # 6. the components' code
    code_names = {}
    for src in sorted(root.glob("*/src/**/*.rs")):
        for m in re.finditer(r'"(gridmeter_[a-z0-9_]+)"', src.read_text(errors="replace")):
            code_names.setdefault(m.group(1), set()).add(str(src.relative_to(root)))
    report = errors if args.strict_code else warnings
    for n in sorted(set(code_names) - set(metrics)):
        if any(n.startswith(p) for p in ("gridmeter_core", "gridmeter_agent::", "gridmeter_collector::")):
            continue
        if re.match(r"gridmeter_(agent|collector|aggregator|billing)_", n):
            report.append(f"code registers {n} ({', '.join(sorted(code_names[n]))}), not in docs/metrics.md")
    for n in sorted(set(metrics) - set(code_names)):
        report.append(f"docs/metrics.md lists {n}; no component source names it (yet)")

    for w in warnings:
        print(f"  warning: {w}")
    for e in errors:
        print(f"  FAIL: {e}")
    print(f"  catalogue: {len(metrics)} metrics, {len(recording)} recording rules, {len(alerts)} alerts "
          f"(all unit-tested both ways: {not any('unit test' in e for e in errors)}); "
          f"dashboards: {len(boards)} with {len(exprs)} queries")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
