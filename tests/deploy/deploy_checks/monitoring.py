"""Checks of deploy/monitoring: the Grafana dashboard, the alert rules, their PrometheusRule."""
import json
import re
from pathlib import Path

import yaml

from .common import load_yaml_stream

# Metric families the daemons export (issue 5, "Observability"), and `up`.
COUNTERS = {"cleave_requests_total", "cleave_wire_bytes_total",
            "cleave_federated_updates_total", "cleave_curve_refused_total"}


HISTOGRAMS = {"cleave_queue_seconds", "cleave_compute_seconds", "cleave_batch_size",
              "cleave_federated_round_duration_seconds"}


GAUGES = {"cleave_pending_requests", "cleave_model_version", "cleave_connected_edges",
          "cleave_federated_round", "cleave_federated_dp_epsilon"}


SERIES = (COUNTERS | GAUGES | {"up"} |
          {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")})


OUTCOMES = {"exit", "offload", "degraded", "rejected", "error", "ok", "overloaded"}


PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                   "group_left", "group_right", "inf", "nan", "Inf", "NaN", "atan2"}


def promql_metrics(expr):
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"\{[^}]*\}", " ", s)                      # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)                     # ranges, subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{?[A-Za-z_]\w*(?::\w+)?\}?", " ", s)  # Grafana variables
    s = re.sub(r"\boffset\s+\S+", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end():].lstrip().startswith("(") or m.group(0) in PROMQL_KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def promql_outcomes(expr):
    """Values `outcome` is matched against (=, =~ with plain alternations)."""
    values = set()
    for op, v in re.findall(r'\boutcome\s*(=~|=)\s*"([^"]*)"', expr):
        values |= set(v.split("|")) if op == "=~" else {v}
    return values


def check_expr(expr, where, problems):
    if not expr or not expr.strip():
        problems.append(f"{where}: empty expression")
        return
    unknown = promql_metrics(expr) - SERIES
    if unknown:
        problems.append(f"{where}: reads unknown metric(s) {sorted(unknown)}")
    bad_outcomes = promql_outcomes(expr) - OUTCOMES
    if bad_outcomes:
        problems.append(f"{where}: outcome value(s) {sorted(bad_outcomes)} are never exported")


def dashboard_panels(panels):
    for p in panels:
        yield p
        yield from dashboard_panels(p.get("panels") or [])


def check_dashboard(dash, problems):
    where = "cleave-dashboard.json"
    if not dash.get("title") or not dash.get("uid"):
        problems.append(f"{where}: needs a title and a uid")
    ids = set()
    exprs = 0
    for p in dashboard_panels(dash.get("panels") or []):
        pw = f"{where} panel {p.get('id')} '{p.get('title')}'"
        if p.get("id") in ids:
            problems.append(f"{pw}: duplicate panel id")
        ids.add(p.get("id"))
        if "gridPos" not in p:
            problems.append(f"{pw}: no gridPos")
        if p.get("type") == "row":
            continue
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{pw}: no queries")
        ds = (p.get("datasource") or {}).get("uid")
        if ds != "${datasource}":
            problems.append(f"{pw}: datasource is not the ${{datasource}} variable")
        for t in targets:
            exprs += 1
            check_expr(t.get("expr"), f"{pw} query {t.get('refId')}", problems)
    for v in (dash.get("templating") or {}).get("list") or []:
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.match(r"^\s*label_values\((.*?)(?:,\s*\w+)?\)\s*$", q or "")
        if m and "," in q:
            check_expr(m.group(1), f"{where} variable {v.get('name')}", problems)
    if exprs == 0:
        problems.append(f"{where}: no queries at all")


def check_rules_metrics(groups, problems, where="cleave-alerts.yml"):
    names = set()
    for g in groups:
        for r in g.get("rules") or []:
            name = r.get("alert") or r.get("record")
            if name in names:
                problems.append(f"{where}: rule {name} defined twice")
            names.add(name)
            check_expr(r.get("expr"), f"{where} rule {name}", problems)
            if r.get("alert"):
                if (r.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
                    problems.append(f"{where} rule {name}: severity label missing")
                if not (r.get("annotations") or {}).get("summary"):
                    problems.append(f"{where} rule {name}: no summary annotation")


def check_monitoring(root):
    problems = []
    mon = root / "deploy/monitoring"
    try:
        dash = json.loads((mon / "cleave-dashboard.json").read_text())
    except json.JSONDecodeError as e:
        return [f"cleave-dashboard.json: not JSON: {e}"]
    check_dashboard(dash, problems)
    groups = yaml.safe_load((mon / "cleave-alerts.yml").read_text())["groups"]
    check_rules_metrics(groups, problems)
    # The PrometheusRule in the base must carry the same groups (one source of truth).
    pr = load_yaml_stream(root / "deploy/k8s/base/prometheusrule.yaml")[0]
    if pr["spec"]["groups"] != groups:
        problems.append("deploy/k8s/base/prometheusrule.yaml differs from cleave-alerts.yml "
                        "(regenerate: tests/deploy/check_manifests.py sync-rules)")
    return problems


class _BlockDumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper, data):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockDumper.add_representer(str, _str_presenter)


def sync_rules(root):
    groups = yaml.safe_load((root / "deploy/monitoring/cleave-alerts.yml").read_text())["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "cleave"},
        "spec": {"groups": groups},
    }
    header = ("# GENERATED from deploy/monitoring/cleave-alerts.yml - do not edit; change the\n"
              "# rule file and run: python3 tests/deploy/check_manifests.py sync-rules\n"
              "# (tests/deploy/render_test.sh fails while the two differ.)\n")
    body = yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, width=4096,
                     default_flow_style=False, allow_unicode=True)
    out = root / "deploy/k8s/base/prometheusrule.yaml"
    out.write_text(header + body)
    print(f"wrote {out}")


def dashboard_rules(root, out):
    """Writes each dashboard query as a recording rule (Grafana variables replaced)."""
    dash = json.loads((root / "deploy/monitoring/cleave-dashboard.json").read_text())
    values = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$job": ".*"}
    rules = []
    for p in dashboard_panels(dash.get("panels") or []):
        for t in p.get("targets") or []:
            expr = t["expr"]
            for var, value in values.items():
                expr = expr.replace(var, value)
            rules.append({"record": f"cleave_dashboard:panel_{p['id']}_{t['refId']}",
                          "expr": expr})
    Path(out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]},
                                        sort_keys=False, width=4096))

