"""A lost primary: fail over, or say why not. Every failover rule is in this file.

The view names the problem (``DeadPrimary`` only when the controller cannot reach the primary
AND no reachable replica still has a working link to it); these rules turn it into a plan:
the most advanced eligible replica is promoted after it applied everything it received, the
others are repointed, the router is fenced first and updated right after the promotion.
"""

from __future__ import annotations

from dataclasses import replace

from hacontrol.events import ConnectionLost, Event, ProbeResult
from hacontrol.flavors.base import IoState, ReplicationStatus
from hacontrol.model import AlertKey, Condition, ControllerState, Decision, Intent, Quarantined
from hacontrol.plan import (
    Action,
    AlertKind,
    Notify,
    Plan,
    PlanKind,
    Promote,
    Publish,
    Repoint,
    Route,
    RouteFence,
    SetIOThreads,
    WaitApplied,
)
from hacontrol.routing import Membership
from hacontrol.rules.alerts import alert_once, alert_unless_a_leader_may_act
from hacontrol.rules.candidates import (
    Candidate,
    candidate_table,
    candidates,
    hooks,
    missing_from,
    semi_sync_promised,
    topology_text,
)
from hacontrol.rules.doubt import (
    UNNAMED,
    Unanswered,
    consented,
    doubted,
    judge_unanswered,
    unnamed_share,
)
from hacontrol.settings import Settings
from hacontrol.view import ClusterView, Code, Problem, hidden_nodes


def rule_dead_primary(
    view: ClusterView, state: ControllerState, settings: Settings, now: float
) -> Decision | None:
    """A confirmed dead primary: fail over to the most advanced eligible replica, unless the
    recovery block holds, no replica can be promoted, or the best lacks what others hold."""
    problem = next((p for p in view.problems if p.code is Code.DEAD_PRIMARY), None)
    if problem is None:
        return None
    dead = problem.node
    assert dead is not None
    if dead in state.quarantined:
        return quarantined_dead(view, state, settings, dead, now)
    if state.blocked_until is not None and now < state.blocked_until:
        return failover_blocked(view, state, dead, state.blocked_until, now)
    if under_way := failover_under_way(view, settings, dead, witnessed=True):
        return candidate_maybe_half_promoted(view, state, dead, *under_way, now=now)
    ranked = candidates(view, settings, dead)
    if not ranked or not ranked[0].eligible:
        return no_candidate(view, state, problem, ranked)
    if missing := missing_from(view, ranked[0].node, dead):
        return candidate_incomplete(view, state, dead, ranked, missing)
    given = consented(view, state.consents, dead)
    judged = tuple(judge_unanswered(view, settings, dead, ranked[0].node, given))
    if doubts := [u for u in judged if u.doubt is not None]:
        return unanswered_in_doubt(view, state, settings, dead, ranked, doubts, now)
    if given and (minority := consent_without_quorum(view, state, dead, given)):
        return minority
    plan = failover(view, settings, problem, ranked, now, judged, given)
    best = ranked[0].node
    new_state = replace(
        state,
        blocked_until=now + settings.failover.recovery_block,
        last_failover_at=now,
        quarantined={**state.quarantined, dead: Quarantined(dead, best, now)},
        consents=tuple(c for c in state.consents if c.dead != dead),  # used: this loss only
    )
    return Decision(plan, new_state)


def quarantined_dead(
    view: ClusterView, state: ControllerState, settings: Settings, dead: str, now: float
) -> Decision:
    """The dead primary is quarantined: a failover away from it happened. Right after it the
    view may not show the new primary yet; if that lasts, the failover did not take (or a
    crash lost the state that released the quarantine): never failed over automatically
    again, and never silently: an alert, once."""
    q = state.quarantined[dead]
    plan = Plan(
        "QuarantinedPrimaryDead",
        f"{dead} is dead and quarantined by a failover to {q.new_primary}, but no writable "
        f"primary is seen: no automatic failover of a quarantined node; an operator must look "
        f"(did {q.new_primary} get promoted? a half-done promotion is finished by making it "
        "writable)",
        kind=PlanKind.ALERT,
    )
    key = AlertKey(Condition.FAILOVER_BLOCKED, dead)
    since = state.first_seen.get(key)
    grace = max(settings.failover.io_stall, 2 * settings.probes.interval + settings.probes.timeout)
    if since is None or now - since < grace:
        first_seen = {**state.first_seen, key: now if since is None else since}
        return Decision(plan, replace(state, first_seen=first_seen))
    alert = Notify(
        AlertKind.FAILOVER_BLOCKED,
        dead,
        "primary dead and quarantined, no failover",
        plan.reason,
        (("topology", topology_text(view)),),
    )
    return alert_once(state, key, plan, alert)


def failover_blocked(
    view: ClusterView, state: ControllerState, dead: str, blocked_until: float, now: float
) -> Decision:
    """Anti-flapping: no second automatic failover within the recovery block. The decision's
    reason stays the same while it lasts (one log line, not one a second); the alert says
    when the last failover was and how long the block still runs."""
    plan = Plan(
        "FailoverBlocked",
        f"{dead} is dead but a failover happened within the recovery block: no automatic "
        "failover until it ends, unless acknowledged (`hacontrol ack`; anti-flapping)",
        kind=PlanKind.ALERT,
    )
    when = (
        f"{dead} is dead but a failover happened {now - (state.last_failover_at or now):.0f} "
        f"s ago: blocked for {blocked_until - now:.0f} s more unless acknowledged "
        "(anti-flapping)"
    )
    alert = Notify(
        AlertKind.FAILOVER_BLOCKED,
        dead,
        "primary dead, failover blocked",
        when,
        (("topology", topology_text(view)),),
    )
    return alert_once(state, AlertKey(Condition.FAILOVER_BLOCKED, dead), plan, alert)


def no_candidate(
    view: ClusterView, state: ControllerState, problem: Problem, ranked: list[Candidate]
) -> Decision:
    """No replica can be promoted. No stored halt: this is re-evaluated at every decision, so
    a replica that becomes eligible (an SQL thread restarted after a backup) is promoted
    without an operator."""
    dead = problem.node or ""
    reason = f"{dead} is dead and no replica can be promoted"
    plan = Plan("NoCandidate", f"halted: {reason}", kind=PlanKind.HALT)
    alert = Notify(
        AlertKind.NO_CANDIDATE,
        dead,
        "primary dead, NO candidate to promote",
        problem.reason,
        (("candidates", candidate_table(ranked)), ("topology", topology_text(view))),
    )
    return alert_once(state, AlertKey(Condition.NO_CANDIDATE, dead), plan, alert)


def candidate_incomplete(
    view: ClusterView, state: ControllerState, dead: str, ranked: list[Candidate], missing: str
) -> Decision:
    """The best candidate lacks transactions other replicas hold (possibly acknowledged under
    semi-sync): promoting it would lose them. An operator catches it up or chooses."""
    plan = Plan(
        "CandidateIncomplete",
        f"no failover: the best candidate {ranked[0].node} lacks "
        f"transactions other replicas hold ({missing}); promoting it would lose "
        "them (an operator must catch it up or choose)",
        kind=PlanKind.ALERT,
    )
    alert = Notify(
        AlertKind.CANDIDATE_INCOMPLETE,
        dead,
        "primary dead, best candidate incomplete",
        plan.reason,
        (("candidates", candidate_table(ranked)), ("topology", topology_text(view))),
    )
    return alert_once(state, AlertKey(Condition.NO_CANDIDATE, dead), plan, alert)


def unanswered_in_doubt(
    view: ClusterView,
    state: ControllerState,
    settings: Settings,
    dead: str,
    ranked: list[Candidate],
    doubts: list[Unanswered],
    now: float,
) -> Decision:
    """A replica that cannot be read may hold a write ``dead`` acknowledged that the best
    candidate lacks (semi-sync that never falls back promises none is lost): wait up to
    ``failover.wait_unreachable_replica`` for it to answer (then it is compared and stopped
    like the others); past that, no failover: halt and alert, the write outage goes on. No
    stored halt: re-evaluated at every decision, so the failover proceeds as soon as the
    replica answers or an operator hides it."""
    best, names = ranked[0].node, ", ".join(u.node for u in doubts)
    why = "; ".join(u.describe() for u in doubts)
    key = AlertKey(Condition.NO_CANDIDATE, f"{dead} unanswered")
    since = state.first_seen.get(key)
    wait = settings.failover.wait_unreachable_replica
    # Remembered: `maintenance NODE on` for one of these records an operator's consent.
    marks = {doubted(dead, u.node): now for u in doubts if u.node in view.nodes}
    state = replace(state, first_seen={**marks, **state.first_seen})
    if since is None or now - since < wait:
        plan = Plan(
            "WaitUnreachableReplica",
            f"{dead} is dead; waiting up to {wait:g} s for {names} to answer before failing "
            f"over to {best} ({why})",
            kind=PlanKind.ALERT,
        )
        first_seen = {**state.first_seen, key: now if since is None else since}
        return Decision(plan, replace(state, first_seen=first_seen))
    reason = (
        f"no failover, writes stay down: {dead} is dead and {names} did not answer within "
        f"{wait:g} s; {'it' if len(doubts) == 1 else 'each'} may hold a write {dead} "
        f"acknowledged that {best} lacks ({why}): "
        f"promoting {best} could lose it. {operator_advice(view, settings, dead, doubts)}"
    )
    plan = Plan("UnreachableReplicaInDoubt", f"halted: {reason}", kind=PlanKind.HALT)
    return halt_once(
        view,
        state,
        key,
        plan,
        alert=AlertKind.CANDIDATE_INCOMPLETE,
        node=dead,
        summary="primary dead, NO failover: a replica that may hold acknowledged writes is "
        "unreachable",
        body=reason,
        ranked=ranked,
    )


def consent_without_quorum(
    view: ClusterView, state: ControllerState, dead: str, given: frozenset[str]
) -> Decision | None:
    """A consent is about acknowledged writes, never about the quorum: hiding the nodes in
    doubt takes them out of the count, and the side the controller is on may then look like a
    majority where it is a partition's minority (the primary alive on the other side with
    them). Counted with the consented nodes, the nodes that answer must still be a strict
    majority; otherwise no failover (an operator who knows promotes by hand)."""
    up, counted = answering_with(view, given)
    if 2 * len(up) > len(counted):
        return None
    reason = (
        f"no failover: an operator consented to go on without {', '.join(sorted(given))}, but "
        f"counted with them only {len(up)} of {len(counted)} nodes answer ({', '.join(up)}): "
        f"this side may be a partition's minority, with {dead} alive on the other; a consent "
        "gives up writes, never the quorum (an operator who knows the other side is down "
        "promotes by hand: docs/runbook.md, 'Primary down')"
    )
    plan = Plan("ConsentWithoutQuorum", f"halted: {reason}", kind=PlanKind.HALT)
    return halt_once(
        view,
        state,
        AlertKey(Condition.NO_CANDIDATE, f"{dead} consent quorum"),
        plan,
        alert=AlertKind.CANDIDATE_INCOMPLETE,
        node=dead,
        summary="primary dead, NO failover: without quorum, even with the operator's consent",
        body=reason,
    )


def then_what(view: ClusterView, named: frozenset[str], them: str) -> str:
    """What the consent to ``named`` leads to: the failover, or no quorum even then."""
    up, counted = answering_with(view, named)
    if 2 * len(up) > len(counted):
        return f"; the failover then goes on without {them}."
    return (
        f"; but counted with {them} only {len(up)} of {len(counted)} nodes answer: no failover "
        "even then (this side may be a partition's minority; a consent never stands for the "
        "quorum)."
    )


def answering_with(view: ClusterView, given: frozenset[str]) -> tuple[list[str], set[str]]:
    """The nodes that answer, and the nodes counted for the quorum with ``given`` back in."""
    counted = set(view.quorum.recognized) | (given & set(view.nodes))
    return sorted(n for n in counted if view.nodes[n].reachable), counted


def operator_advice(
    view: ClusterView, settings: Settings, dead: str, doubts: list[Unanswered]
) -> str:
    """What an operator can do to end the halt: one command per node in doubt (consent to
    some leaves the others in doubt), what it does to a node already hidden, and the way for a
    client the controller cannot name."""
    named = [u.node for u in doubts if u.node in view.nodes]
    advice = []
    if named:
        they, them = ("it", "it") if len(named) == 1 else ("they", "them")
        commands = " and ".join(f"`hacontrol maintenance {node} on`" for node in named)
        hidden = [n for n in named if n in hidden_nodes(view)]
        where = " to the fleet's leader" if settings.controller.fleet else ""
        advice.append(
            f"An operator brings {', '.join(named)} back (compared and stopped like the other "
            f"replicas then, the failover goes on by itself), or accepts losing what {they} "
            f"alone may hold: {commands}{where} record{'s' if len(named) == 1 else ''} that "
            "consent for this failover "
            f"and hides {them}"
            + (f" ({', '.join(hidden)} already hidden: accepted all the same)" if hidden else "")
            + then_what(view, frozenset(named), them)
            + unnamed_share(view, settings, dead, named)
        )
    if len(named) < len(doubts):
        advice.append(
            f"For {UNNAMED}: an operator adds it to the settings or fixes the controller's "
            "access to it (it is then judged like the others)."
        )
    advice.append("Or an operator promotes by hand (docs/runbook.md, 'Primary down').")
    return " ".join(advice)


def failover(
    view: ClusterView,
    settings: Settings,
    problem: Problem,
    ranked: list[Candidate],
    now: float,
    judged: tuple[Unanswered, ...] = (),
    given: frozenset[str] = frozenset(),
) -> Plan:
    """The failover plan: fence the router, stop the replicas' IO threads, let the best apply
    what it received, promote it, route to it, repoint the others, alert. ``given``: the
    nodes an operator consented to go on without (the alert says what that gave up)."""
    dead, best = problem.node or "", ranked[0].node
    others = answering(view, ranked[1:], semi_sync_promised(view, dead))
    hidden = hidden_nodes(view)
    readers = {best} if settings.router.primary_is_reader else set()
    broken = {n for n in view.nodes if n not in (best, *hidden)} - readers
    context = (
        ("old_primary", dead),
        ("new_primary", best),
        ("kind", PlanKind.FAILOVER.value),
        ("reason", problem.reason),
    )
    replicas = (best, *others)  # hidden ones too: each may acknowledge a resumed primary's write
    table = candidate_table(ranked)
    risk = at_risk(view, settings, dead, best, now, judged, given)
    actions: tuple[Action, ...] = (
        *hooks(settings, "on_failure_detected", context),
        *hooks(settings, "pre_failover", context, required=True),
        # Required: a frozen or partitioned "dead" primary may still take writes through the
        # router; never promote while the router may still send them there.
        RouteFence(dead, required=True),
        # The replicas' IO threads may be stuck on a frozen primary until slave_net_timeout:
        # stop them all at once, not one STOP SLAVE after the other.
        SetIOThreads(replicas, running=False),
        WaitApplied(best, settings.failover.apply_timeout, peers=replicas[1:]),  # see peers
        Promote(best, dead),
        # A fleet's routers follow the leader's publication: published first, then routed.
        *((Publish(best),) if settings.controller.fleet else ()),
        # Writers first: semi-sync on the new primary holds its first commits until a
        # repointed replica acknowledges, so nothing acknowledged can be lost meanwhile.
        # Past the promotion the database side is done: a router that cannot be updated now
        # stops neither the repointing nor the alert, and halts nothing; the routing rule
        # moves the writer when the router answers (docs/failover.md).
        Route(Membership.of([best], readers, broken, hidden), required=False),
        Repoint(others, best),
        failover_alert(view, problem, best, table, risk),
        *hooks(settings, "post_failover", context),
    )
    reason = (
        f"{dead} is dead ({problem.reason}); promoting {best}, the most advanced "
        f"eligible replica (received {ranked[0].received})"
    )
    # Stopped before the promotion (a veto, WaitApplied timed out): give the replicas their
    # IO threads back, so that they testify again about the primary.
    rollback = (SetIOThreads(replicas, running=True),)
    return Plan("DeadPrimary", reason, actions, kind=PlanKind.FAILOVER, rollback=rollback)


def failover_alert(
    view: ClusterView, problem: Problem, best: str, table: str, risk: tuple[float | None, str]
) -> Notify:
    at_risk = risk[1]
    return Notify(
        AlertKind.FAILOVER,
        problem.node or "",
        f"failover: {best} promoted in place of",
        problem.reason if risk[0] is None else f"{problem.reason}; {at_risk}",
        (
            ("candidates", table),
            ("acknowledged writes at risk", at_risk),
            ("topology before", topology_text(view)),
        ),
    )


def answering(view: ClusterView, ranked: list[Candidate], strict: bool) -> tuple[str, ...]:
    """The replicas a failover stops, compares and repoints. ``strict`` (semi-sync never
    falls back): not one whose last probe failed (it cannot be stopped now;
    ``judge_unanswered`` found it cannot hold what the candidate lacks; the stray-replica rule
    repoints it when it answers); otherwise every reachable one, as it always was."""
    return tuple(
        c.node
        for c in ranked
        if view.nodes[c.node].reachable and not (strict and view.nodes[c.node].failures > 0)
    )


def at_risk(
    view: ClusterView,
    settings: Settings,
    dead: str,
    best: str,
    now: float,
    judged: tuple[Unanswered, ...],
    given: frozenset[str],
) -> tuple[float | None, str]:
    """``acknowledged_at_risk``, opened by what an operator's consent gave up: a node gone
    without by consent may hold writes ``dead`` acknowledged that ``best`` lacks (the halt
    said so), so the verdict is "unknown", never "none"."""
    seconds, text = acknowledged_at_risk(view, dead, now, judged)
    if not given:
        return seconds, text
    names = ", ".join(sorted(given))
    it, them = ("it", "it") if len(given) == 1 else ("they", "them")
    opening = (
        f"unknown: the failover went on without {names} by an operator's consent: {it} may "
        f"hold writes {dead} acknowledged that {best} lacks; read {them} before rebuilding "
        f"{them} (the only copy).{unnamed_share(view, settings, dead, sorted(given))} "
        "Apart from that: "
    )
    return (seconds or 0.0), opening + text


def acknowledged_at_risk(
    view: ClusterView, dead: str, now: float, judged: tuple[Unanswered, ...] = ()
) -> tuple[float | None, str]:
    """What the dead primary may have acknowledged that no replica received, for the alert:
    (seconds of acknowledged writes at risk so far, or None when there can be none; the text).

    Its replicas last received from it at their last seen progress; semi-sync holds each
    commit until a replica acknowledges it, for ``source_timeout`` at most: a source that falls
    back acknowledges alone from then on, until it is fenced (still going on when it is only
    cut off). Pure."""
    node = view.nodes[dead]
    semi = node.status.semi_sync if node.status is not None else None
    seen = [at for r in view.replicas_of(dead) if (at := view.nodes[r].io_progress_at) is not None]
    last = max(seen, default=node.last_ok_at)
    silent = max(0.0, now - last) if last is not None else 0.0
    lost = f"its replicas last received from it, {silent:.1f} s ago,"
    if semi is None or (semi.source_enabled and semi.source_timeout is None):
        return 0.0, f"unknown: {dead}'s semi-sync settings were never read ({lost.strip(',')})"
    if semi.never_falls_back:
        # Every replica that could not be read was judged (rules/doubt.py) before a failover
        # was planned: only cleared ones remain; a hidden one is the operator's to answer for.
        cleared = {u.node: u.why for u in judged if u.doubt is None}
        never_read = [n for n, v in view.nodes.items() if n != dead and v.status is None]
        unchecked = [
            r
            for r in (*view.replicas_of(dead), *never_read)
            if not view.nodes[r].reachable and r not in cleared
        ]
        unless = "".join(f"; {name} could not be read, but {why}" for name, why in cleared.items())
        if unchecked:
            unless += (
                f"; but {', '.join(unchecked)} could not be reached: a write acknowledged by it "
                "alone (the primary answering again while the others stopped) cannot be checked"
            )
        return None, (
            f"none: {dead}'s semi-sync never falls back to asynchronous replication (timeout "
            f"{semi.source_timeout:.0f} s, waits without replicas): it acknowledged nothing "
            f"its replicas did not receive{unless}"
        )
    until = "until it is fenced (it may still be taking writes where it is cut off)"
    if not semi.source_enabled:
        return silent, (
            f"{silent:.1f} s so far: {dead} replicated asynchronously: what it acknowledged "
            f"after {lost} {until} is on no replica"
        )
    timeout = 0.0 if semi.source_wait_no_replica is False else semi.source_timeout or 0.0
    risk = max(0.0, silent - timeout)
    why = (
        "as soon as no replica is connected (wait_no_slave OFF)"
        if semi.source_wait_no_replica is False
        else f"after {timeout:g} s without an acknowledgement"
    )
    return risk, (
        f"{risk:.1f} s so far: {dead}'s semi-sync falls back to asynchronous replication "
        f"{why}; what it acknowledged from then {until} is on no replica "
        f"({lost.strip(',')})"
    )


def rule_no_primary(
    view: ClusterView, state: ControllerState, settings: Settings, now: float
) -> Decision | None:
    """No primary can be named (all read-only, replicas disagree, a topology split): a write
    outage the controller must not guess its way out of. Alert once, change nothing."""
    problem = next((p for p in view.problems if p.code is Code.NO_PRIMARY), None)
    primary = view.primary
    if problem is None and primary is not None and primary not in state.quarantined:
        node = view.nodes[primary]
        if node.reachable and node.status is not None and node.status.read_only:
            reason = (
                f"{primary} is the primary (its replicas follow it) but read_only=ON: "
                "writes fail; no automatic change (set it writable, or switch over)"
            )
            plan = Plan("PrimaryIsReadOnly", reason, kind=PlanKind.ALERT)
            alert = Notify(AlertKind.PRIMARY_READ_ONLY, primary, "the primary is read-only", reason)
            return alert_once(state, AlertKey(Condition.NO_PRIMARY), plan, alert)
    if problem is None:
        return None
    plan = Plan(
        Code.NO_PRIMARY.value,
        f"no change: no primary can be named: {problem.reason}",
        kind=PlanKind.ALERT,
    )
    alert = Notify(
        AlertKind.NO_PRIMARY,
        None,
        "no primary can be named: writes may be failing",
        problem.reason,
        (("topology", topology_text(view)),),
    )
    key = AlertKey(Condition.NO_PRIMARY)
    decision = alert_once(state, key, plan, alert)
    return alert_unless_a_leader_may_act(view, state, settings, now, key, decision)


def rule_io_stopped_by_a_failover(
    view: ClusterView, state: ControllerState, settings: Settings, now: float
) -> Decision | None:
    """Fleet: the primary is unreachable and every reachable replica of it has its IO thread
    stopped without a replication error, the SQL thread running: what a failover leaves
    behind between stopping the IO threads and the promotion, when its leader died there
    (``io_stopped_by_hand``). Such replicas
    testify nothing about the primary, so no failover could follow: start their IO threads
    again. Against a dead primary they fail at once (``DeadPrimary`` follows); against a live
    one they simply resume. The journal of a single instance resumes that plan instead."""
    primary = view.primary
    if not settings.controller.fleet or primary is None or view.nodes[primary].reachable:
        return None
    hidden = hidden_nodes(view)
    replicas = [n for n in view.replicas_of(primary) if view.nodes[n].reachable and n not in hidden]
    stopped = [n for n in replicas if io_stopped_by_hand(view.nodes[n].channel)]
    if not replicas or stopped != replicas:
        return None
    if now < state.retry_at.get((PlanKind.REPOINT, stopped[0]), 0.0):
        return None
    # Whoever's failover it was (a quarantine may be a follower's failover_seen, no plan of
    # its own): never restarted while a node is unread; that trace keeps the next leader safe.
    if under_way := failover_under_way(view, settings, primary):
        return candidate_maybe_half_promoted(view, state, primary, *under_way, now=now)
    reason = (
        f"the primary {primary} is unreachable and the IO threads of {', '.join(stopped)} are "
        "stopped without an error (a failover cut before its promotion): starting them, so "
        "that they testify about the primary again"
    )
    plan = Plan(
        "ReplicaIOStopped", reason, (SetIOThreads(tuple(stopped), running=True),), PlanKind.REPOINT
    )
    return Decision(plan, state)


def failover_under_way(
    view: ClusterView, settings: Settings, primary: str, *, witnessed: bool = False
) -> tuple[list[str], list[str]] | None:
    """Fleet: the trace of a failover whose leader stopped (died or lost the lease) between its
    SetIOThreads and its end: reachable replicas of ``primary`` whose IO threads are stopped
    as SetIOThreads leaves them, and nodes that cannot be read now (unreachable, or a probe
    failed since the last good one, which may show the node as it was before a Promote). One
    of those may be that failover's candidate, made writable. Hidden nodes count in neither.
    A replica counts as stopped by its last good read, whatever its failures since (one late
    probe round must not lift the hold: the conservative side, as for ``unread``).
    ``witnessed``: other replicas testify the primary dead (``DeadPrimary``); a stop this
    instance saw while the primary still answered is then an operator's, not a failover's
    (``stopped_while_the_primary_answered``). Returns (stopped, unread), or None."""
    if not settings.controller.fleet:
        return None
    hidden = hidden_nodes(view)
    replicas = [n for n in view.replicas_of(primary) if view.nodes[n].reachable]
    stopped = [
        n
        for n in replicas
        if n not in hidden
        and io_stopped_by_hand(view.nodes[n].channel)
        and not (witnessed and stopped_while_the_primary_answered(view, settings, primary, n))
    ]
    unread = [
        n
        for n, v in sorted(view.nodes.items())
        if n != primary and n not in hidden and (not v.reachable or v.failures > 0)
    ]
    return (stopped, unread) if stopped and unread else None


def stopped_while_the_primary_answered(
    view: ClusterView, settings: Settings, primary: str, name: str
) -> bool:
    """An operator's stop, not a failover's: this instance read ``name``'s IO thread stopped,
    and both ``primary`` answered here and another replica's link to it made progress
    (heartbeats, GTID) longer than a stall after that read: the primary was alive and
    serving, and a failover stops IO threads only once its leader found every replica's link
    to the primary silent for a stall (``DeadPrimary``). Links silent together (a failing
    primary), or no such history (a fresh start, an idle source without heartbeats): False,
    the conservative side."""
    since, answered = view.nodes[name].io_stopped_at, view.nodes[primary].last_ok_at
    if since is None or answered is None:
        return False
    progress = [
        at
        for n in view.replicas_of(primary)
        if n != name and (at := view.nodes[n].io_progress_at) is not None
    ]
    # Progress counts while the primary still answered here (a restarted IO thread's
    # counters may move after its loss).
    return bool(progress) and min(max(progress), answered) - since > settings.failover.io_stall


def candidate_maybe_half_promoted(
    view: ClusterView,
    state: ControllerState,
    primary: str,
    stopped: list[str],
    unread: list[str],
    *,
    now: float,
) -> Decision:
    """A failover was under way (its SetIOThreads stopped every reachable replica) when its
    leader stopped, and a node that cannot be read may be its candidate, promoted halfway:
    made writable, not yet published nor routed. Starting the IO threads would let the
    replicas testify the primary dead, and the next failover would promote another replica
    beside it (two writable nodes). No change: an alert, once. It goes on when the node
    answers (the resume rules see what it is), or when an operator hides it (maintenance), or
    when the primary answers."""
    names = ", ".join(unread)
    reason = (
        f"halted: the primary {primary} is lost and the IO threads of {', '.join(stopped)} are "
        "stopped as a failover leaves them (maybe a failover whose leader stopped, or an "
        f"operator's stop); {names} cannot be read now and may be such a failover's candidate, "
        "promoted halfway (writable): no failover while one may be writable. Bring "
        f"{names} back; or make sure each is "
        "read-only (read_only=ON in its configuration too) or down, and run "
        + " and ".join(f"`hacontrol maintenance {n} on`" for n in unread)
        + " on the leader to go on without them"
        + after_the_way_on(state, primary, now)
    )
    plan = Plan("FailoverUnderWayCandidateUnread", reason, kind=PlanKind.ALERT)
    return halt_once(
        view,
        state,
        AlertKey(Condition.FAILOVER_UNDER_WAY, primary),
        plan,
        alert=AlertKind.HALT,
        node=unread[0],
        summary="HALT: IO threads stopped as a failover leaves them, a node unread",
        body=reason,
    )


def after_the_way_on(state: ControllerState, primary: str, now: float) -> str:
    """What stops the failover that the way on of a hold would let follow: this instance saw a
    failover away from ``primary`` (it stays quarantined: never failed over automatically
    again) or one within the recovery block."""
    if (q := state.quarantined.get(primary)) is not None:
        return (
            f"; this instance saw {q.new_primary} promoted: {primary} stays quarantined, no "
            f"automatic failover follows (QuarantinedPrimaryDead): promote a replica by hand"
        )
    if state.blocked_until is not None and now < state.blocked_until:
        return "; a failover happened within the recovery block: `hacontrol ack` as well"
    return ""


def left_to_the_journal(
    intent: Intent | None, before: ControllerState, decision: Decision
) -> Decision:
    """The hold of a failover under way, without its alert while this instance's journal has
    its own open record of a failover from that primary (``half_done_waits`` alerts for it:
    one HALT mail, not two). The hold itself stands, whoever's failover it was; the alert is
    not marked sent, so it goes out once that record is closed and the hold lasts."""
    plan = decision.plan
    if plan.rule != "FailoverUnderWayCandidateUnread" or intent is None:
        return decision
    promote = intent.plan.promote
    if promote is None or intent.plan.kind is not PlanKind.FAILOVER:
        return decision
    if AlertKey(Condition.FAILOVER_UNDER_WAY, promote.old_primary) not in decision.state.alerted:
        return decision  # about another primary
    quiet = replace(plan, actions=tuple(a for a in plan.actions if not isinstance(a, Notify)))
    return Decision(quiet, replace(decision.state, alerted=before.alerted))


def halt_once(
    view: ClusterView,
    state: ControllerState,
    key: AlertKey,
    plan: Plan,
    *,
    alert: AlertKind,
    node: str,
    summary: str,
    body: str,
    ranked: list[Candidate] | None = None,
) -> Decision:
    """No failover: ``plan`` (it changes nothing) and its alert, once while ``key`` lasts,
    with the candidates when ``ranked`` is given, then the topology."""
    table = (("candidates", candidate_table(ranked)),) if ranked is not None else ()
    sections = (*table, ("topology", topology_text(view)))
    return alert_once(state, key, plan, Notify(alert, node, summary, body, sections))


CONNECTION_ERRORS = frozenset({2002, 2003, 2005, 2013, 2026})
"""Client errors of a connection to the source (refused, unknown host, lost, TLS): what a
reconnecting IO thread records before a failover's SetIOThreads stops it."""


def io_stopped_by_hand(channel: ReplicationStatus | None) -> bool:
    """Stopped as a failover's SetIOThreads leaves it: no error, or the last connection error
    of a reconnect attempt (a frozen source's 2013, a dead one's 2003); never a replication
    error (1236 and the like: a real fault, not to be restarted blindly). SQL thread running."""
    return (
        channel is not None
        and channel.io_state is IoState.STOPPED
        and (channel.last_io_errno == 0 or channel.last_io_errno in CONNECTION_ERRORS)
        and channel.sql_running
    )


def rule_unreachable_primary(
    view: ClusterView, state: ControllerState, settings: Settings, now: float
) -> Decision | None:
    problem = next((p for p in view.problems if p.code is Code.UNREACHABLE_PRIMARY), None)
    if problem is None:
        return None
    plan = Plan(
        Code.UNREACHABLE_PRIMARY.value, f"no failover: {problem.reason}", kind=PlanKind.ALERT
    )
    key = AlertKey(Condition.UNREACHABLE_PRIMARY, problem.node or "")
    since = state.first_seen.get(key)
    if since is None or now - since < settings.failover.io_stall:
        # Right after a crash the replicas may not have noticed yet: this is either about to
        # become DeadPrimary, or a real controller-only partition. Alert only if it lasts.
        first_seen = {**state.first_seen, key: since if since is not None else now}
        return Decision(plan, replace(state, first_seen=first_seen))
    alert = Notify(
        AlertKind.UNREACHABLE_PRIMARY,
        problem.node,
        "primary unreachable from the controller only, no failover",
        problem.reason,
        (("topology", topology_text(view)),),
    )
    return alert_once(state, key, plan, alert)


def reprobe_targets(before: ClusterView, event: Event, settings: Settings) -> frozenset[str]:
    """Nodes to probe again at once, without waiting for their next interval. Pure.

    A lost watch connection (a crash closes it) or a failed probe of the primary, while that
    failure is not yet confirmed, sends every node to be probed again: the primary to confirm,
    the replicas because their IO threads saw the same closed connection at the same moment.
    """
    every = frozenset(before.nodes)
    if isinstance(event, ConnectionLost) and event.node in before.nodes:
        return every
    if isinstance(event, ProbeResult) and not event.ok and event.node == before.primary:
        failures = before.nodes[event.node].failures + 1
        if failures < settings.probes.failure_threshold:
            return every
    return frozenset()
