"""Operator commands (API and CLI), on the same queue as every other event. Every command gets
an answer: at once, when its plan finishes, or when the controller stops.

ack clears the recovery block (and a failed failover's halt); pause and resume stop and allow
automatic changes; maintenance and switchover are planned against the view as it is when they
run. One plan at a time: a command that needs a plan waits for the running one, in order, and
is dropped, never run late, when its caller stopped waiting. Neither is planned while the
journal's plan from before a restart is unfinished: that plan goes first, and the refusal says
what it waits for. While its half-done promotion waits for nodes it cannot read (a single
instance), ``maintenance NODE on`` for one of them is the operator's consent that NODE is down
or read-only: it is hidden, and the promotion is finished without it (``while_unfinished``).
"""

from __future__ import annotations

from dataclasses import replace

from hacontrol.effects import Effect, Reply, Step, log
from hacontrol.events import CallerGone, CommandResult, OperatorCommand
from hacontrol.model import ControllerState, Model
from hacontrol.plan import Plan, Rebuild, Route
from hacontrol.rules.doubt import give_consent, withdraw_consent
from hacontrol.rules.guards import rule_startup_grace
from hacontrol.rules.journal import refusal
from hacontrol.rules.lifecycle import log_decision, plan_id, start
from hacontrol.rules.planned import plan_maintenance, plan_switchover
from hacontrol.rules.rebuild import plan_rebuild
from hacontrol.rules.resume import waiting_for
from hacontrol.settings import Settings
from hacontrol.view import ClusterView

STOPPING = "the controller is stopping; a plan's outcome is in the log"


def command(model: Model, cmd: OperatorCommand, settings: Settings, now: float) -> Step:
    """One command: answered now, deferred behind the running plan, or started as a plan."""
    heard = log("operator_command", cmd.node, "warning", command=cmd.command, on=cmd.on)
    if model.stopping:
        return model, (heard, *answer(cmd, False, f"refused: {STOPPING}"))
    match cmd.command:
        case "ack":
            model, effects = ack(model, cmd)
        case "pause" | "resume":
            paused = cmd.command == "pause"
            model = replace(model, state=replace(model.state, paused=paused))
            text = (
                "paused: observing only, no automatic change"
                if paused
                else ("resumed: automatic changes allowed")
            )
            effects = answer(cmd, True, text)
        case "maintenance" | "switchover" | "rebuild" if unread_router(model, now):
            text = (
                "refused: the router was not read since the last plan routed it (its last "
                "reading is older than that plan's change); retry once it answers"
            )
            effects = answer(cmd, False, text)
        case "maintenance" | "switchover" | "rebuild" if model.resume is not None:
            model, effects = while_unfinished(model, cmd, settings, now)
        case "maintenance" | "switchover" | "rebuild" if (
            model.running is not None or taking_over(model, now) or stale(model, now)
        ):
            model, effects = defer(model, cmd, now)
        case "rebuild":
            model, effects = rebuild(model, cmd, settings, now)
        case "maintenance" | "switchover":
            model, effects = planned(model, cmd, settings, now)
        case _:
            effects = answer(cmd, False, f"unknown command {cmd.command!r}")
    return model, (heard, *effects)


def ack(model: Model, cmd: OperatorCommand) -> Step:
    """The recovery block is cleared: automatic failover armed; a failed failover's halt too."""
    halt = model.state.halt
    cleared = halt is not None and halt.code == "FailoverFailed"
    state = replace(model.state, blocked_until=None, halt=None if cleared else halt)
    extra = f"; halt cleared: {halt.reason}" if cleared and halt else ""
    text = f"recovery block cleared: automatic failover armed{extra}"
    return replace(model, state=state), answer(cmd, True, text)


def while_unfinished(model: Model, cmd: OperatorCommand, settings: Settings, now: float) -> Step:
    """The journal's plan from before the restart goes first: an operator's plan run before
    it would be undone or redone over by it (two writers). One exception: while its half-done
    promotion waits for nodes it cannot read (``rules.resume.half_done_waits``, a single
    instance), ``maintenance NODE on`` for one of them (not its candidate) is the operator's
    consent that NODE is down or read-only: NODE is hidden (journaled with the state, as any
    maintenance) and the promotion is finished without it at the next decision. Sent while
    another consent's routing runs, it waits for it (then decided again)."""
    intent = model.resume
    assert intent is not None
    blocked = not_deciding(model, settings, now)
    waits = () if blocked else waiting_for(model, intent)
    candidate = intent.plan.promote.node if intent.plan.promote else None
    if cmd.command != "maintenance" or not cmd.on or cmd.node not in waits or cmd.node == candidate:
        return model, answer(cmd, False, f"refused: {unfinished(model, waits, blocked)}")
    if model.running is not None or stale(model, now):  # the router read after the last plan
        return defer(model, cmd, now)
    outcome = plan_maintenance(model.view, settings, cmd.node, True)
    if isinstance(outcome, str):
        return model, answer(cmd, False, f"refused: {outcome}")
    plan, view = outcome
    consent = (
        f"consent: {cmd.node} is taken as down or read-only (no writer made since); "
        f"{intent.plan_id}'s half-done promotion of {candidate} goes on without it"
    )
    # No plan ran since the restart (the journal's goes first): the router's last reading is
    # current, and it has no writer while the promotion waits; hiding NODE keeps it so.
    actions = tuple(
        replace(a, no_writer=not a.desired.writers) if isinstance(a, Route) else a
        for a in plan.actions
    )
    plan = replace(plan, reason=f"{plan.reason}; {consent}", actions=actions)
    return started(
        model, cmd, plan, settings, now, view=view, say_now=f"{cmd.node} hidden; {consent}"
    )


def not_deciding(model: Model, settings: Settings, now: float) -> str | None:
    """Why the journal's plan is not decided now (nothing waits yet), or None."""
    if model.state.paused:
        return "paused: `hacontrol resume` lets it go on"
    if grace := rule_startup_grace(model.view, model.state, settings, now):
        return f"start-up grace: {grace.plan.reason}"
    if not model.view.quorum.ok:
        return f"no quorum: {model.view.quorum.describe()}"
    return None


def unfinished(model: Model, waits: tuple[str, ...] = (), blocked: str | None = None) -> str:
    """Why no operator plan now, and what the journal's plan from before the restart waits
    for: ``waits``, the nodes its half-done promotion waits to read, or ``blocked``, why it is
    not decided yet."""
    intent = model.resume
    assert intent is not None
    candidate = intent.plan.promote.node if intent.plan.promote else None
    if blocked is not None:
        wait = f"it goes first; not decided yet, {blocked}"
    elif waits == (candidate,):
        wait = (
            f"it waits to read its candidate {candidate}, which may be writable: "
            "HalfDonePromotion; troubleshooting.md, 'A half-done promotion'"
        )
    elif waits:
        wait = (
            f"it waits for {', '.join(waits)} to answer: HalfDonePromotion; "
            "`hacontrol maintenance NODE on` for such a node is consent that it is down or "
            "read-only, and the promotion goes on without it"
        )
    else:
        wait = "it goes first"
    return f"{intent.plan_id} began before the restart and is not finished yet ({wait})"


def stale(model: Model, now: float) -> bool:
    """Right after a plan a command waits (bounded: ``Settle.until``) for fresh facts about
    what the plan touched, a dead primary or not: planned from the router read while a
    failover ran (the old primary its writer, or none after the fence), a maintenance routed
    that reading back over the failover's Route."""
    return bool(model.settle.waiting) and now < model.settle.until


def unread_router(model: Model, now: float) -> bool:
    """The settle wait after a plan that routed is over and the router still not read (its
    probes fail): a plan made now would route its reading from before that plan."""
    return "router" in model.settle.waiting and now >= model.settle.until


def taking_over(model: Model, now: float) -> bool:
    """This instance leads its fleet but does not act yet (the old leader's lease is running
    out): a command waits for it, rather than being refused."""
    lease = model.lease
    return lease.fleet and lease.leader_since is not None and not lease.acting(now)


def defer(model: Model, cmd: OperatorCommand, now: float) -> Step:
    """One plan at a time: the command waits for the running plan (or for a new leader to act,
    or for fresh facts after a plan: ``stale``), then is planned against the view as it is
    then (the caller's own timeout bounds the wait)."""
    running = model.running.plan_id if model.running else "taking over the lease"
    if model.running is None and not taking_over(model, now):
        running = "fresh facts about what the last plan touched"
    line = log("operator_command_deferred", cmd.node, "info", command=cmd.command, running=running)
    return replace(model, deferred=(*model.deferred, cmd)), (line,)


def planned(model: Model, cmd: OperatorCommand, settings: Settings, now: float) -> Step:
    """A switchover or maintenance: refused with the reason, or its plan started. Only the
    leader changes a node (a follower routes: maintenance)."""
    if cmd.command == "maintenance":
        return maintenance(model, cmd, settings, now)
    plan = plan_switchover(model.view, model.state, settings, cmd.node, now)
    return started(model, cmd, plan, settings, now)


def maintenance(model: Model, cmd: OperatorCommand, settings: Settings, now: float) -> Step:
    """Maintenance on or off. On, for a node a failover waits for (or halted on), it also
    records the operator's consent to fail over without it (``rules.doubt``), accepted when
    the node is in maintenance already; only where it counts: an instance that does not lead
    its fleet hides as asked and says the consent must go to the leader. Off withdraws the
    node's consents."""
    consent = give_consent(model.view, model.state, settings, cmd.node, now) if cmd.on else None
    if isinstance(consent, str):
        return model, answer(cmd, False, f"refused: {consent}")
    hidden = cmd.node in model.view.maintenance
    if consent is not None and not model.lease.acting(now):
        note = (
            f"consent NOT recorded: this instance does not lead the fleet ({model.lease.reason}); "
            f"send `hacontrol maintenance {cmd.node} on` to the leader"
        )
        if hidden:
            return model, answer(cmd, False, f"refused: {note}")
        consent = None
        say_now: str | None = f"{cmd.node} hidden on this instance's router; {note}"
    elif consent is not None and hidden:
        state, text = consent
        model, logged = log_decision(model, Plan("FailoverConsent", text), now, force=True)
        return replace(model, state=state), (*logged, *answer(cmd, True, text))
    else:
        say_now = consent[1] if consent is not None else None
    outcome = plan_maintenance(model.view, settings, cmd.node, bool(cmd.on))
    if isinstance(outcome, str):
        return started(model, cmd, outcome, settings, now)
    plan, view = outcome
    state = consent[0] if consent is not None else model.state
    if not cmd.on:
        state = withdraw_consent(state, cmd.node)
    if say_now is not None:  # answered at once: the consent (or why not); the hiding follows
        plan = replace(plan, reason=f"{plan.reason}; {say_now}")
    return started(model, cmd, plan, settings, now, view=view, state=state, say_now=say_now)


def started(
    model: Model,
    cmd: OperatorCommand,
    plan: Plan | str,
    settings: Settings,
    now: float,
    *,
    view: ClusterView | None = None,
    state: ControllerState | None = None,
    say_now: str | None = None,
) -> Step:
    """Refused with the reason, or started; ``view`` and ``state`` (maintenance: the node in
    or out of it, a consent) are taken only when it starts. The command is answered when the
    plan ends, or at once with ``say_now`` and the plan's id."""
    if not isinstance(plan, str) and not model.lease.allows(plan, now):
        plan = f"not the leader ({model.lease.reason}); ask the leader"
    if not isinstance(plan, str) and (withheld := refusal(plan, model.state.journal)):
        plan = withheld.reason
    if isinstance(plan, str):
        return model, answer(cmd, False, f"refused: {plan}")
    model = replace(model, view=view or model.view, state=state or model.state)
    model, logged = log_decision(model, plan, now, force=True)
    if not plan.actions:
        return model, (*logged, *answer(cmd, True, plan.reason))
    pid = plan_id(model, plan, now)
    model, started_ = start(model, pid, plan, now, command=None if say_now else cmd)
    said = answer(cmd, True, f"{say_now} ({pid} started)", plan=pid) if say_now else ()
    return model, (*logged, *started_, *said)


def rebuild(model: Model, cmd: OperatorCommand, settings: Settings, now: float) -> Step:
    """A rebuild: refused with the reason, answered with its source (``dry_run``), or started.
    It may run for hours: the command is answered when it starts; its progress and outcome
    are in the status and the log."""
    plan: Plan | str = plan_rebuild(model.view, model.state, settings, cmd.node, cmd.source)
    if not model.lease.acting(now):  # a rebuild always changes a node: only the leader's
        plan = f"not the leader ({model.lease.reason}); ask the leader"
    if not isinstance(plan, str) and (withheld := refusal(plan, model.state.journal)):
        plan = withheld.reason
    if isinstance(plan, str):
        return model, answer(cmd, False, f"refused: {plan}")
    (action,) = plan.actions
    assert isinstance(action, Rebuild)
    detail = {"node": action.node, "source": action.source, "primary": action.primary}
    if cmd.dry_run:
        return model, answer(cmd, True, plan.reason, **detail)
    model, logged = log_decision(model, plan, now, force=True)
    pid = plan_id(model, plan, now)
    model, started = start(model, pid, plan, now)
    text = f"rebuild of {action.node} from {action.source} started ({pid})"
    return model, (*logged, *started, *answer(cmd, True, text, plan=pid, **detail))


def run_deferred(model: Model, settings: Settings, now: float) -> Step:
    """After a plan (or a takeover's wait): the deferred commands, in order, until one starts a
    plan."""
    effects: list[Effect] = []
    while (
        model.deferred
        and model.running is None
        and not model.stopping
        and not taking_over(model, now)
        and not stale(model, now)
    ):
        cmd, rest = model.deferred[0], model.deferred[1:]
        model, more = command(replace(model, deferred=rest), cmd, settings, now)
        effects += more
    return model, tuple(effects)


def caller_gone(model: Model, event: CallerGone) -> Step:
    """A deferred command whose caller stopped waiting is dropped, never run late."""
    if not any(c is event.command for c in model.deferred):
        return model, ()
    cmd = event.command
    deferred = tuple(c for c in model.deferred if c is not cmd)
    line = log(
        "operator_command_dropped",
        cmd.node,
        "warning",
        command=cmd.command,
        reason="its caller stopped waiting",
    )
    return replace(model, deferred=deferred), (line,)


def refuse_deferred(model: Model, reason: str) -> Step:
    """Stopping: every deferred command is refused now; none will run."""
    effects = [e for cmd in model.deferred for e in answer(cmd, False, f"refused: {reason}")]
    return replace(model, deferred=()), tuple(effects)


def farewell(model: Model, reason: str) -> tuple[Effect, ...]:
    """The controller returns: every command still waiting gets an answer."""
    _, effects = refuse_deferred(model, reason)
    if model.running is not None and model.running.command is not None:
        text = f"the controller stopped while running it: {reason}"
        effects += answer(model.running.command, False, text)
    return effects


def answer(cmd: OperatorCommand, ok: bool, message: str, **detail: object) -> tuple[Effect, ...]:
    line = log(
        "operator_answer",
        cmd.node,
        "info" if ok else "warning",
        command=cmd.command,
        ok=ok,
        message=message,
    )
    return line, Reply(cmd, CommandResult(ok, message, dict(detail)))
