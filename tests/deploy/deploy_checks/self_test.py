"""Self-test: every deliberate break of the rendered objects, the dashboard or the rules
must be reported, with the reason expected (so a check that passes everything fails here)."""
import copy
import json

import yaml

from .k8s import K8sChecker
from .monitoring import check_dashboard, check_rules_metrics, dashboard_panels, promql_metrics


def find(objs, kind, name=None):
    for o in objs:
        if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name):
            return o
    raise LookupError(f"{kind}/{name} not rendered")


def main_container(objs, kind, name):
    return find(objs, kind, name)["spec"]["template"]["spec"]["containers"][0]


def pod_spec(objs, kind, name):
    return find(objs, kind, name)["spec"]["template"]["spec"]


def set_flag(container, flag, value):
    args = container["args"]
    args[args.index(flag) + 1] = value


def set_config(objs, cm_prefix, key, old, new):
    for cm in objs:
        if cm.get("kind") == "ConfigMap" and cm["metadata"]["name"].startswith(cm_prefix):
            text = cm["data"][key]
            if old not in text:
                raise LookupError(f"'{old}' not in {key}")
            cm["data"][key] = text.replace(old, new, 1)
            return
    raise LookupError(cm_prefix)


# (what is broken, a phrase the problem report must contain, how to break it)
K8S_BREAKS = [
    ("Deployment selector no longer matches its pods", "does not match its pod labels",
     lambda o: find(o, "Deployment", "cleave-cloud")["spec"]["selector"]["matchLabels"]
     .update({"app.kubernetes.io/name": "cleave-tail"})),
    ("Service selector matches no pod", "matches no pod template",
     lambda o: find(o, "Service", "cleave-cloud")["spec"]["selector"]
     .update({"app.kubernetes.io/name": "cleave-clouds"})),
    ("Service targets a port the pods lack", "pods do not expose",
     lambda o: find(o, "Service", "cleave-aggregator")["spec"]["ports"][0]
     .update({"targetPort": "router"})),
    ("readiness probe on a port that does not exist", "readinessProbe port",
     lambda o: main_container(o, "Deployment", "cleave-cloud")["readinessProbe"]["httpGet"]
     .update({"port": "metrics"})),
    ("liveness probe removed", "no livenessProbe",
     lambda o: main_container(o, "StatefulSet", "cleave-aggregator").pop("livenessProbe")),
    ("memory limit removed", "no resources.limits.memory",
     lambda o: main_container(o, "StatefulSet", "cleave-aggregator")["resources"]["limits"]
     .pop("memory")),
    ("init container without resources", "install-keys: no resources",
     lambda o: pod_spec(o, "Deployment", "cleave-cloud")["initContainers"][0].pop("resources")),
    ("Secret volume names a Secret that is not rendered", "which is not rendered",
     lambda o: [v for v in pod_spec(o, "Deployment", "cleave-cloud")["volumes"]
                if "secret" in v][0]["secret"].update({"secretName": "cleave-cloud-kys"})),
    ("Secret volume mounted by no container", "is mounted by no container",
     lambda o: pod_spec(o, "StatefulSet", "cleave-aggregator")["initContainers"][0]
     ["volumeMounts"].pop(0)),
    ("Secret volume with a writable mode", "read-only defaultMode",
     lambda o: [v for v in pod_spec(o, "Deployment", "cleave-cloud")["volumes"]
                if "secret" in v][0]["secret"].update({"defaultMode": 0o644})),
    ("ServiceMonitor selector matches no Service", "matches no Service's labels",
     lambda o: find(o, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
     .update({"cleave-scrape": "yes"})),
    ("ServiceMonitor endpoint port missing on the Service", "is not a port name of",
     lambda o: find(o, "ServiceMonitor")["spec"]["endpoints"][0].update({"port": "metrics"})),
    ("HPA targets a Deployment that does not exist", "which is not rendered",
     lambda o: find(o, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
     .update({"name": "cleave-tail"})),
    ("Deployment sets replicas under an HPA", "sets spec.replicas",
     lambda o: find(o, "Deployment", "cleave-cloud")["spec"].update({"replicas": 3})),
    ("PDB selects nothing", "matches no workload",
     lambda o: find(o, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
     .update({"app.kubernetes.io/name": "cleave"})),
    ("default-deny NetworkPolicy removed", "no default-deny NetworkPolicy",
     lambda o: o.remove(find(o, "NetworkPolicy", "default-deny-all"))),
    ("admin port opened to everyone", "admin port is open to every source",
     lambda o: find(o, "NetworkPolicy", "cleave-cloud-ingress")["spec"]["ingress"][1].pop("from")),
    ("pod may run as root", "runAsNonRoot is not true",
     lambda o: pod_spec(o, "StatefulSet", "cleave-aggregator")["securityContext"]
     .update({"runAsNonRoot": False})),
    ("writable root filesystem", "readOnlyRootFilesystem is not true",
     lambda o: main_container(o, "Deployment", "cleave-cloud")["securityContext"]
     .update({"readOnlyRootFilesystem": False})),
    ("aggregator scaled to two replicas", "exactly one replica",
     lambda o: find(o, "StatefulSet", "cleave-aggregator")["spec"].update({"replicas": 2})),
    ("unknown key in cloud.toml", "unknown config key 'cloud.max_batch_delay_us'",
     lambda o: set_config(o, "cleave-cloud-config", "cloud.toml", "[cloud]",
                          "[cloud]\nmax_batch_delay_us = 500")),
    ("admin port bound to loopback only", "binds 127.0.0.1",
     lambda o: set_config(o, "cleave-cloud-config", "cloud.toml", 'admin_listen = "0.0.0.0:',
                          'admin_listen = "127.0.0.1:')),
    ("ROUTER port differs from the containerPort", "uses port 5571",
     lambda o: set_config(o, "cleave-aggregator-config", "aggregator.toml",
                          '"tcp://0.0.0.0:5570"', '"tcp://0.0.0.0:5571"')),
    ("config names a key file that is not mounted", "has no 'allowed'",
     lambda o: set_config(o, "cleave-aggregator-config", "aggregator.toml",
                          '"/etc/cleave/keys/allow-list"', '"/etc/cleave/keys/allowed"')),
    ("aggregator publishes unsigned bundles", "publish unsigned bundles",
     lambda o: set_config(o, "cleave-aggregator-config", "aggregator.toml",
                          'signing_key = "', '# signing_key = "')),
    ("signing key on an emptyDir no init container fills", "that no init container fills",
     lambda o: pod_spec(o, "StatefulSet", "cleave-aggregator")["initContainers"][0]["command"]
     .remove("/run/cleave-secret/bundle-signer.key")),
    ("no writable /tmp", "no emptyDir at /tmp",
     lambda o: main_container(o, "Deployment", "cleave-cloud")["volumeMounts"].remove(
         next(m for m in main_container(o, "Deployment", "cleave-cloud")["volumeMounts"]
              if m["mountPath"] == "/tmp"))),
    ("flag value of the wrong type", "is not of type int",
     lambda o: set_flag(main_container(o, "StatefulSet", "cleave-aggregator"),
                        "--aggregator.threads", "four")),
    ("PrometheusRule out of sync with the rule file", "groups differ",
     lambda o: find(o, "PrometheusRule")["spec"]["groups"][0]["rules"].pop()),
]


def self_test_k8s(objects, root, external):
    problems = []
    base = K8sChecker(copy.deepcopy(objects), root, external).run()
    if base:
        return [f"self-test: the unbroken objects already have problems: {base[0]}"]
    for what, expected, breaker in K8S_BREAKS:
        objs = copy.deepcopy(objects)
        try:
            breaker(objs)
        except (LookupError, IndexError, KeyError) as e:
            problems.append(f"self-test: cannot apply '{what}': {e!r}")
            continue
        found = K8sChecker(objs, root, external).run()
        if not any(expected in p for p in found):
            problems.append(f"self-test: not caught: {what} (reported: {found or 'nothing'})")
    return problems


def self_test_monitoring(root):
    problems = []
    dash = json.loads((root / "deploy/monitoring/cleave-dashboard.json").read_text())
    groups = yaml.safe_load((root / "deploy/monitoring/cleave-alerts.yml").read_text())["groups"]
    cases = [  # (what is broken, a phrase the report must contain, how to break it)
        ("dashboard reads an unknown metric", "unknown metric",
         lambda d, g: next(p for p in dashboard_panels(d["panels"]) if p.get("targets"))
         ["targets"][0].update({"expr": "sum(rate(cleave_cloud_requests_total[5m]))"})),
        ("dashboard matches an outcome that is never exported", "never exported",
         lambda d, g: next(p for p in dashboard_panels(d["panels"]) if p.get("targets"))
         ["targets"][0].update(
             {"expr": 'sum(rate(cleave_requests_total{outcome="timeout"}[5m]))'})),
        ("alert reads an unknown metric", "unknown metric",
         lambda d, g: g[0]["rules"][0].update({"expr": "cleave_up == 0"})),
        ("alert without severity", "severity label missing",
         lambda d, g: g[0]["rules"][0]["labels"].pop("severity")),
    ]
    for what, expected, breaker in cases:
        d, g = copy.deepcopy(dash), copy.deepcopy(groups)
        breaker(d, g)
        found = []
        check_dashboard(d, found)
        check_rules_metrics(g, found)
        if not any(expected in p for p in found):
            problems.append(f"self-test: not caught: {what} (reported: {found or 'nothing'})")
    # The PromQL reader itself.
    expr = ('histogram_quantile(0.99, sum by (le, job) (rate(cleave_queue_seconds_bucket'
            '{job=~"$job", outcome="ok"}[$__rate_interval]))) / on (job) group_left '
            'cleave_pending_requests > 1e-3 and up offset 5m')
    got = promql_metrics(expr)
    if got != {"cleave_queue_seconds_bucket", "cleave_pending_requests", "up"}:
        problems.append(f"self-test: promql_metrics read {sorted(got)}")
    return problems, len(cases)

