"""What status shows, from a view or the whole model: the JSON of ``hacontrol status`` and of
``GET /status``, and the topology tree. Pure: the one-shot probing of ``hacontrol status``
is ``service.snapshot``."""

from __future__ import annotations

from typing import Any

from hacontrol.events import PlanFinished
from hacontrol.model import Model
from hacontrol.plan import PlanKind
from hacontrol.routing import Role
from hacontrol.rules.candidates import candidates
from hacontrol.rules.doubt import consented
from hacontrol.rules.lease import leader_seen, majority, valid_until
from hacontrol.rules.routing import fleet_writer
from hacontrol.settings import Settings
from hacontrol.view import ClusterView, LockView, NodeView


def to_json(view: ClusterView) -> dict[str, Any]:
    membership = view.router.membership
    nodes = []
    for name, node in view.nodes.items():
        st = node.status
        channel = node.channel
        nodes.append(
            {
                "name": name,
                "health": node.health.value,
                "reason": node.reason,
                "role": _role(view, name),
                "rtt_ms": round(node.rtt * 1000, 2) if node.rtt is not None else None,
                "server_id": st.server_id if st else None,
                "version": st.version if st else None,
                "read_only": st.read_only if st else None,
                "gtid_executed": st.gtid_executed if st else None,
                "source": view.sources.get(name),
                "io": channel.io_state.value if channel else None,
                "sql": channel.sql_running if channel else None,
                "lag": channel.seconds_behind if channel else None,
                "received_gtid": channel.received_gtid if channel else None,
                "semi_sync": (
                    {
                        "source": st.semi_sync.source_enabled,
                        "active": st.semi_sync.source_active,
                        "clients": st.semi_sync.source_clients,
                        "replica": st.semi_sync.replica_enabled,
                        # Rpl_semi_sync_slave_status: the IO thread negotiated semi-sync (the
                        # variable takes effect at its next connect); None: not reported
                        "replica_client": st.semi_sync.replica_active,
                    }
                    if st
                    else None
                ),
                "router": sorted(r.value for r in membership.roles(name)) if membership else None,
            }
        )
    return {
        "cluster": view.cluster,
        "primary": view.primary,
        "primary_reason": view.primary_reason,
        "quorum": {
            "ok": view.quorum.ok,
            "reachable": list(view.quorum.reachable),
            "recognized": list(view.quorum.recognized),
        },
        "router": {
            "kind": view.router.kind,
            "error": view.router.error,
            "membership": membership.to_json() if membership else None,
        },
        "nodes": nodes,
        "problems": [p.to_json() for p in view.problems],
        "published_primary": view.published,
        "locks": {name: lock_json(lock) for name, lock in view.locks.items()},
    }


def lock_json(lock: LockView) -> dict[str, Any]:
    return {
        "session": lock.session,
        "leader_holder": lock.leader,
        "leader_holder_address": lock.holder,
        "primary_holder": lock.primary,
        "held_by_this_instance": lock.held,
        "publishes": lock.publishes,
        "error": lock.error,
    }


def _role(view: ClusterView, name: str) -> str:
    if name == view.primary:
        return "primary"
    if name in view.sources:
        return "replica"
    return "unknown" if view.nodes[name].status is None else "standalone"


def render_tree(view: ClusterView) -> str:
    """The topology as a tree, like ``orchestrator-client -c topology``."""
    lines: list[str] = []
    placed: set[str] = set()

    def walk(name: str, depth: int) -> None:
        if name in placed:
            return
        placed.add(name)
        prefix = "" if depth == 0 else "  " * (depth - 1) + "+ "
        lines.append(prefix + _line(view, name))
        for child in sorted(view.replicas_of(name)):
            walk(child, depth + 1)

    roots = [view.primary] if view.primary else []
    roots += sorted(n for n in view.nodes if n not in view.sources and n != view.primary)
    for root in roots:
        walk(root, 0)
    for name in sorted(view.nodes):  # replicas of unmanaged sources, cycles
        if name not in placed:
            lines.append(f"? {_line(view, name)} (source {view.sources.get(name)})")
            placed.add(name)
    quorum = "ok" if view.quorum.ok else "LOST"
    lines.append(f"quorum: {quorum} ({view.quorum.describe()})")
    if view.locks:
        lines.append(f"fleet: {fleet_line(view)}")
    if view.router.kind != "none":
        state = view.router.error or "ok"
        lines.append(f"router: {view.router.kind} ({state})")
    lines.append("problems:" if view.problems else "problems: none")
    for p in view.problems:
        lines.append(f"  - {p.code.value}{' ' + p.node if p.node else ''}: {p.reason}")
    return "\n".join(lines)


def fleet_line(view: ClusterView) -> str:
    """Who publishes the primary and who holds the leader lock, node by node."""
    published = f"publishes {view.published}" if view.published else "nobody publishes a primary"
    holders = []
    for name in sorted(view.locks):
        lock = view.locks[name]
        if not lock.known:
            holders.append(f"{name} unknown")
        elif lock.leader is None:
            holders.append(f"{name} free")
        else:
            holders.append(f"{name} #{lock.leader}" + (f" {lock.holder}" if lock.holder else ""))
    return f"{published}; leader lock: {', '.join(holders)}"


def _line(view: ClusterView, name: str) -> str:
    node: NodeView = view.nodes[name]
    st = node.status
    parts = [name]
    if st is None or node.health.value == "unreachable":
        parts.append(f"[{node.health.value}: {node.last_error or node.reason}]")
        return " ".join(parts)
    fields = [
        _role(view, name),
        "ro" if st.read_only else "rw",
        f"{st.flavor.value} {st.version.split('-')[0]}",
    ]
    channel = node.channel
    if channel is not None:
        lag = "lag ?" if channel.seconds_behind is None else f"lag {channel.seconds_behind}s"
        fields.append(lag)
        fields.append(f"io {channel.io_state.value} sql {'Yes' if channel.sql_running else 'No'}")
    fields.append(f"gtid {st.gtid_executed or '-'}")
    membership = view.router.membership
    if membership is not None:
        roles = [
            r.value
            for r in (Role.WRITER, Role.READER, Role.BROKEN, Role.HIDDEN)
            if r in membership.roles(name)
        ]
        fields.append("router " + ("+".join(roles) if roles else "none"))
    parts.append("[" + ", ".join(fields) + "]")
    parts.append(node.health.value)
    return " ".join(parts)


def controller_status(
    model: Model, settings: Settings, now: float, *, last_failover: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What /status shows: topology, problems, halt/block/pause, decisions, next candidate,
    and the last failover's (or switchover's) timeline (``plan_timeline``)."""
    view, state = model.view, model.state
    out = to_json(view)
    primary = view.primary
    ranked = candidates(view, settings, primary) if primary else []
    best = next((c for c in ranked if c.eligible), None)
    out["controller"] = {
        "paused": state.paused,
        "halt": None
        if state.halt is None
        else {
            "code": state.halt.code,
            "reason": state.halt.reason,
            "for_seconds": round(now - state.halt.since, 1),
        },
        "recovery_block_seconds_left": (
            round(state.blocked_until - now, 1)
            if state.blocked_until is not None and state.blocked_until > now
            else 0
        ),
        "maintenance": sorted(view.maintenance),
        "failover_consents": [
            {
                "node": c.node,
                "dead_primary": c.dead,
                "position": c.position,
                "held": c.held,
                "applies_now": c.node in consented(view, (c,), c.dead),
            }
            for c in state.consents
        ],
        "quarantined": {
            n: {"new_primary": q.new_primary, "errant": q.errant}
            for n, q in state.quarantined.items()
        },
        "plan_running": model.running.plan_id if model.running is not None else None,
        "last_decisions": [dict(d) for d in model.decisions[-10:]],
        "last_failover": last_failover,
    }
    out["fleet"] = fleet_status(model, settings, now)
    out["if_primary_died_now"] = {
        "would_promote": best.node if best else None,
        "candidates": [
            {
                "node": c.node,
                "eligible": c.eligible,
                "reason": c.reason,
                "received": c.received,
                "priority": c.priority,
                "lag": c.lag,
            }
            for c in ranked
        ],
    }
    return out


def fleet_status(model: Model, settings: Settings, now: float) -> dict[str, Any]:
    """This instance in its fleet: leader or not (since when), its locks per node, its view
    of the primary beside the published one, and whether its router agrees."""
    lease, view = model.lease, model.view
    membership = view.router.membership
    expected = fleet_writer(view, model.state, settings)[0] if lease.fleet else view.primary
    since = lease.leader_since
    return {
        "instance": settings.controller.instance_id,
        "fleet": lease.fleet,
        "leader": lease.leader,
        "acting": lease.acting(now),
        "leader_since": None if since is None else round(since + model.wall_offset, 3),
        "acting_from": (
            None if lease.ready_at is None else round(lease.ready_at + model.wall_offset, 3)
        ),
        "mode": lease.mode.value,
        "reason": lease.reason,
        "leader_elsewhere": leader_seen(view, settings) if lease.fleet else False,
        "majority": majority(settings),
        "locks_held": {
            name: round(until - now, 3)
            for name, lock in sorted(view.locks.items())
            if (until := valid_until(lock, settings)) is not None and until > now
        },
        "view_primary": view.primary,
        "published_primary": view.published,
        "router_writers": sorted(membership.writers) if membership is not None else None,
        "router_agrees": membership is not None
        and membership.writers == ({expected} if expected else set()),
        "lease_changes": lease.changes,
    }


MILESTONE_OF_ACTION = {
    "RouteFence": "fenced",
    "Drain": "drained",
    "Fence": "fenced",
    "WaitApplied": "caught up",
    "CatchUp": "caught up",
    "CheckTransactions": "transactions checked",
    "Promote": "promoted",
    "Route": "routed",
    "Repoint": "repointed",
}
"""A step of a failover or switchover -> the milestone its end marks on the status page."""


def plan_timeline(
    finished: PlanFinished, detect_seconds: float | None, wall_offset: float
) -> dict[str, Any] | None:
    """The timeline of a finished failover or switchover (None for other plans): when the
    fault was detected (a failover: the primary's first failed probe) and when each step
    ended, in seconds from the first mark and in wall-clock time (Unix seconds)."""
    if finished.kind not in (PlanKind.FAILOVER, PlanKind.SWITCHOVER):
        return None
    started = finished.at - finished.seconds  # monotonic
    origin = started - (detect_seconds or 0.0)
    marks: list[dict[str, Any]] = []
    if detect_seconds is not None:
        marks.append(_mark("detected", None, None, True, origin, origin, wall_offset))
    marks.append(_mark("plan started", None, None, True, started, origin, wall_offset))
    end = started
    for step in finished.steps:
        end += step.seconds
        milestone = MILESTONE_OF_ACTION.get(step.action, step.action)
        marks.append(_mark(milestone, step.action, step.node, step.ok, end, origin, wall_offset))
    return {
        "plan": finished.plan_id,
        "kind": str(finished.kind),
        "rule": finished.rule,
        "ok": finished.ok,
        "reason": finished.reason,
        "seconds": round((detect_seconds or 0.0) + finished.seconds, 3),
        "marks": marks,
    }


def _mark(
    what: str,
    action: str | None,
    node: str | None,
    ok: bool,
    at: float,
    origin: float,
    wall_offset: float,
) -> dict[str, Any]:
    return {
        "what": what,
        "action": action,
        "node": node,
        "ok": ok,
        "after": round(at - origin, 3),
        "at": round(at + wall_offset, 3),
    }
