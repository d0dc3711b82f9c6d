"""Helpers shared by the checks: the daemons' config schemas, TOML, selectors, pods."""
import re
import tomllib
from pathlib import Path

import yaml

# Config keys come from the C++ schemas: `.Add("section.key", ConfigType::kX, ...)`.
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"}


SCHEMA_SOURCES = {
    "cleave-cloud": ["cloud/cloud_config.cc", "cloud/cloud_main.cc"],
    "cleave-aggregator": ["federated/aggregator_config.cc", "federated/aggregator_main.cc", "federated/fl_config.cc"],
    "cleave-edge": ["edge/edge_config.cc", "edge/edge_main.cc"],
}


ADD_RE = re.compile(r'Add\(\s*"([a-z0-9_]+\.[a-z0-9_]+)"\s*,\s*ConfigType::(k[A-Za-z]+)')


def read_schema(root, daemon):
    """{section.key: ConfigType name} of a daemon, read from its C++ sources."""
    keys = {}
    for rel in SCHEMA_SOURCES[daemon]:
        for name, kind in ADD_RE.findall((root / rel).read_text()):
            keys[name] = kind
    if not keys:
        raise KeyError(f"no config keys found in {SCHEMA_SOURCES[daemon]}")
    return keys


def ident(obj):
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def selector_matches(selector, labels):
    """A LabelSelector (matchLabels/matchExpressions) against a label map."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def selector_empty(selector):
    return not (selector or {}).get("matchLabels") and not (selector or {}).get("matchExpressions")


QUANTITY = re.compile(r"^([0-9.]+(?:e[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


SUFFIX = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(value):
    m = QUANTITY.match(str(value))
    if not m:
        raise ValueError(f"not a quantity: {value!r}")
    return float(m.group(1)) * SUFFIX[m.group(2)]


def pod_templates(objects):
    """(owner, pod spec, pod labels) for every workload."""
    out = []
    for o in objects:
        kind = o.get("kind")
        if kind == "Pod":
            out.append((o, o.get("spec", {}), o.get("metadata", {}).get("labels") or {}))
        elif kind in WORKLOAD_KINDS:
            t = o.get("spec", {}).get("template", {})
            out.append((o, t.get("spec", {}), t.get("metadata", {}).get("labels") or {}))
        elif kind == "CronJob":
            t = o["spec"]["jobTemplate"]["spec"]["template"]
            out.append((o, t.get("spec", {}), t.get("metadata", {}).get("labels") or {}))
    return out


def all_containers(spec):
    return [("init", c) for c in spec.get("initContainers") or []] + \
           [("main", c) for c in spec.get("containers") or []]


def container_has_port(container, port):
    for p in container.get("ports") or []:
        if (isinstance(port, str) and p.get("name") == port) or \
           (isinstance(port, int) and p.get("containerPort") == port):
            return True
    return False


def pod_has_port(spec, port):
    return any(container_has_port(c, port) for _, c in all_containers(spec))


def named_port(container, name):
    for p in container.get("ports") or []:
        if p.get("name") == name:
            return p.get("containerPort")
    return None


def toml_assignments_in_comments(text):
    """(section.key) of commented-out `key = value` lines: documentation must stay true."""
    section, out = None, []
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"^\[([a-z0-9_]+)\]", s)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^#\s*([a-z][a-z0-9_]*)\s*=\s*\S", s)
        if m and section:
            out.append(f"{section}.{m.group(1)}")
    return out


def check_toml(text, schema, where, problems):
    """Parses a daemon's TOML config; returns {section.key: value}."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problems.append(f"{where}: not valid TOML: {e}")
        return {}
    flat = {}
    for section, table in doc.items():
        if not isinstance(table, dict):
            problems.append(f"{where}: top-level key '{section}' outside a [section]")
            continue
        for key, value in table.items():
            flat[f"{section}.{key}"] = value
    for key, value in flat.items():
        kind = schema.get(key)
        if kind is None:
            problems.append(f"{where}: unknown config key '{key}' (the daemon refuses to start)")
            continue
        ok = {"kString": isinstance(value, str),
              "kInt": isinstance(value, int) and not isinstance(value, bool),
              "kBool": isinstance(value, bool),
              "kDouble": isinstance(value, (int, float)) and not isinstance(value, bool)}[kind]
        if not ok:
            problems.append(f"{where}: '{key}' = {value!r} is not of type {kind[1:].lower()}")
    for key in toml_assignments_in_comments(text):
        if key not in schema:
            problems.append(f"{where}: commented-out example uses unknown key '{key}'")
    return flat


def load_yaml_stream(path):
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d]


def read_list_file(path):
    if not path:
        return []
    return [l.strip() for l in Path(path).read_text().splitlines()
            if l.strip() and not l.strip().startswith("#")]

