"""Starting a plan and recording a decision: the bookkeeping every rule over the model shares.

A plan's id is its kind and the wall-clock time in milliseconds; a failover remembers how long
detection took. A decision is logged with its rule and reason (an idle decision unchanged in
substance, its counts and times aside, only once) and kept in the model's last decisions.
"""

from __future__ import annotations

import re
from dataclasses import replace

from hacontrol.effects import Log, StartPlan, Step, log
from hacontrol.events import OperatorCommand, PlanFinished
from hacontrol.model import Model, Running
from hacontrol.plan import Plan, PlanKind

KEPT_DECISIONS = 20


def plan_id(model: Model, plan: Plan, now: float) -> str:
    """The plan's name in the log, the journal and the answers: its kind, its cluster and the
    wall-clock millisecond it started. The cluster makes it unique in a process that runs
    several (two clusters losing their primaries together decide in the same millisecond)."""
    return f"{plan.kind}-{model.view.cluster}-{int((now + model.wall_offset) * 1000)}"


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


VOLATILE = re.compile(
    r"(?<![\w.:-])\d+(?:\.\d+)?(?= ?(?:ms|s)\b)"  # a time: "after 2.5 s", "300ms"
    r"|(?<![\w.:-])\d+(?= consecutive\b)"  # a count: "8 consecutive failed probes"
    r"|(?<![\w.:/-])\d+(?=/\d)"  # a count of a threshold: "probe failed 2/3"
)
"""A count or a time in a reason; never a bare number, which may be a node's name ("1" is
one), nor one inside a name, a GTID, an address or a version ("node1", "0-1-100",
"127.0.0.1:3306")."""


def substance(reason: str) -> str:
    """What a reason says, without how often or how long: a reason that differs from the last
    one only in its counts and times is the same decision (not one line per probe)."""
    return VOLATILE.sub("#", reason)


def log_decision(model: Model, plan: Plan, now: float, *, force: bool = False) -> Step:
    """One decision line, and the decision kept in the model's last ones; an idle decision
    (no action) the same in substance as the last one logged is not logged again."""
    key = (plan.rule, substance(plan.reason))
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
