"""After a failover: the old primary is fenced when it returns, rejoined when clean or kept
quarantined with its errant GTIDs, and replicas left on a dead or old primary are repointed.
"""

from __future__ import annotations

from dataclasses import replace

from hacontrol.flavors.base import IoState, NodeStatus
from hacontrol.model import AlertKey, Condition, ControllerState, Decision, Quarantined
from hacontrol.plan import AlertKind, Fence, Notify, Plan, PlanKind, Rejoin, Repoint
from hacontrol.rules.alerts import alert_once
from hacontrol.rules.candidates import Errant, errant_between, topology_text
from hacontrol.rules.failure import io_stopped_by_hand
from hacontrol.rules.routing import reader_ok
from hacontrol.settings import Settings
from hacontrol.view import ClusterView, Health, hidden_nodes


def rule_fence_returning_primary(
    view: ClusterView, state: ControllerState, settings: Settings, now: float
) -> Decision | None:
    """An old primary came back writable: fence it before anything else (never two writers)."""
    for name, q in state.quarantined.items():
        node = view.nodes.get(name)
        if node is None or not node.reachable or node.status is None:
            continue
        if not behind_new_primary(view, q.new_primary, name):
            continue  # only behind a promoted, recognized new primary
        if now < state.retry_at.get((PlanKind.FENCE, name), 0.0):
            continue  # failures back off
        if not node.status.read_only:
            return Decision(
                Plan(
                    "FenceReturningPrimary",
                    f"old primary {name} is back and writable; {q.new_primary} is "
                    "the primary now: set it read_only before anything else",
                    (Fence(name),),
                    kind=PlanKind.FENCE,
                ),
                state,
            )
    return None


def behind_new_primary(view: ClusterView, new_primary: str | None, old: str) -> bool:
    """Whether ``new_primary`` (a quarantine's) is the primary the old one must be fenced
    behind: the view's primary; or, when two writable nodes leave the view without one (the old
    primary came back writable), the node a fresh router reading sends every write to, itself
    writable and replicating from nobody, while no replica follows the old one. Fencing the old
    one then ends the two writers; waiting for a view primary would wait for ever
    (TwoWritableNodes halts every other rule). In a fleet the primary the leader published
    (its lock, read with the lease) counts as that reading: a failover cut after its RouteFence
    leaves the router with no writer at all. A stale reading or a followed old primary (an
    operator's switch back) fences nothing."""
    if new_primary is None or view.primary is not None:
        return new_primary is not None and new_primary == view.primary
    node, former = view.nodes.get(new_primary), view.nodes.get(old)
    if node is None or former is None or not node.reachable or node.status is None:
        return False
    if node.status.read_only or node.channel is not None:
        return False
    followed = any(
        view.nodes[r].reachable
        and (channel := view.nodes[r].channel) is not None
        and channel.io_state is IoState.RUNNING
        for r in view.replicas_of(old)
    )
    if followed:
        return False
    if view.published == new_primary:
        return True  # the fleet's leader published it: its choice, whatever the router shows
    router, membership = view.router, view.router.membership
    fresh = max(node.last_ok_at or float("inf"), former.last_ok_at or float("inf"))
    if router.error is not None or router.at is None or router.at < fresh:
        return False
    return membership is not None and membership.writers == {new_primary}


def rule_old_primary(
    view: ClusterView, state: ControllerState, settings: Settings, now: float
) -> Decision | None:
    """A fenced old primary: rejoin it when clean, keep it quarantined when errant."""
    for name, q in sorted(state.quarantined.items()):
        decision = old_primary(view, state, settings, now, name, q)
        if decision is not None:
            return decision
    return None


def old_primary(
    view: ClusterView,
    state: ControllerState,
    settings: Settings,
    now: float,
    name: str,
    q: Quarantined,
) -> Decision | None:
    node = view.nodes.get(name)
    primary = view.primary
    if node is None or not node.reachable or node.status is None or primary is None:
        return None
    if q.new_primary != primary:
        return None  # the node we promoted is not the primary now: an operator's call
    if view.sources.get(name) == primary and node.health is Health.HEALTHY:
        return caught_up(view, state, settings, name, primary)
    theirs = view.nodes[primary].status
    if theirs is None:
        return None
    errant = errant_between(node.status, theirs)
    channel = node.channel
    if errant or (channel is not None and channel.last_io_errno == 1236):
        detail = (
            errant.describe()
            if errant or channel is None
            else (f"replication error 1236: {channel.last_io_error}")
        )
        return errant_old_primary(view, state, name, q, detail)
    if view.sources.get(name) == primary:
        return None  # replicating already, catching up
    if now < state.retry_at.get((PlanKind.REJOIN, name), 0.0):
        return None
    return Decision(
        Plan(
            "RejoinOldPrimary",
            f"old primary {name} has no errant transactions ({contained(node.status, theirs)}): "
            f"rejoin it as a replica of {primary}",
            (Rejoin(name, primary),),
            kind=PlanKind.REJOIN,
        ),
        state,
    )


def caught_up(
    view: ClusterView, state: ControllerState, settings: Settings, name: str, primary: str
) -> Decision | None:
    """Rejoined and caught up: out of quarantine, back to the readers."""
    ok, why = reader_ok(view, name, primary, settings.failover.max_lag, settings.failover.io_stall)
    if not ok:
        return None
    remaining = {k: v for k, v in state.quarantined.items() if k != name}
    return Decision(
        Plan("OldPrimaryRejoined", f"{name} replicates from {primary} and caught up ({why})"),
        replace(state, quarantined=remaining),
    )


def errant_old_primary(
    view: ClusterView, state: ControllerState, name: str, q: Quarantined, detail: str
) -> Decision:
    """Errant transactions (or a source that purged what it needs): kept in broken, once
    alerted with the GTIDs; never RESET MASTER automatically."""
    quarantined = {**state.quarantined, name: replace(q, errant=detail)}
    plan = Plan(
        "ErrantOldPrimary",
        f"old primary {name} has errant transactions {detail}: kept in broken; "
        "an operator must repair it (never RESET MASTER automatically)",
        kind=PlanKind.ALERT,
    )
    alert = errant_alert(view, name, f"old primary has errant transactions: {detail}", detail, plan)
    key = AlertKey(Condition.ERRANT, name)
    return alert_once(replace(state, quarantined=quarantined), key, plan, alert)


def errant_alert(view: ClusterView, name: str, summary: str, detail: str, plan: Plan) -> Notify:
    sections = (("errant GTIDs", detail), ("topology", topology_text(view)))
    return Notify(AlertKind.ERRANT_TRANSACTIONS, name, summary, plan.reason, sections)


def unalerted(
    state: ControllerState, name: str, what: str, errant: Errant | None
) -> tuple[str, str, Errant | None] | None:
    """A node left alone, to be alerted (``left_alone``) unless it was already: each one gets
    its mail, the first not alerted at each decision."""
    return (
        None if AlertKey(Condition.ERRANT_REPLICA, name) in state.alerted else (name, what, errant)
    )


def left_alone(
    view: ClusterView, state: ControllerState, name: str, what: str, errant: Errant | None
) -> Decision | None:
    """A detached or stray node skipped because it holds transactions the primary lacks
    (writes a promotion cut halfway may have had acknowledged), or, ``errant`` None, because
    its GTID position is empty (a node being restored by hand: attached at the start of the
    primary's binlogs it would replay them over what it holds): alerted once, with what was
    seen and the topology, as an errant old primary is; None once alerted, so that the rules
    below still run while it stands (``Condition.ERRANT_REPLICA`` lasts while the view shows a
    problem on it)."""
    key = AlertKey(Condition.ERRANT_REPLICA, name)
    if key in state.alerted:
        return None
    primary = view.primary
    if errant is None:
        reason = (
            f"{what} and its GTID position is empty: not rejoined (attached at the start of "
            f"{primary}'s binlogs it would replay them over what it holds); an operator decides "
            f"(`hacontrol rebuild {name}`, or `hacontrol maintenance {name} on` while restoring "
            "it by hand)"
        )
        plan = Plan("DetachedNotRejoined", reason, kind=PlanKind.ALERT)
        sections = (("GTID position", "(empty)"), ("topology", topology_text(view)))
        summary = f"{name} not rejoined: its GTID position is empty"
        alert = Notify(AlertKind.REJOIN_FAILED, name, summary, reason, sections)
        return alert_once(state, key, plan, alert)
    detail = errant.describe()
    plan = Plan(
        "ErrantReplica",
        f"{what} and holds transactions {primary} lacks ({detail}): left as it is, not "
        f"replicating from {primary}; an operator must repair it (`hacontrol rebuild "
        f"{name}` discards them; never RESET MASTER automatically)",
        kind=PlanKind.ALERT,
    )
    summary = f"{name} holds transactions the primary lacks: {detail}"
    return alert_once(state, key, plan, errant_alert(view, name, summary, detail, plan))


def rule_repoint_stray(
    view: ClusterView, state: ControllerState, settings: Settings, now: float
) -> Decision | None:
    """A replica still pointing at a node that is not the primary (down during a failover,
    chained under an old primary), or at the primary with its IO thread stopped without an
    error (a failover cut after its SetIOThreads, its old primary the primary again): repoint
    it, unless it has errant transactions (left to an operator, alerted once:
    ``left_alone``)."""
    primary = view.primary
    if primary is None or not view.nodes[primary].reachable or primary in state.quarantined:
        return None
    theirs = view.nodes[primary].status
    hidden = hidden_nodes(view)
    skipped: tuple[str, str, Errant | None] | None = None
    for name, node in sorted(view.nodes.items()):
        source = view.sources.get(name)
        if (
            name == primary
            or name in hidden
            or name in state.quarantined
            or source is None
            or (source == primary and not io_stopped_by_hand(node.channel))
            or not node.reachable
            or node.status is None
            or not node.status.read_only
        ):
            continue
        if source == primary:  # what a failover's SetIOThreads leaves when it is cut
            what = f"{name} replicates from the primary {primary} with its IO thread stopped"
        elif why := not_chained(view, state, name, primary):
            what = f"{name} replicates from {source}, which is not the primary {primary} ({why})"
        else:
            continue  # a chain through a live replica (node3 -> node2 -> primary) is fine
        if now < state.retry_at.get((PlanKind.REPOINT, name), 0.0):
            continue
        if theirs is None:
            continue  # unreadable: nothing can be told
        if errant := errant_between(node.status, theirs):
            skipped = skipped or unalerted(state, name, what, errant)  # an operator's job
            continue
        return Decision(
            Plan(
                "RepointStray",
                f"{what} and holds no transaction {primary} lacks: repoint it",
                (Repoint((name,), primary),),
                kind=PlanKind.REPOINT,
            ),
            state,
        )
    return left_alone(view, state, *skipped) if skipped else None


def rule_attach_detached(
    view: ClusterView, state: ControllerState, settings: Settings, now: float
) -> Decision | None:
    """A read-only node that replicates from nobody, not an old primary we quarantined, while
    another node is the only writer and the primary: what a promotion cut halfway leaves when
    another node was promoted since (its replication reset, never made writable), an old
    primary a switchover demoted and was cut before rejoining, or a replica an operator
    detached without hiding it (maintenance exempts a node). It is rejoined under the primary
    (fenced, its position aligned, attached), unless it holds transactions the primary lacks
    or its GTID position is empty (left to an operator, alerted once: ``left_alone``); the
    rejoin checks again on the node."""
    primary = view.primary
    if primary is None or view.writable != (primary,) or primary in state.quarantined:
        return None
    theirs = view.nodes[primary].status
    if theirs is None or not view.nodes[primary].reachable:
        return None
    hidden = hidden_nodes(view)
    skipped: tuple[str, str, Errant | None] | None = None
    for name, node in sorted(view.nodes.items()):
        status = node.status
        if (
            name == primary
            or name in hidden
            or name in state.quarantined
            or not node.reachable
            or status is None
            or not status.read_only
            or status.replication
            or now < state.retry_at.get((PlanKind.REJOIN, name), 0.0)
        ):
            continue
        what = f"{name} is read-only and replicates from nobody while {primary} is the primary"
        if not position_of(status) and position_of(theirs):
            skipped = skipped or unalerted(state, name, what, None)  # an operator's job
            continue
        if errant := errant_between(status, theirs):
            skipped = skipped or unalerted(state, name, what, errant)
            continue
        return Decision(
            Plan(
                "RejoinDetached",
                f"{what}; it holds no transaction {primary} lacks "
                f"({contained(status, theirs)}): rejoin it",
                (Rejoin(name, primary),),
                kind=PlanKind.REJOIN,
            ),
            state,
        )
    return left_alone(view, state, *skipped) if skipped else None


def not_chained(view: ClusterView, state: ControllerState, name: str, primary: str) -> str | None:
    """Why ``name`` does not reach ``primary`` through a chain of live replicas; None when it
    does: every link's IO thread not stopped, every node on the way reachable, not a
    quarantined old primary, and the chain ends at the primary. A replica whose IO thread a
    failover's SetIOThreads stopped, left pointing at the old primary when the run was cut
    before its Repoint, is no chain even once that old primary is back as a replica: it
    receives nothing. A relay hidden by an operator whose IO thread is stopped without an
    error while it points at the primary is the operator's pause, not a broken link: its
    downstream replicas stay on it."""
    seen = {name}
    hidden = hidden_nodes(view) - {name}
    node, source = name, view.sources.get(name)
    while source is not None and source != primary:
        if link_stopped(view, node, hidden, primary):
            return f"the IO thread of {node} is stopped"
        if source not in view.nodes:
            return f"{source} is not a managed node"
        if not view.nodes[source].reachable:
            return f"{source} is unreachable"
        if source in state.quarantined:
            return f"{source} is a quarantined old primary"
        if source in seen:
            return f"replication loops through {source}"
        seen.add(source)
        node, source = source, view.sources.get(source)
    if source is None:
        return f"{node} replicates from nobody"
    if link_stopped(view, node, hidden, primary):
        return f"the IO thread of {node} is stopped"
    return None


def link_stopped(view: ClusterView, node: str, hidden: frozenset[str], primary: str) -> bool:
    """``node``'s IO thread is stopped, unless an operator hid it and stopped it: no error, and
    it still points at the primary (one a failover stopped points at the old primary)."""
    channel = view.nodes[node].channel
    if channel is None or channel.io_state is not IoState.STOPPED:
        return False
    paused = channel.last_io_errno == 0 and view.sources.get(node) == primary
    return not (node in hidden and paused)


def position_of(status: NodeStatus) -> str:
    """The node's GTID position as the rejoin would take it ("" for a node holding none)."""
    return ",".join(p for p in (status.gtid_binlog_pos, status.gtid_slave_pos) if p) or (
        status.gtid_executed or ""
    )


def contained(node: NodeStatus, primary: NodeStatus) -> str:
    """How a clean node was found clean, for the plan's reason."""
    if node.gtid_binlog_state is not None and primary.gtid_binlog_state is not None:
        return (
            f"binlog state {node.gtid_binlog_state or '(empty)'} within "
            f"{primary.gtid_binlog_state or '(empty)'}"
        )
    return f"{node.gtid_executed} within {primary.gtid_executed}"
