"""decide(view, state, settings, now) -> Decision: what to do next. Pure: no I/O, no clock.

Rules sit in one prioritized table (``RULES``); the first rule that applies makes the plan.
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
from dataclasses import dataclass, replace

from hacontrol import gtid
from hacontrol.flavors.base import NodeStatus
from hacontrol.model import ControllerState, Decision, Halt, Quarantined
from hacontrol.plan import (
    Action,
    CatchUp,
    CheckTransactions,
    Fence,
    Hook,
    Notify,
    Plan,
    PlanKind,
    Promote,
    Rejoin,
    Repoint,
    Route,
    RouteFence,
    SetIOThreads,
    SetWritable,
    WaitApplied,
)
from hacontrol.routing import Membership
from hacontrol.settings import Settings
from hacontrol.view import ClusterView, Code, Health, NodeView, hidden_nodes, link_alive

NOTHING = "Nothing"


# ---------------------------------------------------------------------------------------------
# Pure helpers


def executed(status: NodeStatus | None) -> gtid.GtidSet | None:
    if status is None:
        return None
    try:
        return gtid.parse(status.gtid_executed, status.flavor.value)
    except ValueError:
        return None


def received(node: NodeView) -> gtid.GtidSet | None:
    channel = node.channel
    if channel is None or node.status is None:
        return None
    try:
        return gtid.parse(channel.received_gtid, node.status.flavor.value)
    except ValueError:
        return None


def errant_against(node: NodeView, others: list[gtid.GtidSet]) -> gtid.GtidSet | None:
    """Transactions ``node`` executed that no other node has (errant), or None if unknown."""
    mine = executed(node.status)
    if mine is None:
        return None
    rest = mine
    for other in others:
        if other.flavor == mine.flavor:
            rest = rest - other
    return rest


@dataclass(frozen=True)
class Candidate:
    node: str
    eligible: bool
    reason: str
    received_count: int = -1
    priority: int = 0
    lag: int | None = None
    received: str = ""

    def row(self) -> str:
        verdict = "eligible" if self.eligible else "rejected"
        lag = "-" if self.lag is None else str(self.lag)
        return (
            f"{self.node:<10} {verdict:<9} received={self.received or '-':<20} "
            f"priority={self.priority:<3} lag={lag:<4} {self.reason}"
        )


def holdings(node: NodeView) -> gtid.GtidSet | None:
    """Every transaction a node has: executed, plus received into its relay log. None when
    unreadable or diverged (the two sets name different transactions at one position)."""
    mine, got = executed(node.status), received(node)
    if mine is None:
        return None
    try:
        return mine | got if got is not None and got.flavor == mine.flavor else mine
    except ValueError:
        return None


def candidates(view: ClusterView, settings: Settings, dead: str) -> list[Candidate]:
    """Every replica of ``dead``, ranked: eligible first, then the one holding most (executed
    plus received: what is in its relay log counts, never Seconds_Behind_Master alone), then
    priority, then lowest lag. Each with the reason it is eligible or rejected."""
    hidden = hidden_nodes(view)
    dead_status = view.nodes[dead].status
    # What the cluster is known to have from the primary: its last executed set and every
    # replica's relay log (a node's own relay log included: received is not errant).
    known = [s for s in (executed(dead_status),) if s is not None]
    for name, node in view.nodes.items():
        if name != dead and (got := received(node)) is not None:
            known.append(got)
    out: list[Candidate] = []
    for name in view.replicas_of(dead):
        node = view.nodes[name]
        conf = settings.node(name)
        got = received(node)
        held = holdings(node)
        channel = node.channel
        base = {
            "node": name,
            "priority": conf.priority,
            "lag": channel.seconds_behind if channel else None,
            "received": str(got) if got is not None else "",
            "received_count": held.count() if held is not None else -1,
        }
        errant = errant_against(node, known)
        reason = None
        if not node.reachable:
            reason = f"not reachable ({node.reason})"
        elif name in hidden:
            reason = "hidden by an operator (maintenance)"
        elif conf.no_promote:
            reason = "no_promote is set"
        elif channel is None or not channel.sql_running:
            reason = "SQL thread not running" + (
                f" (error {channel.last_sql_errno}: {channel.last_sql_error})"
                if channel and channel.last_sql_errno
                else ""
            )
        elif got is None:
            reason = "received GTID position unknown"
        elif errant is None:
            reason = "executed GTID set unreadable"
        elif errant:
            reason = f"errant transactions {errant}"
        out.append(Candidate(eligible=reason is None, reason=reason or "ok", **base))

    def rank(c: Candidate) -> tuple:
        return (
            not c.eligible,
            -c.received_count,
            -c.priority,
            c.lag if c.lag is not None else float("inf"),
            c.node,
        )

    return sorted(out, key=rank)


def missing_from(view: ClusterView, best: str, dead: str) -> str | None:
    """What reachable replicas of ``dead`` hold that ``best`` lacks (possibly acknowledged
    writes: semi-sync puts them in some replica's relay log, not necessarily the best's)."""
    mine = holdings(view.nodes[best])
    if mine is None:
        return f"{best}'s transactions unreadable"
    # Only what came from the primary counts (its last executed set, every relay log): a
    # replica's own errant transactions are not the primary's acknowledged writes.
    from_primary = executed(view.nodes[dead].status)
    for node in view.nodes.values():
        got = received(node)
        if got is not None and got.flavor == mine.flavor:
            try:
                from_primary = got if from_primary is None else from_primary | got
            except ValueError:
                return "relay logs of the replicas diverge"
    gaps = []
    for name in view.replicas_of(dead):
        node = view.nodes[name]
        if name == best or not node.reachable:
            continue
        theirs = holdings(node)
        if theirs is None:
            gaps.append(f"{name}: unreadable")
        elif (
            theirs.flavor == mine.flavor
            and from_primary is not None
            and (extra := (theirs & from_primary) - mine)
        ):
            gaps.append(f"{name} has {extra}")
    return "; ".join(gaps) or None


def hooks(
    settings: Settings, phase: str, context: tuple[tuple[str, str], ...], *, required: bool = False
) -> tuple[Hook, ...]:
    """A Hook action when the operator configured a command for ``phase``; else nothing."""
    if not getattr(settings.hooks, phase):
        return ()
    return (Hook(phase, (("phase", phase), *context), required),)


def candidate_table(rows: list[Candidate]) -> str:
    return "\n".join(c.row() for c in rows) or "(no replica of the dead primary)"


def reader_ok(
    view: ClusterView, name: str, primary: str, max_lag: float, stall: float = float("inf")
) -> tuple[bool, str]:
    node = view.nodes[name]
    if node.health is not Health.HEALTHY:
        return False, f"{node.health.value}: {node.reason}"
    if view.sources.get(name) != primary:
        return False, f"replicates from {view.sources.get(name)}, not {primary}"
    channel = node.channel
    assert channel is not None
    if not link_alive(node, view.at, stall):
        # Seconds_Behind_Master stays 0 while a partitioned IO thread says Yes and receives
        # nothing: the replica would serve ever older data.
        return False, "no heartbeat or transaction received lately from the primary"
    if channel.seconds_behind is not None:
        return channel.seconds_behind <= max_lag, f"{channel.seconds_behind} s behind"
    # NULL lag is neither zero nor infinite: compare what it executed with the primary.
    mine, theirs = executed(node.status), executed(view.nodes[primary].status)
    if mine is None or theirs is None:
        return False, "lag unknown (NULL) and GTID positions unreadable"
    missing = gtid.behind(mine, theirs)
    return missing == 0, f"lag NULL, {missing} transaction(s) behind the primary"


def desired_membership(
    view: ClusterView, state: ControllerState, settings: Settings
) -> Membership | None:
    """Where every managed node should be routed, or None when no primary can be named."""
    primary = view.primary
    if primary is None or not view.nodes[primary].reachable or primary in state.quarantined:
        return None
    status = view.nodes[primary].status
    if status is None or status.read_only:
        return None
    hidden = hidden_nodes(view) | state.maintenance
    readers = {primary} if settings.router.primary_is_reader else set()
    broken: set[str] = set()
    for name in view.nodes:
        if name == primary or name in hidden:
            continue
        ok = (
            name not in state.quarantined
            and reader_ok(
                view, name, primary, settings.failover.max_lag, settings.failover.io_stall
            )[0]
        )
        (readers if ok else broken).add(name)
    return Membership.of([primary], readers, broken, hidden)


def routing_differs(current: Membership | None, desired: Membership) -> bool:
    """Compare what routes traffic: writers and readers (HAProxy reads hidden back as broken)."""
    if current is None:
        return True
    return current.writers != desired.writers or current.readers != desired.readers


def topology_text(view: ClusterView) -> str:
    lines = []
    for name, node in view.nodes.items():
        role = (
            "primary"
            if name == view.primary
            else (f"replica of {view.sources[name]}" if name in view.sources else "-")
        )
        lines.append(f"{name:<10} {node.health.value:<19} {role}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The rules, in priority order.

Rule = Callable[[ClusterView, ControllerState, Settings, float], Decision | None]


def _alert_once(state: ControllerState, key: str, plan: Plan, alert: Notify) -> Decision:
    if key in state.alerted:
        return Decision(
            replace(plan, actions=tuple(a for a in plan.actions if not isinstance(a, Notify))),
            state,
        )
    return Decision(
        replace(plan, actions=(*plan.actions, alert)), replace(state, alerted=state.alerted | {key})
    )


def rule_no_quorum(view, state, settings, now) -> Decision | None:
    if view.quorum.ok:
        return None
    reason = next(p.reason for p in view.problems if p.code is Code.NO_QUORUM)
    plan = Plan(Code.NO_QUORUM.value, f"no change without quorum: {reason}", kind=PlanKind.ALERT)
    alert = Notify("no_quorum", None, "no quorum, automatic changes stopped", reason)
    return _alert_once(state, "NoQuorum", plan, alert)


def rule_startup_grace(view, state, settings, now) -> Decision | None:
    needed = settings.probes.failure_threshold
    waiting = [
        n
        for n, node in view.nodes.items()
        if node.probes < needed and node.health is not Health.UNREACHABLE
    ]
    if settings.router.kind != "none" and view.router.at is None:
        waiting.append("the router")
    if waiting:
        return Decision(
            Plan(
                "StartupGrace", f"waiting for {needed} probes of {', '.join(waiting)} before acting"
            ),
            state,
        )
    return None


def rule_fence_returning_primary(view, state, settings, now) -> Decision | None:
    """An old primary came back writable: fence it before anything else (never two writers)."""
    for name, q in state.quarantined.items():
        node = view.nodes.get(name)
        if node is None or not node.reachable or node.status is None:
            continue
        if q.new_primary != view.primary or now < state.retry_at.get(f"fence:{name}", 0.0):
            continue  # only behind a promoted, recognized new primary; failures back off
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


def rule_two_writers(view, state, settings, now) -> Decision | None:
    problem = next(
        (
            p
            for p in view.problems
            if p.code in (Code.ROUTER_HAS_TWO_WRITERS, Code.TWO_WRITABLE_NODES)
        ),
        None,
    )
    if problem is None:
        return None
    halt = (
        state.halt
        if state.halt and state.halt.code == problem.code.value
        else Halt(problem.code.value, problem.reason, now)
    )
    plan = Plan(
        problem.code.value,
        f"halted: {problem.reason}; no automatic change until an "
        "operator leaves exactly one writer",
        kind=PlanKind.HALT,
    )
    alert = Notify(
        "halt",
        None,
        f"HALT: {problem.code.value}",
        problem.reason,
        (("topology", topology_text(view)),),
    )
    return _alert_once(replace(state, halt=halt), f"halt:{problem.code.value}", plan, alert)


def _paused(withheld: Plan, state: ControllerState) -> Decision:
    """Paused: the change is withheld (and its state not taken); alerts still go out, once."""
    plan = Plan(
        "Paused",
        f"paused by an operator: not doing {withheld.rule} ({withheld.reason})",
        kind=PlanKind.ALERT,
    )
    alert = Notify("paused_change_withheld", None, f"paused: {withheld.rule} withheld", plan.reason)
    return _alert_once(state, f"paused:{withheld.rule}", plan, alert)


def rule_halted(view, state, settings, now) -> Decision | None:
    if state.halt is None:
        return None
    return Decision(
        Plan(
            "Halted",
            f"halted since {state.halt.since:.1f}: {state.halt.reason}",
            kind=PlanKind.HALT,
        ),
        state,
    )


def rule_dead_primary(view, state, settings, now) -> Decision | None:
    problem = next((p for p in view.problems if p.code is Code.DEAD_PRIMARY), None)
    if problem is None:
        return None
    dead = problem.node
    assert dead is not None
    if dead in state.quarantined:
        return None  # already failed over; the new primary's replicas show it
    if state.blocked_until is not None and now < state.blocked_until:
        left = state.blocked_until - now
        plan = Plan(
            "FailoverBlocked",
            f"{dead} is dead but a failover happened "
            f"{now - (state.last_failover_at or now):.0f} s ago: blocked for {left:.0f} s "
            "more unless acknowledged (anti-flapping)",
            kind=PlanKind.ALERT,
        )
        alert = Notify(
            "failover_blocked",
            dead,
            "primary dead, failover blocked",
            plan.reason,
            (("topology", topology_text(view)),),
        )
        return _alert_once(state, f"blocked:{dead}", plan, alert)
    ranked = candidates(view, settings, dead)
    table = candidate_table(ranked)
    if not ranked or not ranked[0].eligible:
        reason = f"{dead} is dead and no replica can be promoted"
        plan = Plan("NoCandidate", f"halted: {reason}", kind=PlanKind.HALT)
        alert = Notify(
            "no_candidate",
            dead,
            "primary dead, NO candidate to promote",
            problem.reason,
            (("candidates", table), ("topology", topology_text(view))),
        )
        # No stored halt: this is re-evaluated at every decision, so a replica that becomes
        # eligible (an SQL thread restarted after a backup) is promoted without an operator.
        return _alert_once(state, f"no_candidate:{dead}", plan, alert)
    best = ranked[0].node
    if missing := missing_from(view, best, dead):
        plan = Plan(
            "CandidateIncomplete",
            f"no failover: the best candidate {best} lacks "
            f"transactions other replicas hold ({missing}); promoting it would lose "
            "them (an operator must catch it up or choose)",
            kind=PlanKind.ALERT,
        )
        alert = Notify(
            "candidate_incomplete",
            dead,
            "primary dead, best candidate incomplete",
            plan.reason,
            (("candidates", table), ("topology", topology_text(view))),
        )
        return _alert_once(state, f"no_candidate:{dead}", plan, alert)
    others = tuple(c.node for c in ranked[1:] if view.nodes[c.node].reachable)
    hidden = hidden_nodes(view)
    readers = {best} if settings.router.primary_is_reader else set()
    after = Membership.of(
        [best], readers, {n for n in view.nodes if n not in (best, *hidden)} - readers, hidden
    )
    context = (
        ("old_primary", dead),
        ("new_primary", best),
        ("kind", PlanKind.FAILOVER.value),
        ("reason", problem.reason),
    )
    reason = (
        f"{dead} is dead ({problem.reason}); promoting {best}, the most advanced "
        f"eligible replica (received {ranked[0].received})"
    )
    replicas = (best, *(n for n in others if n not in hidden))  # hidden: the operator's
    actions: tuple[Action, ...] = (
        *hooks(settings, "on_failure_detected", context),
        *hooks(settings, "pre_failover", context, required=True),
        # Required: a frozen or partitioned "dead" primary may still take writes through the
        # router; never promote while the router may still send them there.
        RouteFence(dead, required=True),
        # The replicas' IO threads may be stuck on a frozen primary until slave_net_timeout:
        # stop them all at once, not one STOP SLAVE after the other.
        SetIOThreads(replicas, running=False),
        WaitApplied(best, settings.failover.apply_timeout),
        Promote(best, dead),
        # Writers first: semi-sync on the new primary holds its first commits until a
        # repointed replica acknowledges, so nothing acknowledged can be lost meanwhile.
        Route(after),
        Repoint(others, best),
        Notify(
            "failover",
            dead,
            f"failover: {best} promoted in place of",
            problem.reason,
            (("candidates", table), ("topology before", topology_text(view))),
        ),
        *hooks(settings, "post_failover", context),
    )
    new_state = replace(
        state,
        blocked_until=now + settings.failover.recovery_block,
        last_failover_at=now,
        quarantined={**state.quarantined, dead: Quarantined(dead, best, now)},
    )
    # Stopped before the promotion (a veto, WaitApplied timed out): give the replicas their
    # IO threads back, so that they testify again about the primary.
    rollback = (SetIOThreads(replicas, running=True),)
    return Decision(
        Plan("DeadPrimary", reason, actions, kind=PlanKind.FAILOVER, rollback=rollback), new_state
    )


def rule_no_primary(view, state, settings, now) -> Decision | None:
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
            alert = Notify("primary_read_only", primary, "the primary is read-only", reason)
            return _alert_once(state, "no_primary:", plan, alert)
    if problem is None:
        return None
    plan = Plan(
        Code.NO_PRIMARY.value,
        f"no change: no primary can be named: {problem.reason}",
        kind=PlanKind.ALERT,
    )
    alert = Notify(
        "no_primary",
        None,
        "no primary can be named: writes may be failing",
        problem.reason,
        (("topology", topology_text(view)),),
    )
    return _alert_once(state, "no_primary:", plan, alert)


def rule_unreachable_primary(view, state, settings, now) -> Decision | None:
    problem = next((p for p in view.problems if p.code is Code.UNREACHABLE_PRIMARY), None)
    if problem is None:
        return None
    plan = Plan(
        Code.UNREACHABLE_PRIMARY.value, f"no failover: {problem.reason}", kind=PlanKind.ALERT
    )
    key = f"unreachable:{problem.node}"
    since = state.first_seen.get(key)
    if since is None or now - since < settings.failover.io_stall:
        # Right after a crash the replicas may not have noticed yet: this is either about to
        # become DeadPrimary, or a real controller-only partition. Alert only if it lasts.
        first_seen = {**state.first_seen, key: since if since is not None else now}
        return Decision(plan, replace(state, first_seen=first_seen))
    alert = Notify(
        "unreachable_primary",
        problem.node,
        "primary unreachable from the controller only, no failover",
        problem.reason,
        (("topology", topology_text(view)),),
    )
    return _alert_once(state, key, plan, alert)


def rule_old_primary(view, state, settings, now) -> Decision | None:
    """A fenced old primary: rejoin it when clean, keep it quarantined when errant."""
    for name, q in sorted(state.quarantined.items()):
        node = view.nodes.get(name)
        primary = view.primary
        if node is None or not node.reachable or node.status is None or primary is None:
            continue
        if q.new_primary != primary:
            continue  # the node we promoted is not the primary now: an operator's call
        if view.sources.get(name) == primary and node.health is Health.HEALTHY:
            ok, why = reader_ok(
                view, name, primary, settings.failover.max_lag, settings.failover.io_stall
            )
            if ok:  # rejoined and caught up: back to the readers
                remaining = {k: v for k, v in state.quarantined.items() if k != name}
                return Decision(
                    Plan(
                        "OldPrimaryRejoined",
                        f"{name} replicates from {primary} and caught up ({why})",
                    ),
                    replace(state, quarantined=remaining),
                )
            continue
        mine = executed(node.status)
        theirs = executed(view.nodes[primary].status)
        if mine is None or theirs is None:
            continue
        errant = mine - theirs
        channel = node.channel
        broken_1236 = channel is not None and channel.last_io_errno == 1236
        if errant or broken_1236:
            detail = (
                str(errant)
                if errant
                else (f"replication error 1236: {channel.last_io_error}" if channel else "")
            )
            quarantined = {**state.quarantined, name: replace(q, errant=detail)}
            plan = Plan(
                "ErrantOldPrimary",
                f"old primary {name} has errant transactions {detail}: kept in broken; "
                "an operator must repair it (never RESET MASTER automatically)",
                kind=PlanKind.ALERT,
            )
            alert = Notify(
                "errant_transactions",
                name,
                f"old primary has errant transactions: {detail}",
                plan.reason,
                (("errant GTIDs", detail), ("topology", topology_text(view))),
            )
            return _alert_once(
                replace(state, quarantined=quarantined), f"errant:{name}", plan, alert
            )
        if view.sources.get(name) == primary:
            continue  # replicating already, catching up
        if now < state.retry_at.get(f"rejoin:{name}", 0.0):
            continue
        return Decision(
            Plan(
                "RejoinOldPrimary",
                f"old primary {name} has no errant transactions ({mine} within "
                f"{theirs}): rejoin it as a replica of {primary}",
                (Rejoin(name, primary),),
                kind=PlanKind.REJOIN,
            ),
            state,
        )
    return None


def writer_change_problem(
    view: ClusterView, state: ControllerState, current: Membership, new: str
) -> str | None:
    """Why routine reconciling must not move the router's writer to ``new``, or None.

    Writer changes belong to failovers and switchovers. Reconciling may only fill an empty
    writer group, or replace writers that are gone (unreachable, read-only, or an old primary
    we quarantined), and only with a primary that replicas corroborate (or with no replica
    reachable to say otherwise)."""
    for writer in sorted(current.writers - {new}):
        node = view.nodes.get(writer)
        gone = (
            writer in state.quarantined
            or node is None
            or not node.reachable
            or (node.status is not None and node.status.read_only)
        )
        if not gone:
            return f"the router's writer {writer} is reachable and writable"
    reachable_replicas = [
        n for n, nv in view.nodes.items() if n != new and nv.reachable and n in view.sources
    ]
    if reachable_replicas and new not in {view.sources[n] for n in reachable_replicas}:
        return f"no reachable replica follows {new}"
    return None


def rule_repoint_stray(view, state, settings, now) -> Decision | None:
    """A replica still pointing at a node that is not the primary (down during a failover,
    chained under an old primary): repoint it, unless it has errant transactions."""
    primary = view.primary
    if primary is None or not view.nodes[primary].reachable or primary in state.quarantined:
        return None
    theirs = executed(view.nodes[primary].status)
    hidden = hidden_nodes(view) | state.maintenance
    for name, node in sorted(view.nodes.items()):
        source = view.sources.get(name)
        if (
            name == primary
            or name in hidden
            or name in state.quarantined
            or source is None
            or source == primary
            or not node.reachable
            or node.status is None
            or not node.status.read_only
        ):
            continue
        if (
            source in view.nodes
            and view.nodes[source].reachable
            and source not in (state.quarantined)
        ):
            continue  # a chain through a live replica (node3 -> node2 -> primary) is fine
        if now < state.retry_at.get(f"repoint:{name}", 0.0):
            continue
        mine = executed(node.status)
        if mine is None or theirs is None or (mine - theirs):
            continue  # errant or unreadable: an operator's job (ReplicaNotReplicatingFromPrimary)
        return Decision(
            Plan(
                "RepointStray",
                f"{name} replicates from {source}, which is not the primary {primary}: repoint it",
                (Repoint((name,), primary),),
                kind=PlanKind.REPOINT,
            ),
            state,
        )
    return None


def rule_route(view, state, settings, now) -> Decision | None:
    if settings.router.kind == "none" or now < state.route_retry_at:
        return None
    desired = desired_membership(view, state, settings)
    current = view.router.membership
    if desired is None or current is None:
        return None
    if not routing_differs(current, desired):
        return None
    (new,) = desired.writers
    if current.writers != desired.writers and (
        why := writer_change_problem(view, state, current, new)
    ):
        plan = Plan(
            "RouterWriterMismatch",
            f"not moving the router's writer "
            f"{sorted(current.writers)} to {new}: {why}; an operator must decide",
            kind=PlanKind.ALERT,
        )
        alert = Notify(
            "router_writer_mismatch",
            new,
            "router writer differs from the primary",
            plan.reason,
            (("topology", topology_text(view)),),
        )
        return _alert_once(state, f"writer_mismatch:{new}", plan, alert)
    writers = sorted(current.writers) if current else "unknown"
    readers = sorted(current.readers) if current else "unknown"
    reason = (
        f"router differs from the topology: writers {writers} -> "
        f"{sorted(desired.writers)}, readers {readers} -> {sorted(desired.readers)}"
    )
    return Decision(Plan("RouteReconcile", reason, (Route(desired),), kind=PlanKind.ROUTE), state)


RULES: tuple[tuple[str, Rule], ...] = (
    ("StartupGrace", rule_startup_grace),  # first: before any probe every node is unknown
    ("NoQuorum", rule_no_quorum),
    ("FenceReturningPrimary", rule_fence_returning_primary),
    ("TwoWriters", rule_two_writers),
    ("Halted", rule_halted),
    ("DeadPrimary", rule_dead_primary),
    ("UnreachablePrimary", rule_unreachable_primary),
    ("NoPrimary", rule_no_primary),
    ("OldPrimary", rule_old_primary),
    ("RepointStray", rule_repoint_stray),
    ("RouteReconcile", rule_route),
)


def _primary_read_only(view: ClusterView) -> bool:
    node = view.nodes.get(view.primary) if view.primary else None
    return bool(node and node.reachable and node.status and node.status.read_only)


def _prune(view: ClusterView, state: ControllerState) -> ControllerState:
    """Forget alerts and halts whose condition is gone, so they fire again if it returns."""
    codes = {p.code.value for p in view.problems}
    keep = set()
    for key in state.alerted:
        kind, _, node = key.partition(":")
        alive = {
            "NoQuorum": not view.quorum.ok,
            "halt": node in codes,
            "blocked": view.has(Code.DEAD_PRIMARY),
            "no_candidate": view.has(Code.DEAD_PRIMARY),
            "unreachable": view.has(Code.UNREACHABLE_PRIMARY),
            "errant": node in state.quarantined,
            "writer_mismatch": view.has(Code.ROUTER_WRITER_IS_NOT_PRIMARY),
            "no_primary": view.has(Code.NO_PRIMARY) or _primary_read_only(view),
            "paused": state.paused,
        }.get(kind, False)
        if alive:
            keep.add(key)
    halt = state.halt
    # A halt about the dead primary (no candidate, a failover step failed) lasts while the
    # primary is dead; the others while their problem is seen.
    about_dead = halt is not None and halt.code == "FailoverFailed"
    if (
        halt is not None
        and halt.code not in codes
        and not (about_dead and view.has(Code.DEAD_PRIMARY))
    ):
        halt = None
    first_seen = {
        k: v
        for k, v in state.first_seen.items()
        if k.startswith("unreachable:") and view.has(Code.UNREACHABLE_PRIMARY)
    }
    return replace(state, alerted=frozenset(keep), halt=halt, first_seen=first_seen)


def decide(view: ClusterView, state: ControllerState, settings: Settings, now: float) -> Decision:
    """The next plan and the state after it. Pure."""
    state = _prune(view, state)
    for _, rule in RULES:
        decision = rule(view, state, settings, now)
        if decision is not None:
            if state.paused and decision.plan.changes_cluster:
                return _paused(decision.plan, state)
            return decision
    return Decision(Plan(NOTHING, "cluster as desired; nothing to do"), state)


# ---------------------------------------------------------------------------------------------
# Operator commands: pure planning with pre-flight refusals (a str is a refusal's reason).


def plan_switchover(
    view: ClusterView, state: ControllerState, settings: Settings, target: str | None, now: float
) -> Plan | str:
    """A planned switchover to ``target`` (or the best candidate), or why it is refused."""
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
    if target is not None and target not in view.nodes:
        return f"unknown node {target!r}"
    if target == old:
        return f"{target} is already the primary"
    ranked = candidates(view, settings, old)
    table = candidate_table(ranked)
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
    new = chosen.node
    hidden = hidden_nodes(view) | state.maintenance
    others = tuple(
        n for n in view.replicas_of(old) if n != new and view.nodes[n].reachable and n not in hidden
    )
    readers = {new, old, *others} if settings.router.primary_is_reader else {old, *others}
    broken = {n for n in view.nodes if n not in readers | hidden | {new}}
    after = Membership.of([new], readers, broken, hidden)
    before = view.router.membership
    deadline = settings.failover.switchover_deadline
    rollback: tuple[Action, ...] = (
        SetWritable(old, True, semi_sync_source=status.semi_sync.source_enabled),
    )
    if before is not None and len(before.writers) == 1:
        rollback += (Route(before),)
    rollback += (
        Notify(
            "switchover_rolled_back",
            old,
            f"switchover to {new} rolled back",
            f"{old} is writable and the writer again",
            (("candidates", table),),
        ),
    )
    actions: tuple[Action, ...] = (
        CheckTransactions(old, settings.failover.max_transaction_age),
        RouteFence(old, required=True),
        Fence(old),
        CatchUp(new, old, deadline),
        Promote(new, old),
        Route(after),  # writers first; semi-sync holds commits until a replica acknowledges
        Repoint(others, new),
        Rejoin(old, new, required=False),
        *hooks(
            settings,
            "post_switchover",
            (("old_primary", old), ("new_primary", new), ("kind", PlanKind.SWITCHOVER.value)),
        ),
        Notify(
            "switchover",
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
        rollback=rollback,
    )


def plan_maintenance(
    view: ClusterView, state: ControllerState, settings: Settings, node: str | None, on: bool
) -> tuple[Plan, ControllerState] | str:
    """Move ``node`` to (on) or from (off) the hidden group, or why it is refused."""
    if node is None or node not in view.nodes:
        return f"unknown node {node!r}"
    if on and node == view.primary:
        return f"{node} is the primary: switch over first"
    if on and node in state.maintenance:
        return f"{node} is already in maintenance"
    if not on and node not in hidden_nodes(view) | state.maintenance:
        return f"{node} is not in maintenance"
    maintenance = state.maintenance | {node} if on else state.maintenance - {node}
    new_state = replace(state, maintenance=maintenance)
    current = view.router.membership
    if settings.router.kind == "none" or current is None or view.primary is None:
        return Plan(
            "Maintenance",
            f"{node} maintenance {'on' if on else 'off'} (no router change possible now)",
            kind=PlanKind.MAINTENANCE,
        ), new_state
    hidden = (current.hidden | maintenance) - ({node} if not on else set())
    if on:
        desired = Membership(
            current.writers - {node}, current.readers - {node}, current.broken - {node}, hidden
        )
    else:
        desired = Membership(current.writers, current.readers, current.broken | {node}, hidden)
    verb = "hidden (maintenance)" if on else "back from maintenance (broken until healthy)"
    plan = Plan(
        "Maintenance",
        f"{node} {verb} at an operator's request",
        (Route(desired, hidden_change=True),),
        kind=PlanKind.MAINTENANCE,
    )
    return plan, new_state
