"""Values describing a sandbox: what to build (spec) and what runs (info, kept in sandbox.json)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

RouterKind = Literal["haproxy", "proxysql"]

DEFAULT_BASE_PORT = 23306  # off 3306 so a sandbox never collides with a real server on the host
HOST = "127.0.0.1"
STATE_FILE = "sandbox.json"
SETTINGS_FILE = "settings.toml"
SECRETS_DIR = "secrets"
HAPROXY_SOCKET = "haproxy.sock"
PROXYSQL_ADMIN_SECRET = "proxysql_admin.password"
ROUTER_DIR = "router"
STATE_DIR = "state"  # the controller's journal, when run with the sandbox's settings


class SandboxError(Exception):
    """A sandbox operation failed; the message is meant for the operator."""


class PortBusyError(SandboxError):
    def __init__(self, port: int, purpose: str) -> None:
        super().__init__(f"port {port} on {HOST} ({purpose}) is already in use")
        self.port = port
        self.purpose = purpose


class AlreadyRunningError(SandboxError):
    def __init__(self, info: SandboxInfo) -> None:
        super().__init__(f"sandbox in {info.dir} is already running; nothing changed")
        self.info = info


@dataclass(frozen=True)
class SandboxSpec:
    """What `up` builds. Ports: nodes base..base+N-1, then writer, reader, router admin."""

    dir: Path
    nodes: int = 3
    base_port: int = DEFAULT_BASE_PORT
    router: RouterKind | None = None  # None: proxysql when on PATH, else haproxy
    cache_dir: Path | None = None  # template datadir cache; None: $XDG_CACHE_HOME/hacontrol
    tls: bool = False  # a CA of its own; TLS to the nodes, replication, ProxySQL admin, API

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 9:
            raise SandboxError(f"--nodes must be between 1 and 9, got {self.nodes}")
        if not 1024 <= self.base_port <= 65535 - self.port_count:
            raise SandboxError(f"--base-port {self.base_port} leaves no room for the sandbox ports")

    @property
    def port_count(self) -> int:
        return self.nodes + 4

    def node_name(self, index: int) -> str:
        return f"node{index + 1}"

    def node_port(self, index: int) -> int:
        return self.base_port + index

    @property
    def writer_port(self) -> int:
        return self.base_port + self.nodes

    @property
    def reader_port(self) -> int:
        return self.base_port + self.nodes + 1

    @property
    def admin_port(self) -> int:
        return self.base_port + self.nodes + 2

    @property
    def api_port(self) -> int:
        """The controller's HTTP API, when run with the sandbox's settings."""
        return self.base_port + self.nodes + 3

    def ports(self) -> list[tuple[int, str]]:
        """Every port the sandbox listens on, with what it is for (for clear busy-port errors)."""
        named = [(self.node_port(i), f"mariadbd {self.node_name(i)}") for i in range(self.nodes)]
        return [
            *named,
            (self.writer_port, "router writer port"),
            (self.reader_port, "router reader port"),
            (self.admin_port, "router admin port"),
            (self.api_port, "controller API port"),
        ]


@dataclass(frozen=True)
class Credentials:
    user: str
    password_file: str

    def password(self) -> str:
        return Path(self.password_file).read_text().strip()  # no trailing newline


@dataclass(frozen=True)
class NodeInfo:
    name: str
    host: str
    port: int
    pid: int | None
    role: str  # role given at `up`: "primary" or "replica" (the controller may change it later)
    server_id: int
    node_dir: str
    config: str  # my.cnf passed with --defaults-file; also marks the process as ours

    @property
    def datadir(self) -> str:
        return str(Path(self.node_dir) / "data")

    @property
    def socket(self) -> str:
        return str(Path(self.node_dir) / "mysqld.sock")


@dataclass(frozen=True)
class RouterInfo:
    kind: RouterKind
    host: str
    writer_port: int
    reader_port: int
    admin: str  # haproxy: the admin socket path; proxysql: "host:port" of the admin interface
    admin_port: int
    pid: int | None
    config: str


@dataclass(frozen=True)
class SandboxInfo:
    dir: str
    settings: str
    nodes: tuple[NodeInfo, ...]
    router: RouterInfo
    users: dict[str, Credentials] = field(default_factory=dict)
    root: Credentials | None = None
    up_seconds: float | None = None
    tls: str | None = None
    """The folder of the sandbox's CA and certificates when it runs with TLS."""

    def node(self, name: str) -> NodeInfo:
        for node in self.nodes:
            if node.name == name:
                return node
        raise SandboxError(f"no node named {name!r} in sandbox {self.dir}")

    @property
    def primary(self) -> NodeInfo:
        return next(n for n in self.nodes if n.role == "primary")

    def with_node_pid(self, name: str, pid: int | None) -> SandboxInfo:
        nodes = tuple(
            NodeInfo(**{**asdict(n), "pid": pid}) if n.name == name else n for n in self.nodes
        )
        return SandboxInfo(**{**self._fields(), "nodes": nodes})

    def _fields(self) -> dict[str, Any]:
        return {
            "dir": self.dir,
            "settings": self.settings,
            "nodes": self.nodes,
            "router": self.router,
            "users": self.users,
            "root": self.root,
            "up_seconds": self.up_seconds,
            "tls": self.tls,
        }

    def to_state(self) -> dict[str, Any]:
        return {
            "version": 1,
            "dir": self.dir,
            "settings": self.settings,
            "nodes": [asdict(n) for n in self.nodes],
            "router": asdict(self.router),
            "users": {k: asdict(v) for k, v in self.users.items()},
            "root": asdict(self.root) if self.root else None,
            "up_seconds": self.up_seconds,
            "tls": self.tls,
        }

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> SandboxInfo:
        root = data.get("root")
        return cls(
            dir=data["dir"],
            settings=data["settings"],
            nodes=tuple(NodeInfo(**n) for n in data["nodes"]),
            router=RouterInfo(**data["router"]),
            users={k: Credentials(**v) for k, v in data["users"].items()},
            root=Credentials(**root) if root else None,
            up_seconds=data.get("up_seconds"),
            tls=data.get("tls"),
        )

    def save(self) -> None:
        path = Path(self.dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_state(), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, directory: Path) -> SandboxInfo | None:
        path = directory / STATE_FILE
        if not path.exists():
            return None
        return cls.from_state(json.loads(path.read_text()))
