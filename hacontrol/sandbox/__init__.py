"""Local sandbox cluster: real mariadbd nodes and a router (HAProxy, or ProxySQL) on 127.0.0.1.

Python API (tests, the drill): `Sandbox(SandboxSpec(dir=...)).up()`, `.down()`, `.status()`,
`.node_pid(name)`, `.kill_node(name, sig)`, `.start_node(name)`, `.connect(target, role)`.
CLI: `register_cli(subparsers)` adds `hacontrol sandbox up|down|status`.
"""

from hacontrol.sandbox.cli import register_cli
from hacontrol.sandbox.cluster import Sandbox
from hacontrol.sandbox.model import (
    AlreadyRunningError,
    Credentials,
    NodeInfo,
    PortBusyError,
    RouterInfo,
    SandboxError,
    SandboxInfo,
    SandboxSpec,
)
from hacontrol.sandbox.procs import find_free_base_port
from hacontrol.sandbox.render import GRANTS

__all__ = [
    "GRANTS",
    "AlreadyRunningError",
    "Credentials",
    "NodeInfo",
    "PortBusyError",
    "RouterInfo",
    "Sandbox",
    "SandboxError",
    "SandboxInfo",
    "SandboxSpec",
    "find_free_base_port",
    "register_cli",
]
