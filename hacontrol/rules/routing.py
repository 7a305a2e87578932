"""Routing rules: where every managed node should be routed, and bringing the router there.

Writer changes belong to failovers and switchovers; routine reconciling moves readers, fills an
empty writer group, or replaces a writer that is gone, and alerts instead of guessing.
"""

from __future__ import annotations

from hacontrol import gtid
from hacontrol.model import AlertKey, Condition, ControllerState, Decision
from hacontrol.plan import AlertKind, Notify, Plan, PlanKind, Route
from hacontrol.routing import Membership
from hacontrol.rules.alerts import alert_once
from hacontrol.rules.candidates import executed, topology_text
from hacontrol.settings import Settings
from hacontrol.view import ClusterView, Health, hidden_nodes, link_alive


def reader_ok(
    view: ClusterView, name: str, primary: str, max_lag: float, stall: float = float("inf")
) -> tuple[bool, str]:
    node = view.nodes[name]
    if node.health is not Health.HEALTHY:
        return False, f"{node.health.value}: {node.reason}"
    if view.sources.get(name) != primary:
        return False, f"replicates from {view.sources.get(name)}, not {primary}"
    channel = node.channel
    assert channel is not None
    if not link_alive(node, view.at, stall):
        # Seconds_Behind_Master stays 0 while a partitioned IO thread says Yes and receives
        # nothing: the replica would serve ever older data.
        return False, "no heartbeat or transaction received lately from the primary"
    if channel.seconds_behind is not None:
        return channel.seconds_behind <= max_lag, f"{channel.seconds_behind} s behind"
    # NULL lag is neither zero nor infinite: compare what it executed with the primary.
    mine, theirs = executed(node.status), executed(view.nodes[primary].status)
    if mine is None or theirs is None:
        return False, "lag unknown (NULL) and GTID positions unreadable"
    missing = gtid.behind(mine, theirs)
    return missing == 0, f"lag NULL, {missing} transaction(s) behind the primary"


def desired_membership(
    view: ClusterView, state: ControllerState, settings: Settings
) -> Membership | None:
    """Where every managed node should be routed, or None when no primary can be named."""
    primary = view.primary
    if primary is None or not view.nodes[primary].reachable or primary in state.quarantined:
        return None
    status = view.nodes[primary].status
    if status is None or status.read_only:
        return None
    hidden = hidden_nodes(view)
    readers = {primary} if settings.router.primary_is_reader else set()
    broken: set[str] = set()
    for name in view.nodes:
        if name == primary or name in hidden:
            continue
        ok = (
            name not in state.quarantined
            and reader_ok(
                view, name, primary, settings.failover.max_lag, settings.failover.io_stall
            )[0]
        )
        (readers if ok else broken).add(name)
    return Membership.of([primary], readers, broken, hidden)


def routing_differs(current: Membership | None, desired: Membership) -> bool:
    """Compare what routes traffic: writers and readers (HAProxy reads hidden back as broken)."""
    if current is None:
        return True
    return current.writers != desired.writers or current.readers != desired.readers


def writer_change_problem(
    view: ClusterView, state: ControllerState, current: Membership, new: str
) -> str | None:
    """Why routine reconciling must not move the router's writer to ``new``, or None.

    Writer changes belong to failovers and switchovers. Reconciling may only fill an empty
    writer group, or replace writers that are gone (unreachable, read-only, or an old primary
    we quarantined), and only with a primary that replicas corroborate (or with no replica
    reachable to say otherwise)."""
    for writer in sorted(current.writers - {new}):
        node = view.nodes.get(writer)
        gone = (
            writer in state.quarantined
            or node is None
            or not node.reachable
            or (node.status is not None and node.status.read_only)
        )
        if not gone:
            return f"the router's writer {writer} is reachable and writable"
    reachable_replicas = [
        n for n, nv in view.nodes.items() if n != new and nv.reachable and n in view.sources
    ]
    if reachable_replicas and new not in {view.sources[n] for n in reachable_replicas}:
        return f"no reachable replica follows {new}"
    return None


def rule_route(
    view: ClusterView, state: ControllerState, settings: Settings, now: float
) -> Decision | None:
    if settings.router.kind == "none" or now < state.route_retry_at:
        return None
    desired = desired_membership(view, state, settings)
    current = view.router.membership
    if desired is None or current is None:
        return None
    if not routing_differs(current, desired):
        return None
    (new,) = desired.writers
    if current.writers != desired.writers and (
        why := writer_change_problem(view, state, current, new)
    ):
        plan = Plan(
            "RouterWriterMismatch",
            f"not moving the router's writer "
            f"{sorted(current.writers)} to {new}: {why}; an operator must decide",
            kind=PlanKind.ALERT,
        )
        alert = Notify(
            AlertKind.ROUTER_WRITER_MISMATCH,
            new,
            "router writer differs from the primary",
            plan.reason,
            (("topology", topology_text(view)),),
        )
        return alert_once(state, AlertKey(Condition.WRITER_MISMATCH, new), plan, alert)
    writers = sorted(current.writers) if current else "unknown"
    readers = sorted(current.readers) if current else "unknown"
    reason = (
        f"router differs from the topology: writers {writers} -> "
        f"{sorted(desired.writers)}, readers {readers} -> {sorted(desired.readers)}"
    )
    return Decision(Plan("RouteReconcile", reason, (Route(desired),), kind=PlanKind.ROUTE), state)
