"""decide(view, state, settings, now) -> Decision: what to do next. Pure: no I/O, no clock.

The automatic rules sit in one prioritized table (``RULES``); the first rule that applies
makes the plan. The rules themselves live in ``hacontrol/rules/`` by concern.
Every plan carries the rule's name and a one-line reason, which the controller logs and tests
assert. The controller state (halts, recovery block, quarantined old primaries, alerts already
sent) is an explicit frozen record, returned updated with the plan.

Safety first: without quorum nothing changes; two writers (in the router or among the servers)
halts every automatic change until the condition is gone; a primary is failed over only when
the view says ``DeadPrimary`` (the controller cannot reach it AND no replica still has a working
link to it); a candidate is promoted only after it applied everything it received.
"""

from __future__ import annotations

from collections.abc import Callable

from hacontrol.model import ControllerState, Decision
from hacontrol.plan import Plan
from hacontrol.rules.alerts import paused, prune
from hacontrol.rules.failure import (
    rule_dead_primary,
    rule_io_stopped_by_a_failover,
    rule_no_primary,
    rule_unreachable_primary,
)
from hacontrol.rules.guards import rule_halted, rule_no_quorum, rule_startup_grace, rule_two_writers
from hacontrol.rules.journal import refusal
from hacontrol.rules.recovery import (
    rule_attach_detached,
    rule_fence_returning_primary,
    rule_old_primary,
    rule_repoint_stray,
)
from hacontrol.rules.routing import rule_publish, rule_route
from hacontrol.settings import Settings
from hacontrol.view import ClusterView

NOTHING = "Nothing"
NOT_LEADER = "NotLeader"

Rule = Callable[[ClusterView, ControllerState, Settings, float], Decision | None]


RULES: tuple[tuple[str, Rule], ...] = (
    ("StartupGrace", rule_startup_grace),  # first: before any probe every node is unknown
    ("NoQuorum", rule_no_quorum),
    ("FenceReturningPrimary", rule_fence_returning_primary),
    ("TwoWriters", rule_two_writers),
    ("Halted", rule_halted),
    ("DeadPrimary", rule_dead_primary),
    ("ReplicaIOStopped", rule_io_stopped_by_a_failover),  # fleet: a failover's leader died
    ("UnreachablePrimary", rule_unreachable_primary),
    ("NoPrimary", rule_no_primary),
    ("Publish", rule_publish),  # fleet: before repointing, so that writes resume at once
    ("OldPrimary", rule_old_primary),
    ("RepointStray", rule_repoint_stray),
    ("RejoinDetached", rule_attach_detached),  # a read-only node left by a cut promotion
    ("RouteReconcile", rule_route),
)


def decide(
    view: ClusterView, state: ControllerState, settings: Settings, now: float, *, leads: bool = True
) -> Decision:
    """The next plan and the state after it. Pure.

    ``leads``: this instance may change database nodes (always, unless a fleet's lease says
    otherwise). When it may not, a rule whose plan changes nodes is passed over, so that the
    next rule applies (a follower still routes its own router); what was withheld is the
    answer when nothing else applies.

    A journaled plan that must wait for the journal (``rules.journal``: a rejoin) holds up
    nothing below it: the first rule after it that acts or alerts decides; otherwise the wait
    is the decision."""
    state = prune(view, state)
    waiting: Decision | None = None
    not_led: Plan | None = None
    for _, rule in RULES:
        decision = rule(view, state, settings, now)
        if decision is None:
            continue
        if not leads and decision.plan.changes_nodes:
            not_led = not_led or decision.plan
            continue
        if state.paused and decision.plan.changes_cluster:
            return paused(decision.plan, state)
        if withheld := refusal(decision.plan, state.journal):
            waiting = waiting or Decision(withheld, state)
            continue
        return waiting if waiting is not None and not decision.plan.actions else decision
    if waiting is not None:
        return waiting
    if not_led is not None:
        return Decision(Plan(NOT_LEADER, f"{not_led.rule}: {not_led.reason}"), state)
    return Decision(Plan(NOTHING, nothing_reason(view)), state)


def nothing_reason(view: ClusterView) -> str:
    """ "As desired" only when the view holds no problem; otherwise the problems that stand
    with no automatic change for them (each alerted by its rule, or left to an operator)."""
    if not view.problems:
        return "cluster as desired; nothing to do"
    standing = ", ".join(f"{p.code.value}({p.node or 'cluster'})" for p in view.problems)
    return f"no automatic change applies; problems stand: {standing}"
