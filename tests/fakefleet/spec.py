"""The topology a fake fleet starts with: clusters of one primary and its replicas.

A spec is plain values (JSON in and out). Node ports may be 0 (any free port): the fleet binds
them at start and reports the real ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class NodeSpec:
    name: str
    host: str = "127.0.0.1"
    port: int = 0
    server_id: int = 1
    read_only: bool = True
    """``read_only`` in the node's configuration: what a restarted node comes back with."""


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    nodes: tuple[NodeSpec, ...]
    primary: str
    """The node that starts as the writable primary; every other node replicates from it."""
    write_rate: float = 1.0
    """Transactions per second the cluster's clients write on its current primary."""


@dataclass(frozen=True)
class FleetSpec:
    clusters: tuple[ClusterSpec, ...]
    user: str = "hacontrol"
    password: str = "fake-fleet-password"
    replication_user: str = "repl"
    heartbeat_period: float = 0.5
    """MASTER_HEARTBEAT_PERIOD of the replicas (heartbeats counted at this pace)."""
    net_timeout: float = 1.0
    """slave_net_timeout: how long a replica of a frozen source still shows its IO thread
    running (receiving nothing) before it reconnects and reports an error."""
    semi_sync: bool = True
    start_seq: int = 100
    """GTID sequence number every cluster has reached at start (domain 0)."""

    def nodes(self) -> list[tuple[ClusterSpec, NodeSpec]]:
        return [(cluster, node) for cluster in self.clusters for node in cluster.nodes]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> FleetSpec:
        data = json.loads(text)
        clusters = tuple(
            ClusterSpec(
                **{
                    **cluster,
                    "nodes": tuple(NodeSpec(**node) for node in cluster["nodes"]),
                }
            )
            for cluster in data.pop("clusters")
        )
        return cls(clusters=clusters, **data)

    @classmethod
    def load(cls, path: Path) -> FleetSpec:
        return cls.from_json(path.read_text())


def cluster_sizes(nodes: int, sizes: Sequence[int] = (3, 4)) -> list[int]:
    """Cluster sizes, cycling through ``sizes``, adding up to exactly ``nodes``.

    The last clusters give back the excess, never going below the smallest size: 1,000 nodes
    in sizes (3, 3, 4) are 300 clusters; in sizes (3, 4), 286.
    """
    if nodes < min(sizes):
        raise ValueError(f"{nodes} nodes cannot make a cluster of at least {min(sizes)}")
    out: list[int] = []
    total = 0
    while total < nodes:
        size = sizes[len(out) % len(sizes)]
        out.append(size)
        total += size
    excess = total - nodes
    i = len(out) - 1
    while excess:  # take nodes back from the last clusters that can spare one
        if out[i] > min(sizes):
            out[i] -= 1
            excess -= 1
        i = (i - 1) % len(out)
    return out


def fleet(
    sizes: Sequence[int],
    *,
    host: str = "127.0.0.1",
    base_port: int = 0,
    prefix: str = "c",
    write_rate: float = 1.0,
    **options: Any,
) -> FleetSpec:
    """Clusters of the given sizes; node ``k`` of cluster ``c007`` is ``c007n<k>`` with
    server_id ``k``, the first node the primary. Ports: ``base_port`` onwards, one per node,
    or all 0 (any free port)."""
    clusters = []
    port = base_port
    width = max(3, len(str(len(sizes))))
    for number, size in enumerate(sizes, start=1):
        name = f"{prefix}{number:0{width}d}"
        nodes = []
        for k in range(1, size + 1):
            nodes.append(NodeSpec(f"{name}n{k}", host, port, server_id=k, read_only=k != 1))
            port = port + 1 if base_port else 0
        clusters.append(ClusterSpec(name, tuple(nodes), nodes[0].name, write_rate))
    return FleetSpec(clusters=tuple(clusters), **options)


def with_ports(spec: FleetSpec, ports: dict[str, int]) -> FleetSpec:
    """The same spec with the bound ports filled in."""
    return replace(
        spec,
        clusters=tuple(
            replace(c, nodes=tuple(replace(n, port=ports.get(n.name, n.port)) for n in c.nodes))
            for c in spec.clusters
        ),
    )


def settings_data(
    cluster: ClusterSpec, spec: FleetSpec, *, journal: str = "journal.jsonl", level: str = "info"
) -> dict[str, Any]:
    """Controller settings (as the TOML document's data) for one cluster of a bound fleet:
    the sandbox's probe timings (interval 1 s, timeout 0.5 s, io_stall 1.5 s), no router,
    no API, no fleet."""
    return {
        "cluster": {"name": cluster.name},
        "nodes": [{"name": n.name, "host": n.host, "port": n.port} for n in cluster.nodes],
        "mysql": {
            "user": spec.user,
            "password": spec.password,
            "replication_user": spec.replication_user,
            "replication_password": spec.password,
        },
        "router": {"kind": "none"},
        "probes": {"interval": 1.0, "timeout": 0.5},
        "failover": {"io_stall": 1.5},
        "api": {"enabled": False},
        # One controller per cluster, alone: the fake answers no lease statement (docs/fleet.md).
        "controller": {"journal": journal, "fleet": False},
        "log": {"level": level},
    }


def toml_text(data: dict[str, Any]) -> str:
    """``settings_data`` as TOML: tables of scalars and arrays of tables (enough for it)."""
    lines: list[str] = []
    for section, body in data.items():
        tables = body if isinstance(body, list) else [body]
        for table in tables:
            lines.append(f"[[{section}]]" if isinstance(body, list) else f"[{section}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
            lines.append("")
    return "\n".join(lines)


def clusters_settings_text(
    spec: FleetSpec, *, journal: str = "journal.jsonl", level: str = "info"
) -> str:
    """Settings for ONE controller managing every cluster of a bound fleet: the shared
    sections of ``settings_data`` at the top level and one ``[[clusters]]`` entry per cluster
    (its name and nodes; the journal becomes ``journal.<cluster>.jsonl`` for each)."""
    shared = settings_data(spec.clusters[0], spec, journal=journal, level=level)
    lines = [toml_text({k: v for k, v in shared.items() if k not in ("cluster", "nodes")})]
    for cluster in spec.clusters:
        lines += ["[[clusters]]", f"name = {json.dumps(cluster.name)}", ""]
        for node in cluster.nodes:
            lines += [
                "[[clusters.nodes]]",
                f"name = {json.dumps(node.name)}",
                f"host = {json.dumps(node.host)}",
                f"port = {node.port}",
                "",
            ]
    return "\n".join(lines)
