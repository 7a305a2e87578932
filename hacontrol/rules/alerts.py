"""Alerts: each condition alerts once and is forgotten when it is gone, so that it alerts again
if it returns. A paused controller withholds changes, never alerts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from hacontrol.model import AlertKey, Condition, ControllerState, Decision
from hacontrol.plan import AlertKind, Notify, Plan, PlanKind
from hacontrol.rules.doubt import consent_lasts
from hacontrol.rules.lease import holds_majority
from hacontrol.settings import Settings
from hacontrol.view import ClusterView, Code


def alert_once(state: ControllerState, key: AlertKey, plan: Plan, alert: Notify) -> Decision:
    if key in state.alerted:
        return Decision(
            replace(plan, actions=tuple(a for a in plan.actions if not isinstance(a, Notify))),
            state,
        )
    return Decision(
        replace(plan, actions=(*plan.actions, alert)), replace(state, alerted=state.alerted | {key})
    )


def leader_unknown(view: ClusterView, settings: Settings, now: float) -> bool:
    """A fleet instance that does not lead and cannot tell yet whether another does: the lock
    of a node its probes reach is unknown (its lease session there is not open again: right
    after a partition heals, the probes come back before the lease sessions do). A leader may
    be fixing what it sees (fencing the old primary); an alert now may be a false alarm."""
    if not settings.controller.fleet or holds_majority(view, settings, now):
        return False
    return any(
        (lock := view.locks.get(name)) is None or not lock.known
        for name, node in view.nodes.items()
        if node.reachable
    )


def alert_unless_a_leader_may_act(
    view: ClusterView,
    state: ControllerState,
    settings: Settings,
    now: float,
    key: AlertKey,
    decision: Decision,
) -> Decision:
    """``decision`` (an ``alert_once``) as it is, or without its alert while this fleet
    instance cannot tell whether another leads (``leader_unknown``) and the condition is
    younger than W plus the lease back-off: by then its lease sessions are open again (a
    leader seen: the alert is the leader's job, ``step``) or none leads and the alert is true.
    The plan itself (a halt of this instance's changes) is kept."""
    if key in state.alerted or not leader_unknown(view, settings, now):
        return decision
    since = state.first_seen.get(key)
    bound = settings.lease.wait_timeout + settings.lease.backoff
    if since is not None and now - since >= bound:
        return decision
    plan = decision.plan
    quiet = replace(plan, actions=tuple(a for a in plan.actions if not isinstance(a, Notify)))
    first_seen = {**state.first_seen, key: now if since is None else since}
    held = replace(decision.state, alerted=decision.state.alerted - {key}, first_seen=first_seen)
    return Decision(quiet, held)


def paused(withheld: Plan, state: ControllerState) -> Decision:
    """Paused: the change is withheld (and its state not taken); alerts still go out, once."""
    plan = Plan(
        "Paused",
        f"paused by an operator: not doing {withheld.rule} ({withheld.reason})",
        kind=PlanKind.ALERT,
    )
    alert = Notify(
        AlertKind.PAUSED_CHANGE_WITHHELD, None, f"paused: {withheld.rule} withheld", plan.reason
    )
    return alert_once(state, AlertKey(Condition.PAUSED, withheld.rule), plan, alert)


def _primary_read_only(view: ClusterView) -> bool:
    node = view.nodes.get(view.primary) if view.primary else None
    return bool(node and node.reachable and node.status and node.status.read_only)


def refusal_subject(primary: str, node: str, what: str) -> str:
    """The subject of a PublishRefused alert's key: the primary, and the node that stops its
    publication and how (ahead of it, or unreadable)."""
    return f"{primary} {what} {node}"


def _unpublished(view: ClusterView, subject: str) -> bool:
    """A fleet's primary that no lock publishes (``rule_publish`` refused it); ``subject``:
    a ``refusal_subject``, whose first word is the primary."""
    node = subject.split(" ", 1)[0]
    return bool(node) and view.primary == node and view.published != node


Alive = Callable[[ClusterView, ControllerState, str], bool]

LASTS_WHILE: Mapping[Condition, Alive] = {
    Condition.NO_QUORUM: lambda view, state, subject: not view.quorum.ok,
    Condition.HALT: lambda view, state, code: any(p.code.value == code for p in view.problems),
    # While the primary is lost: a late probe round of the replicas (no witness for a moment:
    # UnreachablePrimary) does not end it (it mailed again within seconds).
    Condition.FAILOVER_BLOCKED: lambda view, state, subject: (
        view.has(Code.DEAD_PRIMARY) or view.has(Code.UNREACHABLE_PRIMARY)
    ),
    Condition.NO_CANDIDATE: lambda view, state, subject: view.has(Code.DEAD_PRIMARY),
    Condition.UNREACHABLE_PRIMARY: lambda view, state, s: view.has(Code.UNREACHABLE_PRIMARY),
    Condition.FAILOVER_UNDER_WAY: lambda view, state, s: (
        view.has(Code.DEAD_PRIMARY) or view.has(Code.UNREACHABLE_PRIMARY)
    ),
    Condition.ERRANT: lambda view, state, node: node in state.quarantined,
    Condition.ERRANT_REPLICA: lambda view, state, node: any(p.node == node for p in view.problems),
    Condition.WRITER_MISMATCH: lambda view, state, s: view.has(Code.ROUTER_WRITER_IS_NOT_PRIMARY),
    Condition.NO_PRIMARY: lambda view, state, s: (
        view.has(Code.NO_PRIMARY) or _primary_read_only(view) or _unpublished(view, s)
    ),
    Condition.PAUSED: lambda view, state, subject: state.paused,
}
"""Each condition that alerts, and what keeps it alive (its key is forgotten otherwise)."""


def lasts(key: AlertKey, view: ClusterView, state: ControllerState) -> bool:
    return LASTS_WHILE[key.condition](view, state, key.subject)


def prune(view: ClusterView, state: ControllerState) -> ControllerState:
    """Forget alerts and halts whose condition is gone, so they fire again if it returns."""
    alerted = frozenset(key for key in state.alerted if lasts(key, view, state))
    first_seen = {k: v for k, v in state.first_seen.items() if lasts(k, view, state)}
    halt = state.halt
    # A halt about the dead primary (no candidate, a failover step failed) lasts while the
    # primary is dead; the others while their problem is seen.
    about_dead = halt is not None and halt.code == "FailoverFailed"
    codes = {p.code.value for p in view.problems}
    if (
        halt is not None
        and halt.code not in codes
        and not (about_dead and view.has(Code.DEAD_PRIMARY))
    ):
        halt = None
    consents = tuple(c for c in state.consents if consent_lasts(view, c))  # incident over
    return replace(state, alerted=alerted, halt=halt, first_seen=first_seen, consents=consents)
