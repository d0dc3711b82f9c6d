"""Checks of deploy/edge: the gateway's edge.toml and its systemd unit."""
import re

from .common import check_toml, read_schema


def check_edge(root):
    problems = []
    edge = root / "deploy/edge"
    schema = read_schema(root, "cleave-edge")
    flat = check_toml((edge / "edge.toml").read_text(), schema, "deploy/edge/edge.toml", problems)
    if not flat.get("edge.admin_listen"):
        problems.append("deploy/edge/edge.toml: edge.admin_listen is not set")
    unit = (edge / "cleave-edge.service").read_text()
    directives = {}
    for line in unit.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line.strip())
        if m:
            directives.setdefault(m.group(1), []).append(m.group(2).strip())
    exec_start = (directives.get("ExecStart") or [""])[-1].split()
    if exec_start[:2] != ["/usr/bin/cleave-edge", "serve"] or \
            "--config" not in exec_start or \
            exec_start[exec_start.index("--config") + 1:][:1] != ["/etc/cleave/edge.toml"]:
        problems.append("cleave-edge.service: ExecStart is not "
                        "/usr/bin/cleave-edge serve --config /etc/cleave/edge.toml")
    required = {"User": None, "NoNewPrivileges": "yes", "ProtectSystem": "strict",
                "ProtectHome": "yes", "PrivateTmp": "yes", "CapabilityBoundingSet": "",
                "RestrictAddressFamilies": None, "MemoryMax": None, "Restart": "on-failure",
                "StateDirectory": "cleave", "ConfigurationDirectory": "cleave",
                "SystemCallFilter": None}
    for key, value in required.items():
        got = directives.get(key)
        if not got or (value is not None and got[-1] != value):
            wanted = "..." if value is None else value
            problems.append(f"cleave-edge.service: needs {key}={wanted}")
    # libtorch's oneDNN kernels are generated at run time (JIT): W^X would kill int8 inference.
    if directives.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        problems.append("cleave-edge.service: MemoryDenyWriteExecute=yes breaks oneDNN's "
                        "JIT kernels")
    for key, value in flat.items():
        if isinstance(value, str) and value.startswith("/var/lib/") and \
                not value.startswith("/var/lib/cleave/"):
            problems.append(f"edge.toml: {key} = {value} is outside StateDirectory /var/lib/cleave")
    return problems

