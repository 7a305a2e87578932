"""Starting a plan and recording a decision: the bookkeeping every rule over the model shares.

A plan's id is its kind and the wall-clock time in milliseconds; a failover remembers how long
detection took. A decision is logged with its rule and reason (an unchanged idle decision only
once) and kept in the model's last decisions.
"""

from __future__ import annotations

from dataclasses import replace

from hacontrol.effects import Log, StartPlan, Step, log
from hacontrol.events import OperatorCommand, PlanFinished
from hacontrol.model import Model, Running
from hacontrol.plan import Plan, PlanKind

KEPT_DECISIONS = 20


def plan_id(model: Model, plan: Plan, now: float) -> str:
    return f"{plan.kind}-{int((now + model.wall_offset) * 1000)}"


def start(
    model: Model,
    plan_id: str,
    plan: Plan,
    now: float,
    *,
    command: OperatorCommand | None = None,
    skip: frozenset[int] = frozenset(),
    resumed: bool = False,
) -> Step:
    """The plan runs from now on (one at a time); ``command`` waits for its outcome."""
    failover = plan.kind is PlanKind.FAILOVER
    detect = (
        now - model.primary_failing_since
        if failover and model.primary_failing_since is not None
        else None
    )
    running = Running(plan_id, plan, skip, resumed, command, detect)
    line = log(
        "plan_started",
        None,
        "warning" if failover else "info",
        plan=plan_id,
        rule=plan.rule,
        kind=plan.kind,
        reason=plan.reason,
        actions=[type(a).__name__ for i, a in enumerate(plan.actions) if i not in skip],
    )
    return replace(model, running=running), (line, StartPlan(running))


def log_decision(model: Model, plan: Plan, now: float, *, force: bool = False) -> Step:
    key = (plan.rule, plan.reason)
    if not force and key == model.last_logged and not plan.actions:
        return model, ()
    level = "info" if plan.rule in ("Nothing", "StartupGrace", "NotLeader") else "warning"
    record = {
        "rule": plan.rule,
        "kind": plan.kind,
        "reason": plan.reason,
        "actions": [type(a).__name__ for a in plan.actions],
    }
    kept = (*model.decisions[-(KEPT_DECISIONS - 1) :], {"at": now + model.wall_offset, **record})
    line: Log = Log("decision", None, level, record)
    return replace(model, last_logged=key, decisions=kept), (line,)


def unreported(running: Running, error: str, at: float) -> PlanFinished:
    """The result of a plan whose executor failed before it could report (journal I/O, a
    bug): failed, with nothing known done."""
    plan = running.plan
    reason = f"the executor failed: {error}"
    return PlanFinished(at, running.plan_id, plan.rule, plan.kind, False, reason, None, (), 0.0)
