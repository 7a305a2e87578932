"""Changes an operator plans: a switchover, maintenance on or off. Pure planning with
pre-flight refusals (a str is the refusal's reason)."""

from __future__ import annotations

from hacontrol.model import ControllerState
from hacontrol.plan import (
    Action,
    AlertKind,
    CatchUp,
    CheckTransactions,
    Drain,
    Fence,
    Notify,
    Plan,
    PlanKind,
    Promote,
    Publish,
    Rejoin,
    Repoint,
    Route,
    SetWritable,
)
from hacontrol.routing import Membership
from hacontrol.rules.candidates import (
    Candidate,
    candidate_table,
    candidates,
    hooks,
    topology_text,
)
from hacontrol.rules.routing import reader_ok
from hacontrol.settings import Settings
from hacontrol.view import ClusterView, Health, hidden_nodes, with_maintenance


def plan_switchover(
    view: ClusterView, state: ControllerState, settings: Settings, target: str | None, now: float
) -> Plan | str:
    """A planned switchover to ``target`` (or the best candidate), or why it is refused."""
    chosen = switchover_candidate(view, state, settings, target)
    if isinstance(chosen, str):
        return chosen
    assert view.primary is not None
    return switchover(
        view, settings, view.primary, chosen, candidates(view, settings, view.primary)
    )


def switchover_candidate(
    view: ClusterView, state: ControllerState, settings: Settings, target: str | None
) -> str | Candidate:
    """The pre-flight checks: the node to promote, or why a switchover is refused."""
    if not view.quorum.ok:
        return f"no quorum: {view.quorum.describe()}"
    if state.halt is not None:
        return f"halted: {state.halt.reason}"
    old = view.primary
    if old is None or not view.nodes[old].reachable:
        return f"no reachable primary ({view.primary_reason})"
    status = view.nodes[old].status
    if status is None or status.read_only:
        return f"the primary {old} is not writable"
    if why := router_not_ready(view, settings, old):
        return why
    if target is not None and target not in view.nodes:
        return f"unknown node {target!r}"
    if target == old:
        return f"{target} is already the primary"
    ranked = candidates(view, settings, old)
    chosen = (
        next((c for c in ranked if c.node == target), None)
        if target
        else (ranked[0] if ranked else None)
    )
    if chosen is None:
        return f"{target or 'no node'} is not a replica of the primary {old}"
    if not chosen.eligible:
        return f"{chosen.node} cannot be promoted: {chosen.reason}"
    node = view.nodes[chosen.node]
    if node.health is not Health.HEALTHY:
        return f"{chosen.node} is {node.health.value}: {node.reason}"
    ok, why = reader_ok(
        view, chosen.node, old, settings.failover.max_lag, settings.failover.io_stall
    )
    if not ok:
        return f"{chosen.node} is too far behind: {why}"
    return chosen


def router_not_ready(view: ClusterView, settings: Settings, old: str) -> str | None:
    """The switchover drains the router's writer and its rollback routes it back: the router
    must be known to route writes to ``old`` alone (the routing reconciles first otherwise)."""
    if settings.router.kind == "none":
        return None
    membership = view.router.membership
    if view.router.error:
        return f"the router is unreachable: {view.router.error}"
    if membership is None:
        return "the router's state is unknown (not read yet)"
    if membership.writers != {old}:
        writers = ", ".join(sorted(membership.writers)) or "no node"
        return f"the router sends writes to {writers}, not to the primary {old}"
    return None


def switchover(
    view: ClusterView, settings: Settings, old: str, chosen: Candidate, ranked: list[Candidate]
) -> Plan:
    """The switchover plan from ``old`` to ``chosen``, with its deadline and rollback."""
    new = chosen.node
    table = candidate_table(ranked)
    hidden = hidden_nodes(view)
    others = tuple(
        n for n in view.replicas_of(old) if n != new and view.nodes[n].reachable and n not in hidden
    )
    readers = {new, old, *others} if settings.router.primary_is_reader else {old, *others}
    broken = {n for n in view.nodes if n not in readers | hidden | {new}}
    after = Membership.of([new], readers, broken, hidden)
    deadline = settings.failover.switchover_deadline
    context = (("old_primary", old), ("new_primary", new), ("kind", PlanKind.SWITCHOVER.value))
    actions: tuple[Action, ...] = (
        CheckTransactions(old, settings.failover.max_transaction_age),
        # No new write starts on the old primary; what runs there may finish (until the drain
        # deadline): an autocommit client sees a pause, not an error. The fence ends the rest.
        Drain(old, settings.failover.drain_timeout),
        Fence(old),
        CatchUp(new, old, deadline),
        Promote(new, old),
        *((Publish(new),) if settings.controller.fleet else ()),  # the fleet's routers follow
        # Writers first; semi-sync holds commits until a replica acknowledges. Past the
        # promotion a router that cannot be updated stops nothing: the old primary is fenced,
        # the replicas follow the new one, and the routing rule moves the writer when the
        # router answers (docs/failover.md).
        Route(after, required=False),
        Repoint(others, new),
        Rejoin(old, new, required=False),
        *hooks(settings, "post_switchover", context),
        Notify(
            AlertKind.SWITCHOVER,
            old,
            f"switchover: {new} is the primary, {old} a replica",
            f"planned switchover requested by an operator from {old} to {new}",
            (("candidates", table), ("topology before", topology_text(view))),
        ),
    )
    return Plan(
        "Switchover",
        f"switchover from {old} to {new} requested by an operator",
        actions,
        kind=PlanKind.SWITCHOVER,
        deadline=deadline,
        rollback=switchover_rollback(view, old, new, table),
    )


def switchover_rollback(view: ClusterView, old: str, new: str, table: str) -> tuple[Action, ...]:
    """Undoing a switchover stopped before its promotion: the old primary writable again, with
    its semi-sync source setting as it was (the fence turned it off), and the router back."""
    status = view.nodes[old].status
    assert status is not None
    rollback: tuple[Action, ...] = (
        SetWritable(old, True, semi_sync_source=status.semi_sync.source_enabled),
    )
    before = view.router.membership
    if before is not None and len(before.writers) == 1:
        rollback += (Route(before),)
    return (
        *rollback,
        Notify(
            AlertKind.SWITCHOVER_ROLLED_BACK,
            old,
            f"switchover to {new} rolled back",
            f"{old} is writable and the writer again",
            (("candidates", table),),
        ),
    )


def plan_maintenance(
    view: ClusterView, settings: Settings, node: str | None, on: bool
) -> tuple[Plan, ClusterView] | str:
    """Move ``node`` to (on) or from (off) the hidden group, or why it is refused; the view
    with the node in (or out of) maintenance, taken at once (the plan only routes)."""
    if node is None or node not in view.nodes:
        return f"unknown node {node!r}"
    if on and node == view.primary:
        return f"{node} is the primary: switch over first"
    if on and node in view.maintenance:
        return f"{node} is already in maintenance"
    if not on and node not in hidden_nodes(view):
        return f"{node} is not in maintenance"
    maintenance = view.maintenance | {node} if on else view.maintenance - {node}
    new_view = with_maintenance(view, maintenance, settings)
    current = view.router.membership
    if settings.router.kind == "none" or current is None or view.primary is None:
        return Plan(
            "Maintenance",
            f"{node} maintenance {'on' if on else 'off'} (no router change possible now)",
            kind=PlanKind.MAINTENANCE,
        ), new_view
    hidden = (current.hidden | maintenance) - ({node} if not on else set())
    if on:
        desired = Membership(
            current.writers - {node}, current.readers - {node}, current.broken - {node}, hidden
        )
    else:
        # Out of every routed group whatever the reading said (it may predate the hiding):
        # broken until healthy, then the routing rule makes it a reader.
        desired = Membership(
            current.writers - {node}, current.readers - {node}, current.broken | {node}, hidden
        )
    verb = "hidden (maintenance)" if on else "back from maintenance (broken until healthy)"
    plan = Plan(
        "Maintenance",
        f"{node} {verb} at an operator's request",
        (Route(desired, hidden_change=True),),
        kind=PlanKind.MAINTENANCE,
    )
    return plan, new_view
