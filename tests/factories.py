"""Plain values for pure tests: node statuses, probe results, settings, a sandbox's layout.
No servers."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from hacontrol.effects import Log, Reply
from hacontrol.events import (
    CommandResult,
    LeaseObserved,
    OperatorCommand,
    ProbeResult,
    RouterProbeResult,
)
from hacontrol.flavors.base import FlavorName, IoState, NodeStatus, ReplicationStatus, SemiSync
from hacontrol.jsonlog import JsonLog
from hacontrol.model import ControllerState, Lease, LeaseMode, Model, Quarantined
from hacontrol.routing import Membership
from hacontrol.sandbox import SandboxSpec, render
from hacontrol.sandbox.model import ClusterInfo, Credentials, NodeInfo, RouterInfo
from hacontrol.settings import Settings
from hacontrol.step import step
from hacontrol.view import ClusterView
from tests.support import fold_all

PORTS = {"node1": 3301, "node2": 3302, "node3": 3303}


def settings(**overrides: object) -> Settings:
    data: dict[str, object] = {
        "cluster": {"name": "t"},
        "nodes": [{"name": n, "host": "127.0.0.1", "port": p} for n, p in PORTS.items()],
        "mysql": {"password": "x", "replication_password": "y"},
        "router": {"kind": "haproxy", "haproxy": {"socket": "/tmp/none.sock"}},
        "controller": {"fleet": False},  # a single instance; ``fleet()`` for one of a fleet
    }
    data.update(overrides)
    return Settings(**data)


HEALTHY_CHANNEL: dict[str, Any] = {
    "connection_name": "",
    "source_host": "127.0.0.1",
    "io_state": IoState.RUNNING,
    "sql_running": True,
    "last_io_errno": 0,
    "last_io_error": "",
    "last_sql_errno": 0,
    "last_sql_error": "",
    "seconds_behind": 0,
    "source_server_id": 1,
}
"""What every healthy replication channel shows: both threads running, no error, no lag,
from 127.0.0.1 and a source with server id 1."""


def running_channel(**fields: Any) -> ReplicationStatus:
    """A healthy channel (``HEALTHY_CHANNEL``) with ``fields``: at least the source's port,
    the received GTID, the heartbeats and the GTID mode, which differ by server."""
    return ReplicationStatus(**{**HEALTHY_CHANNEL, **fields})


def channel(source: str = "node1", **kw: object) -> ReplicationStatus:
    return running_channel(
        **{
            "source_port": PORTS.get(source, 9999),
            "received_gtid": "0-1-100",
            "heartbeats_received": 10,
            "using_gtid": "Slave_Pos",
            "heartbeat_period": 0.5,
            **kw,
        }
    )


def status(
    server_id: int,
    *,
    read_only: bool,
    gtid: str = "0-1-100",
    replication: tuple = (),
    semi_sync: SemiSync | None = None,
) -> NodeStatus:
    return NodeStatus(
        flavor=FlavorName.MARIADB,
        version="10.11.19-MariaDB",
        server_id=server_id,
        read_only=read_only,
        super_read_only=None,
        gtid_executed=gtid,
        gtid_binlog_pos=gtid,
        gtid_slave_pos=gtid,
        replication=replication,
        semi_sync=semi_sync
        or SemiSync(
            source_enabled=not read_only,
            source_clients=2,
            source_active=True,
            replica_enabled=True,
        ),
        log_bin=True,
    )


def primary(node: str = "node1", at: float = 1.0, **kw: object) -> ProbeResult:
    sid = int(node[-1])
    return ProbeResult(node, at, 0.001, status(sid, read_only=False, **kw))


def replica(node: str, at: float = 1.0, source: str = "node1", **kw: object) -> ProbeResult:
    sid = int(node[-1])
    return ProbeResult(
        node, at, 0.001, status(sid, read_only=True, replication=(channel(source, **kw),))
    )


def down(node: str, at: float = 1.0, error: str = "timeout after 0.8 s") -> ProbeResult:
    return ProbeResult(node, at, None, None, error)


def router(writers=("node1",), readers=("node1", "node2", "node3"), broken=(), hidden=(), at=1.0):
    return RouterProbeResult("haproxy", at, Membership.of(writers, readers, broken, hidden))


def lock(
    node: str,
    at: float = 1.0,
    *,
    session: int | None = 7,
    leader: int | None = None,
    primary: int | None = None,
    error: str | None = None,
    jitter: float = 0.0,
) -> LeaseObserved:
    """A round trip on this instance's lease session (``session``) to ``node``: ``leader`` and
    ``primary`` hold the two locks (7 is this instance's session: ``leader=7`` means held)."""
    if error is not None:
        return LeaseObserved(node, at, None, None, None, error, jitter=jitter)
    return LeaseObserved(node, at, session, leader, primary, jitter=jitter)


def fleet(**overrides: object) -> Settings:
    """Settings of an instance of a fleet: fleet on, the lease defaults (W 2, K 0.5, V 1.5)."""
    return settings(controller={"fleet": True, "instance_id": "i1"}, **overrides)


class MemoryLog:
    """A real JsonLog writing into memory (no secrets given to scrub), read back as lines."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.log = JsonLog("prod", stream=self.stream)

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self, event: str | None = None) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.text.splitlines()]
        return [line for line in lines if event is None or line["event"] == event]


def leader_lease(s: Settings) -> Lease:
    """A fleet's lease held since t=1 and acting (past its validity, every node reprobed)."""
    return Lease(
        fleet=True,
        mode=LeaseMode.ACQUIRE,
        leader_since=1.0,
        ready_at=1.0 + s.lease.validity,
        reprobed=True,
    )


def failed_over(now: float, dead: str = "node1", new: str = "node2") -> ControllerState:
    """The state a failover of ``dead`` to ``new`` leaves at ``now``: ``dead`` quarantined, the
    recovery block for an hour."""
    return ControllerState(
        blocked_until=now + 3600,
        last_failover_at=now,
        quarantined={dead: Quarantined(dead, new, now)},
    )


# ---- views the rules are tried on (decide's and the errant-state tests) -------------------

S = settings()
NOW = 100.0
DEAD_IO = {"io_state": IoState.CONNECTING, "last_io_errno": 2003, "last_io_error": "refused"}
QUARANTINE = ControllerState(quarantined={"node1": Quarantined("node1", "node2", 50.0)})


def view_of(*rounds: list, s: Settings = S) -> ClusterView:
    return fold_all(s, *rounds)


def healthy_round(at: float, **r2: object) -> list:
    """One probe of each node and the router; ``r2`` changes node2's replication."""
    return [primary(at=at), replica("node2", at, **r2), replica("node3", at), router(at=at)]


def after_failover_round(t: float, node1: ProbeResult) -> list:
    """node2 promoted, node3 following it, node1 fenced out of routing, probed as ``node1``."""
    return [
        primary("node2", at=t),
        replica("node3", t, source="node2"),
        node1,
        router(writers=("node2",), readers=("node2", "node3"), broken=("node1",), at=t),
    ]


def old_primary_view(node1_status: NodeStatus) -> ClusterView:
    """The view after a failover to node2 when the old primary node1 answers ``node1_status``."""
    return view_of(
        *(
            after_failover_round(t, ProbeResult("node1", t, 0.001, node1_status))
            for t in (1.0, 2.0, 3.0)
        )
    )


# ---- a model driven through step (step's and the journal rules' tests) ------------------


def dead_round(at: float) -> list:
    """node1 down, both replicas' IO threads failing to reach it."""
    return [down("node1", at), replica("node2", at, **DEAD_IO), replica("node3", at, **DEAD_IO)]


def model(*rounds: list, **fields) -> Model:
    rounds = rounds or tuple(healthy_round(t) for t in (1.0, 2.0, 3.0))
    return Model(fold_all(S, *rounds), **fields)


def dead() -> Model:
    return model(*(healthy_round(t) for t in (1.0, 2.0, 3.0)), *(dead_round(t) for t in (4, 5, 6)))


def steps(m: Model, *events, now: float = NOW, s: Settings = S) -> tuple[Model, list]:
    """Every event through step, in order; all the effects."""
    out: list = []
    for event in events:
        m, effects = step(m, event, s, now)
        out += effects
    return m, out


def of(effects: list, kind: type) -> list:
    return [e for e in effects if isinstance(e, kind)]


def lines(effects: list, event: str) -> list[Log]:
    return [e for e in effects if isinstance(e, Log) and e.event == event]


def replies(effects: list) -> list[CommandResult]:
    return [e.result for e in of(effects, Reply)]


def cmd(command: str, node: str | None = None, on: bool | None = None) -> OperatorCommand:
    return OperatorCommand(NOW, command, node, on)


# ---- a sandbox laid out, no process running (the sandbox's render and CLI tests) ----------


def fake_nodes(count: int = 3, base: int = 30000) -> tuple[NodeInfo, ...]:
    return tuple(
        NodeInfo(
            name=f"node{i + 1}",
            host="127.0.0.1",
            port=base + i,
            pid=None,
            role="primary" if i == 0 else "replica",
            server_id=i + 1,
            node_dir=f"/sb/node{i + 1}",
            config=f"/sb/node{i + 1}/my.cnf",
        )
        for i in range(count)
    )


def fake_router() -> RouterInfo:
    return RouterInfo("haproxy", "127.0.0.1", 30003, 30004, "/sb/haproxy.sock", 30005, None, "/c")


def two_clusters(kind: str = "proxysql") -> tuple[tuple[NodeInfo, ...], RouterInfo, tuple]:
    """Two clusters of three nodes as `up --clusters 2` lays them out (no process runs)."""
    spec = SandboxSpec(dir=Path("/sb"), base_port=30000, clusters=2)
    nodes = tuple(
        replace(n, role="primary" if i % 3 == 0 else "replica") for i, n in enumerate(fake_nodes(6))
    )
    admin = "/sb/haproxy.sock" if kind == "haproxy" else "127.0.0.1:30008"
    router = RouterInfo(kind, "127.0.0.1", 30006, 30007, admin, 30008, None, "/c")  # type: ignore[arg-type]
    clusters = tuple(
        ClusterInfo(
            name=spec.cluster_name(k),
            nodes=tuple(spec.node_name(i) for i in spec.cluster_nodes(k)),
            hostgroups=render.hostgroups(k),
            writer_backend=f"writer_c{k + 1}",
            reader_backend=f"readers_c{k + 1}",
            writer_port=spec.cluster_port(k, 0),
            reader_port=spec.cluster_port(k, 1),
            app=Credentials(f"app_c{k + 1}", f"/sb/secrets/app_c{k + 1}.password"),
        )
        for k in range(2)
    )
    return nodes, router, clusters
