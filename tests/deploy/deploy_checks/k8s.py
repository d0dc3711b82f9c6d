"""Checks of the objects `kubectl kustomize` renders from deploy/k8s/overlays/<env>."""
import re

import yaml

from .common import (SCHEMA_SOURCES, all_containers, check_toml, container_has_port, ident,
                     named_port, pod_has_port, pod_templates, quantity, read_schema,
                     selector_empty, selector_matches)


NAMESPACED_EXEMPT = {"Namespace"}


def flag_value_ok(kind, text):
    """Whether a command-line value parses as the key's ConfigType."""
    try:
        if kind == "kInt":
            int(text)
        elif kind == "kDouble":
            float(text)
        elif kind == "kBool":
            return text.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off")
    except ValueError:
        return False
    return True


def files_written(init_container):
    """Paths an init container names as files it writes: every argument (as in
    `install SRC DEST`), plus DIR/<name of each source> for `install -t DIR SRC...`."""
    words = (init_container.get("command") or []) + (init_container.get("args") or [])
    written = set(words)
    if words[:1] == ["install"] and "-t" in words[:-1]:
        target = words[words.index("-t") + 1].rstrip("/")
        written |= {f"{target}/{w.rsplit('/', 1)[-1]}" for w in words[1:]
                    if w.startswith("/") and w.rstrip("/") != target}
    return written


class K8sChecker:
    """Checks a list of rendered objects; run() returns the problems, one sentence each.

    external_secrets: Secrets the operator creates (never rendered). standalone: only the
    per-pod checks, for pod manifests outside a kustomization (deploy/k8s/tools)."""

    def __init__(self, objects, root, external_secrets=(), standalone=False):
        self.objects = [o for o in objects if o]
        self.root = root
        self.external_secrets = set(external_secrets)
        self.standalone = standalone
        self.problems = []
        self.schemas = {d: read_schema(root, d) for d in SCHEMA_SOURCES}

    def bad(self, msg):
        self.problems.append(msg)

    def of_kind(self, kind):
        return [o for o in self.objects if o.get("kind") == kind]

    def named(self, kind, name):
        for o in self.of_kind(kind):
            if o["metadata"]["name"] == name:
                return o
        return None

    def run(self):
        pods = pod_templates(self.objects)
        if not pods:
            self.bad("no workloads rendered")
        for owner, spec, labels in pods:
            self.check_pod(owner, spec, labels)
        if self.standalone:
            return self.problems
        self.check_namespace()
        self.check_workloads(pods)
        self.check_services(pods)
        self.check_autoscaling(pods)
        self.check_network_policies(pods)
        self.check_service_monitors()
        self.check_prometheus_rules()
        self.check_external_secrets()
        return self.problems

    # -- namespace ----------------------------------------------------------------------
    def check_namespace(self):
        namespaces = {o.get("metadata", {}).get("namespace") for o in self.objects
                      if o.get("kind") not in NAMESPACED_EXEMPT}
        if len(namespaces) != 1 or None in namespaces:
            self.bad(f"objects are spread over namespaces {sorted(map(str, namespaces))}; "
                     "an overlay puts all of them in one")
            return
        ns = namespaces.pop()
        obj = self.named("Namespace", ns)
        if obj is None:
            self.bad(f"namespace {ns} is used but no Namespace object is rendered")
        elif (obj["metadata"].get("labels") or {}).get(
                "pod-security.kubernetes.io/enforce") != "restricted":
            self.bad(f"Namespace/{ns} does not enforce the restricted Pod Security Standard")

    # -- one pod template ----------------------------------------------------------------
    def check_pod(self, owner, spec, labels):
        where = ident(owner)
        if spec.get("automountServiceAccountToken") is not False:
            self.bad(f"{where}: automountServiceAccountToken is not false (no daemon uses the API)")
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                self.bad(f"{where}: {flag} is set")
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        claim_templates = {t["metadata"]["name"]
                           for t in owner.get("spec", {}).get("volumeClaimTemplates") or []}
        long_running = owner.get("kind") in ("Deployment", "StatefulSet", "DaemonSet")
        mounted = set()
        for role, c in all_containers(spec):
            cw = f"{where} container {c.get('name')}"
            self.check_security(cw, spec.get("securityContext") or {}, c)
            self.check_image_and_resources(cw, c)
            self.check_probes(cw, c, required=role == "main" and long_running)
            for m in c.get("volumeMounts") or []:
                mounted.add(m["name"])
                if m["name"] not in volumes and m["name"] not in claim_templates:
                    self.bad(f"{cw}: mounts undefined volume '{m['name']}'")
            if role == "main" and long_running:
                tmp = self.mount_covering(c, "/tmp/x")
                if tmp is None or "emptyDir" not in volumes.get(tmp["name"], {}):
                    self.bad(f"{cw}: no emptyDir at /tmp (the root filesystem is read-only)")
            self.check_daemon_config(where, spec, c, volumes)
        for name, v in volumes.items():
            if name not in mounted:
                self.bad(f"{where}: volume '{name}' is mounted by no container")
            self.check_volume_source(where, v)
        for name in claim_templates:
            if name not in mounted:
                self.bad(f"{where}: volumeClaimTemplate '{name}' is mounted by no container")

    def check_security(self, cw, psc, c):
        """Effective settings: the container's securityContext wins over the pod's."""
        csc = c.get("securityContext") or {}
        if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            self.bad(f"{cw}: runAsNonRoot is not true")
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        if uid is None or uid == 0:
            self.bad(f"{cw}: runAsUser must be a non-zero uid (got {uid})")
        seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            self.bad(f"{cw}: seccompProfile is not RuntimeDefault")
        if csc.get("allowPrivilegeEscalation") is not False:
            self.bad(f"{cw}: allowPrivilegeEscalation is not false")
        if csc.get("readOnlyRootFilesystem") is not True:
            self.bad(f"{cw}: readOnlyRootFilesystem is not true")
        if csc.get("privileged"):
            self.bad(f"{cw}: privileged")
        caps = csc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            self.bad(f"{cw}: capabilities do not drop ALL")
        if caps.get("add"):
            self.bad(f"{cw}: adds capabilities {caps['add']}")

    def check_image_and_resources(self, cw, c):
        image = c.get("image", "")
        last = image.rsplit("/", 1)[-1]
        if not image or ("@" not in last and (":" not in last or last.endswith(":latest"))):
            self.bad(f"{cw}: image '{image}' has no version tag")
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(kind) or {}):
                    self.bad(f"{cw}: no resources.{kind}.{r}")
        for r in ("cpu", "memory"):
            req, lim = (res.get("requests") or {}).get(r), (res.get("limits") or {}).get(r)
            try:
                if req is not None and lim is not None and quantity(req) > quantity(lim):
                    self.bad(f"{cw}: {r} request {req} exceeds its limit {lim}")
            except ValueError as e:
                self.bad(f"{cw}: {e}")

    def check_probes(self, cw, c, required):
        if required:
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    self.bad(f"{cw}: no {probe}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            handler = next((h for h in ((c.get(probe) or {}).get(k)
                                        for k in ("httpGet", "tcpSocket", "grpc")) if h), None)
            if handler is None:
                continue
            port = handler.get("port")
            if not container_has_port(c, port):
                self.bad(f"{cw}: {probe} port {port!r} is not a containerPort of the container")

    def check_volume_source(self, where, v):
        if "secret" in v:
            s = v["secret"]
            name = s.get("secretName")
            mode = s.get("defaultMode")
            if mode is None or mode & 0o333:
                self.bad(f"{where}: Secret volume '{v['name']}' needs a read-only defaultMode "
                         f"(0400/0440/0444), got {mode if mode is None else oct(mode)}")
            secret = self.named("Secret", name)
            if secret is None:
                if name not in self.external_secrets:
                    self.bad(f"{where}: volume '{v['name']}' needs Secret '{name}', which is "
                             "not rendered (nor listed as created by the operator)")
                return
            keys = set(secret.get("data") or {}) | set(secret.get("stringData") or {})
            for item in s.get("items") or []:
                if item["key"] not in keys:
                    self.bad(f"{where}: volume '{v['name']}' wants key '{item['key']}' that "
                             f"Secret/{name} does not have")
        elif "configMap" in v:
            name = v["configMap"].get("name")
            if self.named("ConfigMap", name) is None and not self.standalone:
                self.bad(f"{where}: volume '{v['name']}' needs ConfigMap '{name}', not rendered")
        elif "persistentVolumeClaim" in v:
            name = v["persistentVolumeClaim"].get("claimName")
            if self.named("PersistentVolumeClaim", name) is None and not self.standalone:
                self.bad(f"{where}: volume '{v['name']}' needs PersistentVolumeClaim '{name}', "
                         "not rendered")

    # -- the daemon's TOML config against its schema and the pod --------------------------
    def check_daemon_config(self, where, spec, c, volumes):
        daemon = c.get("name")
        args = c.get("args") or []
        if daemon not in self.schemas or "--config" not in args:
            return
        cw = f"{where} container {daemon}"
        schema = self.schemas[daemon]
        i = args.index("--config")
        if i + 1 >= len(args):
            self.bad(f"{cw}: --config without a path")
            return
        path = args[i + 1]
        flat = {}
        mount = self.mount_covering(c, path)
        text = None
        if mount is None:
            self.bad(f"{cw}: config file {path} is not mounted")
        else:
            vol = volumes.get(mount["name"], {})
            key = mount.get("subPath") or path[len(mount["mountPath"]):].lstrip("/")
            cm = self.named("ConfigMap", (vol.get("configMap") or {}).get("name"))
            if cm is None:
                self.bad(f"{cw}: config file {path} does not come from a rendered ConfigMap")
            elif key not in (cm.get("data") or {}):
                self.bad(f"{cw}: ConfigMap/{cm['metadata']['name']} has no key '{key}' for {path}")
            else:
                text = cm["data"][key]
        if text is not None:
            flat = check_toml(text, schema, f"{cw} {path}", self.problems)
        # Flags (--section.key value or --section.key=value) override the file.
        j = 0
        while j < len(args):
            a = args[j]
            if a == "--config":
                j += 2
                continue
            if a.startswith("--"):
                key, eq, value = a[2:].partition("=")
                if not eq and j + 1 < len(args):
                    value = args[j + 1]
                    j += 1
                if key not in schema:
                    self.bad(f"{cw}: unknown flag {a}")
                elif not flag_value_ok(schema[key], value):
                    kind = schema[key][1:].lower()
                    self.bad(f"{cw}: flag --{key} {value!r} is not of type {kind}")
                else:
                    flat[key] = value
            j += 1
        # Paths in the config must exist in the pod.
        for key, value in flat.items():
            if not isinstance(value, str) or not value.startswith("/"):
                continue
            if value.startswith("/usr/"):
                continue  # shipped in the image
            self.check_config_path(cw, spec, c, volumes, key, value)
        # Ports: bound on all interfaces, and the ones the pod declares.
        for key, value in flat.items():
            if not isinstance(value, str):
                continue
            if key.endswith(".listen"):
                m = re.match(r"^tcp://([^:]+):(\d+)$", value)
                if not m:
                    self.bad(f"{cw}: {key} = {value!r} is not tcp://host:port")
                    continue
                self.check_bind(cw, c, key, m.group(1), int(m.group(2)), "zmq")
            elif key.endswith(".admin_listen"):
                m = re.match(r"^([^:]+):(\d+)$", value)
                if not m:
                    self.bad(f"{cw}: {key} = {value!r} is not host:port")
                    continue
                self.check_bind(cw, c, key, m.group(1), int(m.group(2)), "admin")
        # A daemon that publishes bundles signs them: cloud and edges refuse unsigned ones.
        section = daemon.split("-", 1)[1]
        if flat.get(f"{section}.publish_dir") and not flat.get(f"{section}.signing_key"):
            self.bad(f"{cw}: {section}.publish_dir is set without {section}.signing_key: it "
                     "would publish unsigned bundles, which cloud and edges refuse")
        uses_admin = any((c.get(p) or {}).get("httpGet", {}).get("port") == "admin"
                         for p in ("startupProbe", "readinessProbe", "livenessProbe"))
        admin_key = daemon.split("-", 1)[1] + ".admin_listen"
        if uses_admin and not flat.get(admin_key):
            self.bad(f"{cw}: probes use the admin port but {admin_key} is not set")

    def check_bind(self, cw, c, key, host, port, port_name):
        if host not in ("0.0.0.0", "*", "::", "[::]"):
            self.bad(f"{cw}: {key} binds {host}, unreachable from outside the pod")
        declared = named_port(c, port_name)
        if declared != port:
            self.bad(f"{cw}: {key} uses port {port} but containerPort '{port_name}' is {declared}")

    @staticmethod
    def mount_covering(c, path):
        best = None
        for m in c.get("volumeMounts") or []:
            mp = m["mountPath"].rstrip("/")
            if path == mp or path.startswith(mp + "/"):
                if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                    best = m
        return best

    def check_config_path(self, cw, spec, c, volumes, key, path):
        mount = self.mount_covering(c, path)
        if mount is None:
            self.bad(f"{cw}: {key} = {path} is on no volume (read-only root filesystem)")
            return
        vol = volumes.get(mount["name"])
        if vol is None:
            return  # a volumeClaimTemplate: contents are runtime state
        rel = path[len(mount["mountPath"].rstrip("/")):].lstrip("/")
        if "secret" in vol:
            items = vol["secret"].get("items")
            if items is not None:
                names = {i["path"] for i in items}
            else:
                secret = self.named("Secret", vol["secret"].get("secretName")) or {}
                names = set((secret.get("data") or {}).keys()) or {rel}
            if rel not in names:
                self.bad(f"{cw}: {key} = {path}, but the Secret volume there has no '{rel}'")
        elif "emptyDir" in vol:
            # Filled at start-up: some init container must write exactly this path.
            writers = [ic for ic in spec.get("initContainers") or []
                       if path in files_written(ic)]
            if not writers:
                self.bad(f"{cw}: {key} = {path} lies on emptyDir '{vol['name']}' that no init "
                         "container fills")

    # -- workloads -----------------------------------------------------------------------
    def check_workloads(self, pods):
        hpa_targets = {(h["spec"]["scaleTargetRef"]["kind"], h["spec"]["scaleTargetRef"]["name"])
                       for h in self.of_kind("HorizontalPodAutoscaler")}
        for owner, spec, labels in pods:
            if owner["kind"] == "Pod":
                continue
            where = ident(owner)
            sel = owner["spec"].get("selector")
            if owner["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
                if selector_empty(sel):
                    self.bad(f"{where}: empty selector")
                elif not selector_matches(sel, labels):
                    self.bad(f"{where}: selector {sel} does not match its pod labels {labels}")
            for t in spec.get("topologySpreadConstraints") or []:
                if not selector_matches(t.get("labelSelector"), labels):
                    self.bad(f"{where}: topologySpreadConstraint selects other pods than its own")
            if (owner["kind"], owner["metadata"]["name"]) in hpa_targets and \
                    "replicas" in owner["spec"]:
                self.bad(f"{where}: sets spec.replicas although a HorizontalPodAutoscaler "
                         "scales it (every apply would reset the replica count)")
            if owner["kind"] == "StatefulSet":
                svc = self.named("Service", owner["spec"].get("serviceName"))
                if svc is None:
                    self.bad(f"{where}: serviceName {owner['spec'].get('serviceName')!r} is not "
                             "a rendered Service")
                elif svc["spec"].get("clusterIP") != "None":
                    self.bad(f"{where}: its governing Service {ident(svc)} is not headless")
                if "aggregator" in owner["metadata"]["name"] and owner["spec"].get("replicas") != 1:
                    self.bad(f"{where}: the aggregator must run exactly one replica")
                if not owner["spec"].get("volumeClaimTemplates"):
                    self.bad(f"{where}: no volumeClaimTemplate for its state")

    def check_services(self, pods):
        for svc in self.of_kind("Service"):
            where = ident(svc)
            sel = svc["spec"].get("selector") or {}
            if not sel:
                self.bad(f"{where}: no selector")
                continue
            matched = [(o, s) for o, s, labels in pods
                       if all(labels.get(k) == v for k, v in sel.items())]
            if not matched:
                self.bad(f"{where}: selector {sel} matches no pod template")
            for p in svc["spec"].get("ports") or []:
                target = p.get("targetPort", p.get("port"))
                for o, s in matched:
                    if not pod_has_port(s, target):
                        self.bad(f"{where}: port {p.get('name')} targets {target!r}, which "
                                 f"{ident(o)}'s pods do not expose")

    def check_autoscaling(self, pods):
        for hpa in self.of_kind("HorizontalPodAutoscaler"):
            where = ident(hpa)
            ref = hpa["spec"]["scaleTargetRef"]
            target = self.named(ref["kind"], ref["name"])
            if target is None:
                self.bad(f"{where}: scales {ref['kind']}/{ref['name']}, which is not rendered")
                continue
            lo, hi = hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
            if not 1 <= lo <= hi:
                self.bad(f"{where}: minReplicas {lo} / maxReplicas {hi} make no sense")
            for m in hpa["spec"].get("metrics") or []:
                if m.get("type") == "Resource" and m["resource"]["name"] == "cpu":
                    for c in target["spec"]["template"]["spec"]["containers"]:
                        if "cpu" not in (c.get("resources", {}).get("requests") or {}):
                            self.bad(f"{where}: CPU utilisation needs a cpu request on "
                                     f"{ident(target)} container {c['name']}")
        for pdb in self.of_kind("PodDisruptionBudget"):
            where = ident(pdb)
            sel = pdb["spec"].get("selector")
            owners = [o for o, s, labels in pods if selector_matches(sel, labels)]
            if selector_empty(sel) or not owners:
                self.bad(f"{where}: selector {sel} matches no workload")
                continue
            if ("minAvailable" in pdb["spec"]) == ("maxUnavailable" in pdb["spec"]):
                self.bad(f"{where}: set exactly one of minAvailable and maxUnavailable")
            min_available = pdb["spec"].get("minAvailable")
            if isinstance(min_available, int):
                for o in owners:
                    replicas = o["spec"].get("replicas", 1)
                    for h in self.of_kind("HorizontalPodAutoscaler"):
                        if h["spec"]["scaleTargetRef"]["name"] == o["metadata"]["name"]:
                            replicas = h["spec"].get("minReplicas", 1)
                    if min_available >= replicas:
                        self.bad(f"{where}: minAvailable {min_available} with {replicas} "
                                 f"replica(s) of {ident(o)} blocks every node drain")

    # -- network policy ------------------------------------------------------------------
    def check_network_policies(self, pods):
        policies = self.of_kind("NetworkPolicy")
        deny = [p for p in policies
                if selector_empty(p["spec"].get("podSelector"))
                and {"Ingress", "Egress"} <= set(p["spec"].get("policyTypes") or [])
                and not p["spec"].get("ingress") and not p["spec"].get("egress")]
        if not deny:
            self.bad("no default-deny NetworkPolicy (empty podSelector, Ingress and Egress, "
                     "no rules)")
        allowed = {}  # owner ident -> set of ports some ingress rule opens
        for pol in policies:
            where = ident(pol)
            sel = pol["spec"].get("podSelector")
            if selector_empty(sel):
                continue
            selected = [(o, s) for o, s, labels in pods if selector_matches(sel, labels)]
            if not selected:
                self.bad(f"{where}: podSelector {sel} matches no pod template")
            for rule in pol["spec"].get("ingress") or []:
                ports = rule.get("ports") or []
                if not ports:
                    self.bad(f"{where}: an ingress rule opens every port")
                for p in ports:
                    port = p.get("port")
                    for o, s in selected:
                        if not pod_has_port(s, port):
                            self.bad(f"{where}: port {port!r} is not a containerPort of {ident(o)}")
                        allowed.setdefault(ident(o), set()).add(port)
                        is_admin = port == "admin" or any(
                            named_port(c, "admin") == port for _, c in all_containers(s))
                        if is_admin and not rule.get("from"):
                            self.bad(f"{where}: the admin port is open to every source")
        for o, s, _ in pods:
            if o["kind"] == "Pod":
                continue
            for _, c in all_containers(s):
                for p in c.get("ports") or []:
                    opened = allowed.get(ident(o), set())
                    if p.get("name") not in opened and p.get("containerPort") not in opened:
                        self.bad(f"{ident(o)}: containerPort {p.get('name')} is closed by the "
                                 "default-deny NetworkPolicy (no ingress rule allows it)")

    # -- monitoring ----------------------------------------------------------------------
    def check_service_monitors(self):
        monitors = self.of_kind("ServiceMonitor")
        if not monitors:
            self.bad("no ServiceMonitor rendered")
        services = self.of_kind("Service")
        scraped = set()
        for sm in monitors:
            where = ident(sm)
            sel = sm["spec"].get("selector")
            matched = [s for s in services
                       if not selector_empty(sel)
                       and selector_matches(sel, s["metadata"].get("labels") or {})]
            if not matched:
                self.bad(f"{where}: selector {sel} matches no Service's labels")
            for ep in sm["spec"].get("endpoints") or []:
                if ep.get("path", "/metrics") != "/metrics":
                    self.bad(f"{where}: endpoint path {ep.get('path')} is not /metrics")
                for s in matched:
                    names = {p.get("name") for p in s["spec"].get("ports") or []}
                    if ep.get("port") not in names:
                        self.bad(f"{where}: endpoint port {ep.get('port')!r} is not a port "
                                 f"name of {ident(s)}")
            scraped |= {s["metadata"]["name"] for s in matched}
        for s in services:
            names = {p.get("name") for p in s["spec"].get("ports") or []}
            if "admin" in names and s["metadata"]["name"] not in scraped:
                self.bad(f"{ident(s)} exposes metrics (port admin) but no ServiceMonitor "
                         "selects it")

    def check_prometheus_rules(self):
        rules_file = self.root / "deploy/monitoring/cleave-alerts.yml"
        want = yaml.safe_load(rules_file.read_text())["groups"]
        found = self.of_kind("PrometheusRule")
        if not found:
            self.bad("no PrometheusRule rendered")
        for pr in found:
            if pr["spec"].get("groups") != want:
                self.bad(f"{ident(pr)}: groups differ from deploy/monitoring/cleave-alerts.yml "
                         "(regenerate: tests/deploy/check_manifests.py sync-rules)")

    def check_external_secrets(self):
        used = set()
        for _, spec, _ in pod_templates(self.objects):
            for v in spec.get("volumes") or []:
                if "secret" in v:
                    used.add(v["secret"].get("secretName"))
        for name in sorted(self.external_secrets):
            if name not in used:
                self.bad(f"external Secret '{name}' is listed but no pod uses it")
            if self.named("Secret", name) is not None:
                self.bad(f"Secret '{name}' is both rendered and listed as created by the operator")

