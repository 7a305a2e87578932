"""Values describing a sandbox: what to build (spec) and what runs (info, kept in sandbox.json)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
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
CONTROLLERS_DIR = "controllers"  # per controller started with the sandbox: settings, journal, log
MAX_CLUSTERS = 4
HOSTGROUP_STRIDE = 100  # cluster k's hostgroups: 10, 20, 30, 40 plus 100 * k


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
    """What `up` builds. Ports: nodes base..base+N-1, then per router its writer, reader and
    admin ports and the API port of the controller next to it.

    ``routers``: routers in front of the nodes (a fleet's, each with its own controller when
    ``controllers`` says so); ``controllers``: ``hacontrol run`` processes started with the
    sandbox, controller i next to router i (none: the operator runs one)."""

    dir: Path
    nodes: int = 3
    base_port: int = DEFAULT_BASE_PORT
    router: RouterKind | None = None  # None: proxysql when on PATH, else haproxy
    cache_dir: Path | None = None  # template datadir cache; None: $XDG_CACHE_HOME/hacontrol
    tls: bool = False  # a CA of its own; TLS to the nodes, replication, ProxySQL admin, API
    routers: int = 1
    controllers: int = 0
    netns: bool = False  # every node, router, controller on a host (namespace) of its own
    clusters: int = 1  # clusters of ``nodes`` nodes each, all behind the same router(s)

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 9:
            raise SandboxError(f"--nodes must be between 1 and 9, got {self.nodes}")
        if not 1 <= self.routers <= 9:
            raise SandboxError(f"--routers must be between 1 and 9, got {self.routers}")
        if not 0 <= self.controllers <= self.routers:
            raise SandboxError(
                f"--controllers must be between 0 and --routers ({self.routers}): each "
                f"controller runs next to a router of its own, got {self.controllers}"
            )
        if self.controllers and self.tls:
            raise SandboxError("--controllers with --tls is not offered yet (their APIs' HTTPS)")
        if not 1024 <= self.base_port <= 65535 - self.port_count:
            raise SandboxError(f"--base-port {self.base_port} leaves no room for the sandbox ports")
        self._check_clusters()

    def _check_clusters(self) -> None:
        if not 1 <= self.clusters <= MAX_CLUSTERS:
            raise SandboxError(
                f"--clusters must be between 1 and {MAX_CLUSTERS}, got {self.clusters}"
            )
        offered = {"--routers": self.routers > 1, "--controllers": self.controllers > 0,
                   "--netns": self.netns, "--tls": self.tls}  # fmt: skip
        refused = [option for option, given in offered.items() if given]
        if self.clusters > 1 and refused:
            raise SandboxError(
                f"--clusters with {', '.join(refused)} is not offered yet: several clusters "
                "share one router and are managed by the operator's one controller"
            )

    @property
    def port_count(self) -> int:
        return self.total_nodes + 4 * self.routers + 2 * (self.clusters - 1)

    @property
    def total_nodes(self) -> int:
        return self.nodes * self.clusters

    def node_name(self, index: int) -> str:
        """Node ``index`` of the whole sandbox (cluster ``index // nodes``): names are unique
        across clusters (node1..node3 in the first, node4..node6 in the second ...)."""
        return f"node{index + 1}"

    def node_port(self, index: int) -> int:
        return self.base_port + index

    def cluster_name(self, index: int) -> str:
        """ "sandbox" for a sandbox of one cluster (as always), else "c1", "c2" ..."""
        return "sandbox" if self.clusters == 1 else f"c{index + 1}"

    def cluster_nodes(self, index: int) -> range:
        """The indexes of cluster ``index``'s nodes; its first is its primary at `up`."""
        return range(index * self.nodes, (index + 1) * self.nodes)

    def cluster_port(self, index: int, which: int) -> int:
        """Cluster ``index``'s own writer (0) and reader (1) ports on the router: the router's
        for the first cluster, after every router's ports for the others (HAProxy's frontends;
        ProxySQL routes by user and leaves them unbound)."""
        if index == 0:
            return self.router_port(0, which)
        return self.base_port + self.total_nodes + 4 * self.routers + 2 * (index - 1) + which

    def router_port(self, index: int, which: int) -> int:
        """Router ``index``'s ports: 0 writer, 1 reader, 2 admin, 3 its controller's API."""
        return self.base_port + self.total_nodes + 4 * index + which

    @property
    def writer_port(self) -> int:
        return self.router_port(0, 0)

    @property
    def reader_port(self) -> int:
        return self.router_port(0, 1)

    @property
    def admin_port(self) -> int:
        return self.router_port(0, 2)

    @property
    def api_port(self) -> int:
        """The controller's HTTP API, when run with the sandbox's settings."""
        return self.router_port(0, 3)

    def ports(self) -> list[tuple[int, str]]:
        """Every port the sandbox listens on, with what it is for (for clear busy-port errors)."""
        named = [
            (self.node_port(i), f"mariadbd {self.node_name(i)}") for i in range(self.total_nodes)
        ]
        for k in range(1, self.clusters):
            name = self.cluster_name(k)
            named += [
                (self.cluster_port(k, 0), f"router writer port of {name}"),
                (self.cluster_port(k, 1), f"router reader port of {name}"),
            ]
        for i in range(self.routers):
            which = "router" if i == 0 else f"router {i + 1}"
            named += [
                (self.router_port(i, 0), f"{which} writer port"),
                (self.router_port(i, 1), f"{which} reader port"),
                (self.router_port(i, 2), f"{which} admin port"),
                (self.router_port(i, 3), f"controller API port{'' if i == 0 else f' {i + 1}'}"),
            ]
        return named


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
    # With --netns the ports are on the router's own host; clients outside the sandbox's
    # network (tests, the drill, an operator's shell) use these unix sockets instead.
    writer_socket: str | None = None
    reader_socket: str | None = None
    admin_socket: str | None = None  # proxysql only (haproxy's admin is a socket already)


@dataclass(frozen=True)
class ClusterInfo:
    """One of the clusters of a sandbox made with ``--clusters N`` (N > 1): its nodes, its
    hostgroups on ProxySQL, its backends on HAProxy and where its application connects."""

    name: str
    nodes: tuple[str, ...]  # node names; the first was its primary at `up`
    hostgroups: dict[str, int]  # writer, reader, broken, hidden
    writer_backend: str  # HAProxy's backends (ProxySQL: unused)
    reader_backend: str
    writer_port: int  # on the router's host: ProxySQL's shared port, HAProxy's own per cluster
    reader_port: int
    app: Credentials  # the application user routed to this cluster (ProxySQL: by this user)


@dataclass(frozen=True)
class ControllerInfo:
    """A ``hacontrol run`` the sandbox started, next to router ``router`` (an index)."""

    name: str
    router: int
    settings: str  # its own settings file; also marks the process as ours
    log: str
    api_port: int
    pid: int | None


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
    more_routers: tuple[RouterInfo, ...] = ()
    """The routers after the first (``--routers N``)."""
    controllers: tuple[ControllerInfo, ...] = ()
    clusters: tuple[ClusterInfo, ...] = ()
    """With ``--clusters N`` (N > 1): every cluster; empty for a sandbox of one cluster."""

    @property
    def routers(self) -> tuple[RouterInfo, ...]:
        return (self.router, *self.more_routers)

    def cluster(self, name: str) -> ClusterInfo:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        known = ", ".join(c.name for c in self.clusters) or "none: one cluster"
        raise SandboxError(f"no cluster named {name!r} in sandbox {self.dir} (clusters: {known})")

    def cluster_of(self, node: str) -> ClusterInfo | None:
        """The cluster a node belongs to (None in a sandbox of one cluster)."""
        return next((c for c in self.clusters if node in c.nodes), None)

    def nodes_of(self, cluster: str | None) -> tuple[NodeInfo, ...]:
        """A cluster's nodes (None: every node of the sandbox)."""
        if cluster is None:
            return self.nodes
        names = self.cluster(cluster).nodes
        return tuple(n for n in self.nodes if n.name in names)

    def primary_of(self, cluster: str | None) -> NodeInfo:
        """The node that was the cluster's primary at `up`."""
        return next(n for n in self.nodes_of(cluster) if n.role == "primary")

    def controller(self, name: str) -> ControllerInfo:
        for controller in self.controllers:
            if controller.name == name:
                return controller
        raise SandboxError(f"no controller named {name!r} in sandbox {self.dir}")

    def with_router_pid(self, index: int, pid: int | None) -> SandboxInfo:
        routers = [replace(r, pid=pid) if i == index else r for i, r in enumerate(self.routers)]
        return replace(self, router=routers[0], more_routers=tuple(routers[1:]))

    def with_controller_pid(self, name: str, pid: int | None) -> SandboxInfo:
        controllers = tuple(replace(c, pid=pid) if c.name == name else c for c in self.controllers)
        return replace(self, controllers=controllers)

    netns: bool = False
    """Hosts of their own (``hacontrol.sandbox.netns``): the network's plan in network.json."""

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
            "more_routers": self.more_routers,
            "controllers": self.controllers,
            "netns": self.netns,
            "clusters": self.clusters,
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
            "more_routers": [asdict(r) for r in self.more_routers],
            "controllers": [asdict(c) for c in self.controllers],
            "netns": self.netns,
            "clusters": [asdict(c) for c in self.clusters],
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
            more_routers=tuple(RouterInfo(**r) for r in data.get("more_routers", ())),
            controllers=tuple(ControllerInfo(**c) for c in data.get("controllers", ())),
            netns=bool(data.get("netns", False)),
            clusters=tuple(cluster_from_state(c) for c in data.get("clusters", ())),
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


def cluster_from_state(data: dict[str, Any]) -> ClusterInfo:
    return ClusterInfo(**{**data, "nodes": tuple(data["nodes"]), "app": Credentials(**data["app"])})
