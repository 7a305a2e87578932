"""A plan the journal says began before the controller stopped: finished, undone or abandoned
before anything new, once the view allows a decision (past start-up grace, with quorum, not
paused) and on the leader only.

Past its Promote (the point of no return) a plan is always finished. A crash inside that
Promote finishes a half-done promotion only when the view shows nothing but it
(``may_finish_promotion``); while its candidate cannot be read (it may be writable), or a
node that cannot be read may be a writer made since, the plan waits with one alert
(``half_done_waits``); otherwise it is resumed as cut before it. Before it: a failover goes
on only if the same node is still confirmed dead; a plan with a rollback (a switchover) is
rolled back while its old primary is still the view's primary (cut
inside its Promote, only once its candidate is read read-only: ``roll_back``); otherwise it is
abandoned and the routing reconciles from the view. A failover that promoted nothing leaves no
quarantine and no recovery block behind; one whose candidate the view shows as the primary did
promote (its records may be missing: it went on without the journal) and keeps them.

In a fleet another instance may have acted since this one stopped: the plan is neither finished
nor rolled back here, the leader converges from the live topology (docs/fleet.md). Only this
instance's own record of it is settled from the view, on any instance (no node is touched): its
dead primary stays quarantined while another node is the primary, and is released otherwise.
Two exceptions, when the view shows exactly where this instance's plan stopped and nobody
writable: a failover stopped inside its Promote whose candidate the view shows half promoted
(replication reset, still read-only, the dead primary still away: unreachable, or back
read-only with nothing the candidate lacks) is finished, and a
switchover cut after its fence and before its promotion is rolled back, by this instance once
it leads, as a single instance does (``left_to_the_leader``).

On a single instance a node hidden by an operator (maintenance: hidden before the restart, or
``hacontrol maintenance NODE on`` while the plan waits for NODE, ``rules.commands``) is the
operator's consent that it is down or read-only: the half-done promotion is not held for it.
Only the operator's hand could have made it a writer since: no other instance acts, and the cut
plan made no node writable but its candidate (a failover stops IO threads and waits before its
Promote; the Promote's read_only=OFF is on the candidate only). A consent that was wrong shows
when the node answers writable: two writable nodes, a halt. In a fleet maintenance is per
instance: no consent (the leader waits only for an unread candidate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from hacontrol.effects import EndIntent, Log, SendAlert, Step, log
from hacontrol.model import ControllerState, Intent, Model
from hacontrol.plan import (
    Action,
    AlertKind,
    Notify,
    Plan,
    PlanKind,
    RequireReadOnly,
    Route,
    SetIOThreads,
)
from hacontrol.routing import Membership
from hacontrol.rules.candidates import errant_between
from hacontrol.rules.lifecycle import log_decision, start
from hacontrol.view import Code, hidden_nodes

Redecide = Callable[[ControllerState], Plan]


def may_resume(model: Model, decided: Plan, now: float) -> bool:
    """Once the view allows a decision, and only on the leader: finishing, rolling back or
    abandoning a plan that changes nodes is the leader's (a follower keeps the intent)."""
    return (
        model.resume is not None
        and decided.rule != "StartupGrace"
        and model.view.quorum.ok
        and not model.state.paused
        and (
            model.lease.allows(model.resume.plan, now)
            or (model.lease.fleet and not left_to_the_leader(model, model.resume))
        )
    )


def resume(model: Model, decided: Plan, now: float, redecide: Redecide | None = None) -> Step:
    """The journal's unfinished plan, given what the view says now (``decided``).
    ``redecide``: the rules' decision on another state (an abandoned plan's reason names the
    decision that follows once its record is settled, not the one taken before)."""
    intent = model.resume
    assert intent is not None
    model = replace(model, resume=None)
    before = model.state
    if model.lease.fleet and not left_to_the_leader(model, intent):
        model, ended = left_to_the_fleet(model, intent)
        reason = f"{fleet_reason(model, intent)}; {next_decision(model, before, decided, redecide)}"
        return model, (*ended, abandoned(intent, reason))
    plan = intent.plan
    dead = plan.promote.old_primary if plan.promote else None
    if finishes(model, intent):
        return finish(model, intent, now)
    if unread := unread_beside_half_done(model, intent):
        return half_done_waits(model, intent, unread, now)
    primary = model.view.primary
    # Its records may be missing (it went on without the journal): the view says it promoted.
    promoted = plan.promote.node if plan.promote and primary == plan.promote.node else None
    ended = EndIntent(intent.plan_id, "not resumed after a controller restart", promoted)
    if promoted is None:
        model = replace(model, state=without_quarantine(model.state, dead))
    if plan.rollback and primary == dead:
        model, effects = roll_back(model, intent, now)
        return model, (ended, *effects)
    reason = f"not resumed after a controller restart; now {seen_now(model, plan)}"
    if plan.rollback:  # undoing it now would make its old primary writable over another one
        reason += f"; not rolled back: the primary is {primary or 'unknown'} now, not {dead}"
    reason += f"; {next_decision(model, before, decided, redecide)}"
    return model, (ended, abandoned(intent, reason))


def finishes(model: Model, intent: Intent) -> bool:
    """Is the journal's plan finished on this view (a single instance, or a fleet's leader
    the plan was left to)? Past its Promote always; inside it when the view shows nothing but
    the promotion (``may_finish_promotion``); a failover whose old primary is still dead."""
    plan = intent.plan
    promote_at = plan.point_of_no_return
    dead = plan.promote.old_primary if plan.promote else None
    still_dead = model.view.has(Code.DEAD_PRIMARY) and model.view.primary == dead
    promoting = promote_at in intent.done or (
        promote_at in intent.started
        and not never_promoted(model, plan)
        and may_finish_promotion(model, intent)
    )
    return promoting or (plan.kind is PlanKind.FAILOVER and still_dead)


def waiting_for(model: Model, intent: Intent) -> tuple[str, ...]:
    """The nodes the journal's plan waits for on this view (``half_done_waits``), as
    ``resume`` decides it once the view allows a decision (the caller checks that: in start-up
    grace a node not probed yet is not read either); () when it does not wait: it is finished,
    rolled back or closed."""
    if model.lease.fleet and not left_to_the_leader(model, intent):
        return ()
    return () if finishes(model, intent) else unread_beside_half_done(model, intent)


def abandoned(intent: Intent, reason: str) -> Log:
    """The plan closed unfinished; ``began``: the reason it was decided for, before the
    restart (the view may show otherwise now)."""
    plan = intent.plan
    dead = plan.promote.old_primary if plan.promote else None
    return log(
        "plan_abandoned", dead, "warning", plan=intent.plan_id, reason=reason, began=plan.reason
    )


def next_decision(
    model: Model, before: ControllerState, decided: Plan, redecide: Redecide | None
) -> str:
    """What the rules decide next, for an abandoned plan's reason: ``decided`` was taken on the
    state before the plan's record was settled (its dead primary still quarantined); once it
    is released they may decide otherwise, and the reason names that decision."""
    plan = decided if redecide is None or model.state == before else redecide(model.state)
    return f"next: {plan.rule} ({plan.reason})"


def left_to_the_fleet(model: Model, intent: Intent) -> tuple[Model, tuple[EndIntent]]:
    """Fleet: the journal's plan is closed, not resumed. A failover's dead primary stays an old
    primary (quarantined, the recovery block kept) only when another node is the view's
    primary now, promoted by this plan or by another instance's failover; otherwise the
    failover promoted nothing, and a quarantined dead primary would never be failed over."""
    plan = intent.plan
    dead = plan.promote.old_primary if plan.promote else None
    primary = model.view.primary
    promoted = primary if dead is not None and primary not in (None, dead) else None
    promoted = promoted or promoted_beside(model, intent)
    if promoted is None:
        model = replace(model, state=without_quarantine(model.state, dead))
    return model, (EndIntent(intent.plan_id, "fleet: the live topology decides", promoted),)


def fleet_reason(model: Model, intent: Intent) -> str:
    return (
        "not resumed after a restart in a fleet (another instance may have acted since): the "
        f"leader converges from the live topology; now {seen_now(model, intent.plan)}"
    )


def promoted_beside(model: Model, intent: Intent) -> str | None:
    """The plan's candidate when its Promote began and the dead primary came back writable
    beside it (two writable nodes leave the view without a primary): the dead primary stays
    quarantined behind it and is fenced, never released as if nothing had been promoted. None
    unless exactly those two are writable, the candidate replicates from nobody, and the
    promotion got past its checks (``never_promoted``)."""
    view, plan = model.view, intent.plan
    promote = plan.promote
    if promote is None or view.primary is not None:
        return None
    if plan.point_of_no_return not in intent.started or never_promoted(model, plan):
        return None
    if set(view.writable) != {promote.old_primary, promote.node}:
        return None
    return promote.node if view.sources.get(promote.node) is None else None


def left_to_the_leader(model: Model, intent: Intent) -> bool:
    """In a fleet, a journal's plan the view shows cut exactly where this instance left it:
    finished (a half-done promotion, or one cut right after its read_only=OFF, its candidate
    the only writer and every node but the old primary read) or rolled back (a switchover cut
    after its fence, before its promotion) by this instance once it leads, as a single one
    does. And one cut inside its Promote whose candidate cannot be read (it may be writable):
    kept, the leader waits for it (``half_done_waits``); closed, the next failover promoted
    another replica beside it (two writers), or past what it alone may hold."""
    promote = intent.plan.promote
    alone = (
        promote is not None
        and promoted_alone(model, intent)
        and all_read_but(model, promote.old_primary)
    )
    return (
        alone
        or (promote is not None and unread_beside_half_done(model, intent) == (promote.node,))
        or half_done_promotion(model, intent)
        or fenced_not_promoted(model, intent)
    )


def all_read_but(model: Model, old: str) -> bool:
    """Every node but ``old`` reachable, or, on a single instance, hidden by an operator
    (maintenance: consent). In a fleet maintenance is per instance: a node hidden here only
    may be the primary another leader made while this one was down."""
    hidden = frozenset() if model.lease.fleet else hidden_nodes(model.view)
    return all(s.reachable or n in hidden for n, s in model.view.nodes.items() if n != old)


def fenced_not_promoted(model: Model, intent: Intent) -> bool:
    """A switchover (a plan with a rollback) whose Promote never began, and the view shows its
    old primary still the primary of its replicas, reachable and read-only (fenced), its
    candidate still replicating from it, and no node writable: no other instance acted, and
    nobody takes writes until it is rolled back."""
    plan = intent.plan
    promote = plan.promote
    if promote is None or not plan.rollback or plan.point_of_no_return in intent.started:
        return False
    view = model.view
    old = view.nodes.get(promote.old_primary)
    if old is None or not old.reachable or old.status is None:
        return False
    if not only_the_plan_moved(model, promote.old_primary, promote.node):
        return False
    return (
        old.status.read_only
        and view.primary == promote.old_primary
        and view.sources.get(promote.node) == promote.old_primary
    )


def half_done_promotion(model: Model, intent: Intent) -> bool:
    """A failover's Promote began and the view shows it stopped halfway: its candidate
    reachable, read-only and replicating from nobody (its replication reset, not yet made
    writable), the dead primary still away (``old_primary_away``: unreachable, or back
    read-only with nothing the candidate lacks), and nothing else moved
    (``only_the_plan_moved``). No later failover may pass over the candidate: it may hold
    acknowledged writes no other replica has. In a fleet too it is finished, by the leader
    only (a follower keeps the intent)."""
    plan = intent.plan
    promote, at = plan.promote, plan.point_of_no_return
    if promote is None or plan.kind is not PlanKind.FAILOVER:
        return False
    if at not in intent.started or at in intent.done:
        return False
    node = model.view.nodes.get(promote.node)
    if node is None or not node.reachable or not old_primary_away(model, plan):
        return False
    if not only_the_plan_moved(model, promote.old_primary, promote.node):
        return False
    status = node.status  # replication reset, not yet writable
    return status is not None and status.read_only and not status.replication


def old_primary_away(model: Model, plan: Plan) -> bool:
    """The failover's dead primary takes no part in the cluster: unreachable still, or back
    read-only (restarted with ``read_only = ON``, as the runbook says), replicating from
    nobody, and holding nothing the candidate lacks (nobody made it a writer since this plan
    detached the candidate). Finishing the promotion then makes one writer, and the old
    primary, quarantined, is rejoined under it (``RejoinOldPrimary``). An old primary that
    holds more than the candidate is an operator's choice in a fleet (``PrimaryIsReadOnly``
    alerts): another instance may have let it take writes."""
    promote = plan.promote
    if promote is None:
        return False
    view = model.view
    old, candidate = view.nodes.get(promote.old_primary), view.nodes.get(promote.node)
    if old is None or candidate is None:
        return False
    if not old.reachable:
        return True
    mine, theirs = old.status, candidate.status
    if mine is None or theirs is None or not mine.read_only or mine.replication:
        return False
    return not errant_between(mine, theirs)


def may_finish_promotion(model: Model, intent: Intent) -> bool:
    """A Promote that began may be finished when its candidate is the view's primary already,
    or writable already beside the old primary back writable (``promoted_beside``: finishing
    makes no new writer, and the old primary, kept quarantined, is fenced behind it), or the
    only writable node, replicating from nobody, while no other node is the primary, or
    nothing but this plan explains the view (``only_the_plan_moved``). Not when another node
    is writable while the candidate is not (the old primary came back with read_only=OFF: a
    second writer), nor when the view's primary is another node, even one out of reach (an
    operator's or another leader's failover while this instance was down: its writes are not
    on the candidate). The plan is then closed and the rules converge from the view (the
    candidate, detached and clean, is rejoined under the writer: RejoinDetached)."""
    promote = intent.plan.promote
    if promote is None:
        return False
    if model.view.primary == promote.node or promoted_beside(model, intent):
        return True
    if promoted_alone(model, intent):
        return True
    return only_the_plan_moved(model, promote.old_primary, promote.node)


def promoted_alone(model: Model, intent: Intent) -> bool:
    """The plan's Promote began (not done) and its candidate is the only writable node,
    replicating from nobody, with no other primary in the view and every replica read still
    on the old primary: cut right after its read_only=OFF (a switchover's old primary fenced, a
    failover's dead). Finishing it makes no new writer; abandoned, nobody followed it and no
    writer was routed (NoPrimary, "topology split") until an operator acted."""
    promote, at = intent.plan.promote, intent.plan.point_of_no_return
    if promote is None or at not in intent.started or at in intent.done:
        return False  # done: a single instance finishes it anyway, a fleet leaves it to the rules
    view, old, node = model.view, promote.old_primary, promote.node
    if view.writable != (node,) or view.sources.get(node) is not None:
        return False
    if view.primary not in (None, old, node):
        return False
    readers = [n for n, s in view.nodes.items() if s.reachable and n not in (old, node)]
    return all(view.sources.get(n, old) == old for n in readers)


def unread_beside_half_done(model: Model, intent: Intent) -> tuple[str, ...]:
    """What a plan cut inside its Promote waits for (``half_done_waits``), () for nothing:

    - its candidate, when it cannot be read: it may be writable (read_only=OFF is the
      Promote's last statement), so neither a rollback (the old primary made writable beside
      it, or the replicas' IO threads left stopped by a guard that refuses) nor a new failover;
    - a failover's: the other nodes that cannot be read (not hidden by an operator) beside a
      candidate half promoted (read-only, replicating from nobody) that nothing else explains:
      one of them may be a writer made since (its writes not on the candidate); rolled back,
      the candidate, which may hold writes acknowledged on it alone, was stranded with no
      writer. A switchover is rolled back instead (its old primary fenced, its candidate
      caught up: ``roll_back`` reads the candidate first).
    Only while nobody is writable, no node but the old one is the primary, and every replica
    read still follows the old primary."""
    promote, at = intent.plan.promote, intent.plan.point_of_no_return
    if promote is None or at not in intent.started or at in intent.done:
        return ()
    view, old = model.view, promote.old_primary
    if view.writable or view.primary not in (None, old):
        return ()
    reachable = [n for n, s in view.nodes.items() if s.reachable and n not in (old, promote.node)]
    if any(view.sources.get(n, old) != old for n in reachable):
        return ()
    node = view.nodes.get(promote.node)
    if node is None or not node.reachable or node.status is None:
        return (promote.node,)
    if not node.status.read_only or node.status.replication:
        return ()
    if intent.plan.kind is not PlanKind.FAILOVER:
        return ()
    hidden = frozenset() if model.lease.fleet else hidden_nodes(view)
    return tuple(
        n for n, s in view.nodes.items() if n != old and not s.reachable and n not in hidden
    )


def half_done_waits(model: Model, intent: Intent, unread: tuple[str, ...], now: float) -> Step:
    """The journal's plan kept (decided again once ``unread`` answer), nothing else decided
    meanwhile; one decision line and one alert (a halt), both saying what it waits for."""
    promote = intent.plan.promote
    assert promote is not None
    node, names = promote.node, ", ".join(unread)
    way_out = "or repair by hand (troubleshooting.md, 'A half-done promotion')"
    if unread == (node,):
        what = f"{node} cannot be read: it may be writable (read_only=OFF is its last statement)"
    else:  # a failover's (a switchover is rolled back instead)
        what = (
            f"{node} is read-only and replicates from nobody: it may hold writes acknowledged "
            f"on it alone; {names} cannot be read (it may be a writer made since)"
        )
        way_out = f"{consent_way(model, unread)}, {way_out}"
    reason = (
        f"{intent.plan_id} was cut inside its promotion of {node} ({what}): neither finished nor "
        f"rolled back until {names} answers; {way_out}"
    )
    plan = Plan("HalfDonePromotion", reason, kind=PlanKind.ALERT)
    model, logged = log_decision(replace(model, resume=intent), plan, now)
    if not logged:
        return model, ()
    summary = f"HALT: the half-done promotion of {node} waits: {names} cannot be read"
    alert = Notify(AlertKind.HALT, node, summary, reason)
    return model, (*logged, SendAlert(alert, plan, True))


def consent_way(model: Model, unread: tuple[str, ...]) -> str:
    """How an operator lets a half-done promotion go on without ``unread`` (single instance:
    a node hidden by an operator is consent that it is down or read-only, no writer), worded
    for the router: ProxySQL has a hidden group an operator may use directly; HAProxy has
    none (the controller keeps the hidden list itself), and neither has a cluster without a
    router: there the command is the only way."""
    names = ", ".join(unread)
    each = (
        f"`hacontrol maintenance {unread[0]} on`"
        if len(unread) == 1
        else (f"`hacontrol maintenance NODE on` for each of {names}")
    )
    proxysql = model.view.router.kind == "proxysql"
    where = " (or ProxySQL's hidden hostgroup, `proxysql.hidden_hostgroup`)" if proxysql else ""
    return (
        f"or, once sure {names} is down or read-only, {each}{where}: the operator's consent, "
        "the promotion is then finished without it"
    )


def only_the_plan_moved(model: Model, old: str, candidate: str) -> bool:
    """Nothing but this instance's own plan explains the view: every node but the old primary
    reachable (an unreachable one may be the writer another leader made; one an operator put
    in maintenance is left out, as the failover's doubt leaves it), nobody writable, no
    primary but the old one, and every replica still replicating from the old primary."""
    view = model.view
    if view.writable or view.primary not in (None, old):
        return False
    if not all_read_but(model, old):  # a hidden one: an operator's maintenance, consent
        return False
    for name, node in view.nodes.items():
        if node.reachable and name != candidate and view.sources.get(name, old) != old:
            return False
    return True


def never_promoted(model: Model, plan: Plan) -> bool:
    """A Promote that began (the journal's ``start``) never got past the node's checks when its
    candidate still replicates from the old primary and that primary is writable: the run
    stopped there and was (being) rolled back, or the ``start`` landed after its wait gave up.
    Finishing it would make a second writer; it is resumed as cut before its promotion."""
    promote = plan.promote
    if promote is None:
        return False
    view = model.view
    candidate, old = view.nodes.get(promote.node), view.nodes.get(promote.old_primary)
    return bool(
        candidate is not None
        and candidate.reachable
        and view.sources.get(promote.node) == promote.old_primary
        and old is not None
        and old.reachable
        and old.status is not None
        and not old.status.read_only
    )


def finish(model: Model, intent: Intent, now: float) -> Step:
    """Go on from the first step not done; a crash inside Promote: finish what it began."""
    plan = intent.plan
    promote_at = plan.point_of_no_return
    cut = "before its promotion" if plan.promote else f"after {len(intent.done)} step(s)"
    if promote_at in intent.done:
        cut = "past its promotion"
    elif promote_at in intent.started:
        cut = "inside its promotion: finishing it"
        actions = list(plan.actions)
        actions[promote_at] = replace(actions[promote_at], finish_half_done=True)
        plan = replace(plan, actions=tuple(actions))
    plan = replace(plan, actions=hidden_now(model, plan.actions))
    reason = (
        f"resuming {intent.plan_id} after a controller restart, cut {cut}; now "
        f"{seen_now(model, plan)}; it began as: {plan.reason}"
    )
    remaining = replace(intent.remaining(), reason=reason)
    model, logged = log_decision(model, remaining, now, force=True)
    plan = replace(plan, reason=reason)  # its plan_started line too: the view's, not the journal's
    model, started = start(model, intent.plan_id, plan, now, skip=intent.done, resumed=True)
    return model, (*logged, *started)


def roll_back(model: Model, intent: Intent, now: float) -> Step:
    """A plan cut before its point of no return, undone. Cut inside its Promote, its candidate
    may be writable (read_only=OFF is the Promote's last statement) though unread now: the
    rollback then goes on only if the candidate is read-only, read on the node first (as a
    run's own rollback does: ``rules.rollback``), and never restarts the IO thread of a
    candidate whose replication the Promote reset."""
    plan = intent.plan
    actions, cut = plan.rollback, "before its promotion"
    promote = plan.promote
    if promote is not None and plan.point_of_no_return in intent.started:
        node = promote.node
        cut = f"inside its promotion of {node}: rolled back only if {node} is read-only"
        reset = model.view.sources.get(node) is None
        actions = (RequireReadOnly(node), *without_io_of(actions, node if reset else None))
    actions = hidden_now(model, actions)
    rollback = Plan(
        plan.rule,
        f"rolling back {intent.plan_id}, cut {cut}, after a controller restart; now "
        f"{seen_now(model, plan)}; it began as: {plan.reason}",
        actions,
        PlanKind.ROLLBACK,
    )
    model, logged = log_decision(model, rollback, now, force=True)
    model, started = start(model, f"{intent.plan_id}-rollback", rollback, now)
    return model, (*logged, *started)


def hidden_now(model: Model, actions: tuple[Action, ...]) -> tuple[Action, ...]:
    """A journaled plan's Routes with the nodes hidden now (``hidden_nodes``, as a plan made
    now would route them): an operator may have hidden a node since the plan was made (the
    consent to a half-done promotion's wait, or ProxySQL's hidden hostgroup), and a Route that
    would change the hidden group is refused by the router (ProxySQL: that hostgroup is the
    operator's): the plan then failed its routing and mailed "router not updated". A node
    shown again since is broken until healthy (as ``maintenance off`` leaves it)."""
    hidden = hidden_nodes(model.view)
    router = model.view.router.membership
    adds = bool(hidden - router.hidden) if router is not None else False  # its Route failed
    out: list[Action] = []
    for action in actions:
        if isinstance(action, Route) and action.desired.hidden != hidden:
            was = action.desired
            shown = was.hidden - hidden
            desired = Membership(
                was.writers, was.readers - hidden, (was.broken | shown) - hidden, hidden
            )
            action = replace(action, desired=desired, hidden_change=action.hidden_change or adds)
        out.append(action)
    return tuple(out)


def without_io_of(actions: tuple[Action, ...], node: str | None) -> tuple[Action, ...]:
    """``actions`` without starting ``node``'s IO thread (an action left with no node goes)."""
    out: list[Action] = []
    for action in actions:
        if isinstance(action, SetIOThreads) and node in action.nodes:
            nodes = tuple(n for n in action.nodes if n != node)
            if not nodes:
                continue
            action = replace(action, nodes=nodes)
        out.append(action)
    return tuple(out)


def seen_now(model: Model, plan: Plan) -> str:
    """What the view shows of the nodes a plan's promotion moves (the old primary and the
    candidate), or of the primary: a resumed or abandoned plan's reason says what is seen
    now, never what the journal said when it began."""
    view = model.view
    if plan.promote is None:
        return f"the primary is {view.primary or 'unknown'}"
    names = (plan.promote.old_primary, plan.promote.node)
    return " and ".join(f"{name} {node_now(model, name)}" for name in names)


def node_now(model: Model, name: str) -> str:
    node = model.view.nodes.get(name)
    if node is None or not node.reachable:
        return "is unreachable"
    if node.status is None:
        return "is not read yet"
    role = "read-only" if node.status.read_only else "writable"
    return f"is {role} and replicates from {model.view.sources.get(name) or 'nobody'}"


def without_quarantine(state: ControllerState, node: str | None) -> ControllerState:
    """A failover that promoted nothing: its dead primary is no "old primary"."""
    if node is None or node not in state.quarantined:
        return state
    quarantined = {k: v for k, v in state.quarantined.items() if k != node}
    return replace(state, quarantined=quarantined, blocked_until=None)
