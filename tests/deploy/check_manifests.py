#!/usr/bin/env python3
"""Checks cleave's deployment files (deploy/) beyond what the tools themselves validate.

  k8s RENDERED [--external-secrets FILE]  objects rendered by `kubectl kustomize <overlay>`
  pods FILE                               stand-alone pod manifests (deploy/k8s/tools)
  monitoring                              dashboard JSON, alert rules, their PrometheusRule
  edge                                    deploy/edge: edge.toml and the systemd unit
  self-test RENDERED [--external-secrets]  breaks objects on purpose; every break must be caught
  sync-rules                              regenerates deploy/k8s/base/prometheusrule.yaml
  dashboard-rules OUT                     the dashboard's queries as recording rules, so that
                                          `promtool check rules OUT` parses their PromQL

Every subcommand takes --source-root (the repository; default: two levels above this file).
The checks live in deploy_checks/ (k8s, monitoring, edge, self_test); render_test.sh runs them.
Exit status: 0 no problems, 1 problems (one line each on stdout), 2 unusable input.
Needs Python >= 3.11 (tomllib) and PyYAML (Debian: python3-yaml).
"""
import argparse
import sys
from pathlib import Path

import yaml

from deploy_checks.common import load_yaml_stream, read_list_file
from deploy_checks.edge import check_edge
from deploy_checks.k8s import K8sChecker
from deploy_checks.monitoring import check_monitoring, dashboard_rules, sync_rules
from deploy_checks.self_test import K8S_BREAKS, self_test_k8s, self_test_monitoring


def default_root():
    return Path(__file__).resolve().parents[2]


def report(name, problems):
    for p in problems:
        print(f"PROBLEM: {p}")
    print(f"{name}: {'FAILED, ' + str(len(problems)) + ' problem(s)' if problems else 'ok'}")
    return 1 if problems else 0


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["k8s", "pods", "monitoring", "edge", "self-test",
                                        "sync-rules", "dashboard-rules"])
    ap.add_argument("file", nargs="?",
                    help="rendered YAML (k8s, pods, self-test) or output (dashboard-rules)")
    ap.add_argument("--source-root", type=Path, default=default_root())
    ap.add_argument("--external-secrets", help="file listing Secrets the operator creates")
    ap.add_argument("--name", help="label for the report line (e.g. the overlay)")
    a = ap.parse_args(argv)
    root = a.source_root.resolve()
    external = read_list_file(a.external_secrets)
    try:
        if a.command == "sync-rules":
            sync_rules(root)
            return 0
        if a.command == "dashboard-rules" and a.file:
            dashboard_rules(root, a.file)
            return 0
        if a.command == "monitoring":
            return report("monitoring", check_monitoring(root))
        if a.command == "edge":
            return report("edge", check_edge(root))
        if not a.file:
            ap.error(f"{a.command} needs a file")
        objects = load_yaml_stream(a.file)
        name = a.name or a.file
        if a.command == "k8s":
            checker = K8sChecker(objects, root, external)
            return report(name, checker.run())
        if a.command == "pods":
            checker = K8sChecker(objects, root, standalone=True)
            return report(name, checker.run())
        problems = self_test_k8s(objects, root, external)
        mon_problems, mon_cases = self_test_monitoring(root)
        problems += mon_problems
        print(f"self-test {name}: {len(K8S_BREAKS)} Kubernetes and {mon_cases} monitoring "
              "breaks applied")
        return report(f"self-test {name}", problems)
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        print(f"ERROR: cannot check {a.command}: {e!r}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
