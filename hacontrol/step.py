"""step(model, event, settings, now) -> (model, effects): the whole controller, pure.

For every event, in order: log it; fold it into the view; note fresh facts for the settle wait
and when the primary began failing; log the view's changes; react to a plan's result or an
operator command; ask for fast re-probes; then, when no plan runs, decide the next plan. A probe
or a keepalive that changed no fact, or a tick, in a cluster as desired with nothing pending,
stops after the fold and the lease's rules (``quiet``, ``steady_lease``): everything after them
would give what it gave last time. Every
policy is a named rule (``hacontrol.rules``); nothing here does I/O or reads a clock: ``now``
is the controller's monotonic clock when it handles the event (an event's own ``at`` is when it
was observed, a probe's start, up to a probe timeout earlier).

``boot`` makes the first model from what the journal kept.
"""

from __future__ import annotations

from dataclasses import replace

from hacontrol.decide import NOTHING, decide
from hacontrol.effects import (
    CancelPlan,
    Effect,
    PersistState,
    Reprobe,
    SendAlert,
    StartPlan,
    Step,
    log,
)
from hacontrol.events import (
    CallerGone,
    Event,
    JournalStatus,
    LeaseObserved,
    OperatorCommand,
    PlanFinished,
    ProbeResult,
    RouterProbeResult,
    Stop,
    Tick,
)
from hacontrol.frozen import evolve
from hacontrol.loglines import change_lines, event_lines, summary_line
from hacontrol.model import Intent, Lease, Model, Persisted, Summary, persisted
from hacontrol.plan import Notify, Plan, PlanKind
from hacontrol.rules.commands import STOPPING, caller_gone, command, refuse_deferred, run_deferred
from hacontrol.rules.failure import left_to_the_journal, reprobe_targets
from hacontrol.rules.journal import journal_status, refusal
from hacontrol.rules.lease import failover_seen, leader_seen, lease_update
from hacontrol.rules.lifecycle import log_decision, plan_id, start
from hacontrol.rules.outcomes import plan_finished
from hacontrol.rules.resume import may_resume, resume
from hacontrol.settings import Settings
from hacontrol.spread import fraction_of
from hacontrol.view import ClusterView, Code, fold, with_maintenance


def step(model: Model, event: Event, settings: Settings, now: float) -> Step:
    """Everything the controller does with one event. Pure."""
    observed = observe(model, event, settings)
    if quiet(model, observed, event, now):
        calm = steady_lease(model, observed, event, settings, now)
        if calm is not None:
            return summarize(calm, event_lines(event, model.view), event, settings, now)
    return summarize(*respond(model, observed, event, settings, now), event, settings, now)


def full_step(model: Model, event: Event, settings: Settings, now: float) -> Step:
    """``step`` without its ``quiet`` shortcut: every part, every time (the reference the
    shortcut is tested against)."""
    stepped = respond(model, observe(model, event, settings), event, settings, now)
    return summarize(*stepped, event, settings, now)


def summarize(
    model: Model, effects: tuple[Effect, ...], event: Event, settings: Settings, now: float
) -> Step:
    """On a tick, every ``log.summary_every`` seconds: the ``cluster_summary`` line. The first
    one comes between half a period and a period after the first tick, at a point drawn from
    the cluster's name, so that the clusters of one process write theirs spread over the
    period, not all in the same second (``spread``)."""
    every = settings.log.summary_every
    if not isinstance(event, Tick) or every <= 0:
        return model, effects
    probes = sum(node.probes for node in model.view.nodes.values())
    if model.summary is None:
        first = every * (1 + fraction_of(settings.cluster.name)) / 2
        return evolve(model, summary=Summary(now + first, probes)), effects
    if now < model.summary.due:
        return model, effects
    state = model.state
    fields: dict[str, object] = {
        "halted": state.halt.reason if state.halt is not None else None,
        "paused": state.paused,
        "maintenance": sorted(model.view.maintenance),
        "plan": model.running.plan_id if model.running is not None else None,
        "last_decision": model.last_logged[0] if model.last_logged is not None else None,
    }
    line = summary_line(model.view, fields, probes - model.summary.probes)
    return evolve(model, summary=Summary(now + every, probes)), (*effects, line)


def respond(before: Model, model: Model, event: Event, settings: Settings, now: float) -> Step:
    """Everything after the fold: log, react, ask for re-probes, decide."""
    effects: list[Effect] = [
        *event_lines(event, before.view),
        *change_lines(before.view, model.view),
    ]
    model, seen = failover_seen(before.view, model, settings, now)
    effects += seen
    model, leased = lease_update(model, event, settings, now)
    effects += leased
    model, reacted = react(model, event, settings, now)
    effects += reacted
    if targets := reprobe_targets(before.view, event, settings):
        node = getattr(event, "node", None)
        cause = type(event).__name__
        effects.append(log("fast_reprobe", node, "info", nodes=sorted(targets), cause=cause))
        effects.append(Reprobe(targets))
    model, decided = next_plan(model, settings, now)
    effects += decided
    return model, with_persisted(persisted(before), model, effects)


def observe(model: Model, event: Event, settings: Settings) -> Model:
    """The view after the event, and the facts the other rules time things by."""
    view = fold(model.view, event, settings)
    settle = model.settle
    # A failed reading is no fresh fact (the router's membership is kept from before).
    if isinstance(event, ProbeResult | RouterProbeResult) and event.ok and event.at >= settle.since:
        seen = event.node if isinstance(event, ProbeResult) else "router"
        if seen in settle.waiting:
            settle = replace(settle, waiting=settle.waiting - {seen})
    failing = model.primary_failing_since
    if isinstance(event, ProbeResult) and event.node == model.view.primary:
        failing = None if event.ok else (failing if failing is not None else event.at)
    return evolve(model, view=view, settle=settle, primary_failing_since=failing)


def quiet(before: Model, after: Model, event: Event, now: float) -> bool:
    """A probe (of a node or of the router) or a keepalive that changed no fact (``fold`` did
    not derive the view again), or a tick, in a cluster as desired with nothing pending: the
    rest of the step would give what it gave last time, the lease aside (``steady_lease``).

    It would: no view change to log, no re-probe (asked for on failed probes only), nothing to
    react to, and the decision is "Nothing" again, for no rule can fire on the same facts and
    the same state in a cluster as desired (no problem, halt, quarantine, pause, settle wait,
    deferred command, plan running or to resume, and no retry, of the router or of a plan,
    that was still waiting for its time when it last decided;
    no replica of NULL lag, whose readiness to serve reads moves with the GTID positions).
    ``tests/test_step_quiet.py`` compares both ways over random event sequences."""
    view = before.view
    state = before.state
    return (
        isinstance(event, ProbeResult | RouterProbeResult | LeaseObserved | Tick)
        and after.view.generation == view.generation
        and before.last_logged is not None
        and before.last_logged[0] == NOTHING
        and not view.problems
        and not view.lag_unknown
        and before.acting
        and before.running is None
        and before.resume is None
        and not before.deferred
        and not before.stopping
        and not before.settle.waiting
        and state.halt is None
        and not state.quarantined
        and not state.paused
        and before.decided_at is not None
        and before.decided_at >= state.route_retry_at
        and all(before.decided_at >= at for at in state.retry_at.values())
    )


def steady_lease(
    before: Model, after: Model, event: Event, settings: Settings, now: float
) -> Model | None:
    """In a quiet step, the model with the lease the whole step would give, when that lease
    says what it said (only the edge's last random draw may move) and lets this instance act
    now exactly when it let it act at the last decision; None otherwise (the whole path).

    The lease is the only part of a quiet step that moves with time alone (a lock's validity
    ends V after its keepalive was sent, a new leader acts from ``ready_at``): its rules run on
    every event, cheaply, and everything after them (the decision) only when they change
    something. Alone (no fleet) the lease never moves."""
    if not before.lease.fleet:
        return after
    leased, effects = lease_update(after, event, settings, now)
    lease, was = leased.lease, before.lease
    if effects or (lease is not was and evolve(lease, jitter=was.jitter) != was):
        return None
    assert before.decided_at is not None  # quiet() checked it
    if lease.acting(now) != was.acting(before.decided_at):
        return None
    return leased


def react(model: Model, event: Event, settings: Settings, now: float) -> Step:
    match event:
        case PlanFinished():
            model, finished = plan_finished(model, event, settings, now)
            model, deferred = run_deferred(model, settings, now)
            return model, (*finished, *deferred)
        case OperatorCommand():
            return command(model, event, settings, now)
        case CallerGone():
            return caller_gone(model, event)
        case JournalStatus():
            return journal_status(model, event, now)
        case Stop():
            return refuse_deferred(replace(model, stopping=True), STOPPING)
    return model, ()


def next_plan(model: Model, settings: Settings, now: float) -> Step:
    """When no plan runs: decide, and start the plan (or send its alerts). An instance of a
    fleet that is not the leader (or not yet acting) changes no database node: it routes its
    own router, and alerts only when no instance leads. While a rebuild runs: whether a
    failover preempts it."""
    if model.running is not None and model.acting and not model.stopping:
        return preempt(model, settings, now)
    if not model.acting or model.running is not None or model.stopping or settling(model, now):
        return model, ()
    if model.deferred:  # commands that waited for a takeover to complete, or the lease lost
        model, effects = run_deferred(model, settings, now)
        if effects:
            return model, effects
    acting = model.lease.acting(now)
    decision = decide(model.view, model.state, settings, now, leads=acting)
    model = evolve(model, decided_at=now)
    plan = decision.plan
    if may_resume(model, plan, now):
        return resume(
            model,
            plan,
            now,
            lambda state: decide(model.view, state, settings, now, leads=acting).plan,
        )
    if plan.rule == "NotLeader":
        return log_decision(model, not_leader(model, plan, now), now)
    decision = left_to_the_journal(model.resume, model.state, decision)
    plan = decision.plan
    if withheld := refusal(plan, model.state.journal):
        return log_decision(model, withheld, now)
    model, logged = log_decision(replace(model, state=decision.state), plan, now)
    if not plan.actions:
        return model, logged
    alerts = tuple(a for a in plan.actions if isinstance(a, Notify))
    if alerts and model.lease.fleet and not acting and leader_seen(model.view, settings):
        plan = replace(plan, actions=tuple(a for a in plan.actions if not isinstance(a, Notify)))
        alerts = ()
        logged = (*logged, log("alert_left_to_leader", None, "info", rule=plan.rule))
    if not plan.changes_cluster:  # alerts only: to the notifier now
        sent = tuple(SendAlert(a, plan, a.kind.halts) for a in alerts)
        return model, (*logged, *sent)
    model, started = start(model, plan_id(model, plan, now), plan, now)
    return model, (*logged, *started)


def preempt(model: Model, settings: Settings, now: float) -> Step:
    """A rebuild may run for hours; a failover never waits for it: the rebuild is stopped (it
    undoes what it did, its node stays out of service) and the failover is decided again when
    it has reported back."""
    running = model.running
    if running is None or running.plan.kind is not PlanKind.REBUILD or running.preempted:
        return model, ()
    wanted = decide(model.view, model.state, settings, now, leads=model.lease.acting(now)).plan
    if wanted.kind is not PlanKind.FAILOVER or not model.lease.allows(wanted, now):
        return model, ()
    reason = f"preempted by {wanted.rule}: {wanted.reason}"
    model = replace(model, running=replace(running, preempted=reason))
    line = log("plan_preempted", None, "warning", plan=running.plan_id, reason=reason)
    return model, (line, CancelPlan(running.plan_id, reason))


def settling(model: Model, now: float) -> bool:
    """After a plan, wait (bounded) for fresh facts about what it touched, or the same plan is
    re-made from the stale view. A dead primary never waits when this instance may fail it
    over (its failover reads what it needs fresh); without quorum, or in a fleet's instance
    that does not act, no failover follows, and the routing plans it may make wait too (a
    Route re-made from a router not yet read back was repeated back to back)."""
    settle = model.settle
    if not settle.waiting or now >= settle.until:
        return False
    view = model.view
    return not (view.has(Code.DEAD_PRIMARY) and view.quorum.ok and model.lease.acting(now))


def not_leader(model: Model, withheld: Plan, now: float) -> Plan:
    """Not the leader (or not acting yet): a plan that changes database nodes is withheld."""
    lease = model.lease
    if lease.leader_since is not None and lease.ready_at is not None and now < lease.ready_at:
        why = f"taking over: acting in {lease.ready_at - now:.2f} s"
    elif lease.leader_since is not None and lease.unprobed:
        why = f"taking over: waiting for fresh probes of {', '.join(sorted(lease.unprobed))}"
    else:
        why = f"not the leader: {lease.reason}"
    return Plan("NotLeader", f"{why}; withheld {withheld.reason}")


def with_persisted(before: Persisted, model: Model, effects: list[Effect]) -> tuple[Effect, ...]:
    """The state that outlives a restart, written when it changed: before a plan starts."""
    after = persisted(model)
    if after == before:
        return tuple(effects)
    at = next((i for i, e in enumerate(effects) if isinstance(e, StartPlan)), len(effects))
    return (*effects[:at], PersistState(after), *effects[at:])


def boot(
    view: ClusterView,
    settings: Settings,
    *,
    kept: Persisted | None,
    unfinished: Intent | None,
    acknowledge_block: bool,
    paused: bool,
    acting: bool,
    wall_offset: float,
) -> Step:
    """The first model: the view with what the journal kept, and the start-up flags."""
    lease = Lease(fleet=True, reason="starting") if settings.controller.fleet else Lease()
    model = Model(view, acting=acting, wall_offset=wall_offset, lease=lease)
    if kept is not None:
        model = restored(model, kept, settings)
    before = persisted(model)
    effects: list[Effect] = []
    if acknowledge_block and model.state.blocked_until is not None:
        model = replace(model, state=replace(model.state, blocked_until=None))
        effects.append(
            log("recovery_block_acknowledged", None, "warning", reason="--ack given at start-up")
        )
    if unfinished is not None:
        model, more = unfinished_at_boot(model, unfinished)
        effects += more
    if paused and not model.state.paused:
        model = replace(model, state=replace(model.state, paused=True))
        reason = "--paused: observing only until `hacontrol resume`"
        effects.append(log("paused_at_start", None, "warning", reason=reason))
    return model, with_persisted(before, model, effects)


def unfinished_at_boot(model: Model, unfinished: Intent) -> Step:
    """A journaled plan that began before this instance stopped: finished before anything
    new; in a fleet another instance may have acted since, so the live topology decides
    instead (docs/fleet.md): the journal's plan is closed once the view allows a decision
    (``rules.resume.left_to_the_fleet``)."""
    reason = "a plan began before the controller stopped; " + (
        "in a fleet another instance may have acted since: the live topology decides, unless "
        "it shows exactly where this plan stopped (then this instance finishes, rolls back or "
        "waits for it once it leads)"
        if model.lease.fleet
        else "it is settled before anything new (finished, rolled back, waited for or closed, "
        "as the view shows)"
    )
    line = log(
        "journal_unfinished",
        None,
        "warning",
        plan=unfinished.plan_id,
        rule=unfinished.plan.rule,
        done_steps=sorted(unfinished.done),
        reason=reason,
    )
    return replace(model, resume=unfinished), (line,)


def restored(model: Model, kept: Persisted, settings: Settings) -> Model:
    state = replace(
        model.state,
        paused=kept.paused,
        blocked_until=kept.blocked_until,
        last_failover_at=kept.last_failover_at,
        quarantined=dict(kept.quarantined),
        consents=kept.consents,
    )
    view = with_maintenance(model.view, kept.maintenance, settings)
    return replace(model, state=state, view=view)
