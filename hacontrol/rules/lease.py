"""The fleet's lease: who leads, from the locks the view holds. Pure.

Terms (docs/fleet.md): n configured nodes; a majority m = n // 2 + 1 of ALL of them, never of
the reachable ones (two sides of a partition could each count a majority of what they reach).
This instance holds the leader lock on a node when its own lease session there is the lock's
holder, and counts it as held until V (``lease.validity``) after the round trip that last
confirmed it was sent. V < W (``lease.wait_timeout``): the server frees an idle session's locks
at the earliest W after it received its last statement, which came after it was sent, so the
belief always ends first.

- Leader: a valid majority. It acts only from V after it took the majority, and once every
  node was probed again since: a lock freed early (the old leader's session killed by a node
  restart or a crash) was confirmed to the old leader before it was freed, hence before this
  instance took it, so every belief of the old leader about a node of this majority has ended
  by then.
- Some locks but no majority for a whole keepalive round: let go of everything and back off
  for a random time, so that instances that split the nodes between them do not deadlock.
- No lock: try only when a majority can be had (free nodes plus this instance's reach m);
  when others hold the rest there is nothing to try for, and a node restarted under a leader
  is left for that leader to take back.
"""

from __future__ import annotations

from dataclasses import replace

from hacontrol.effects import Effect, Log, Reprobe, SetLeaseMode, Step, log
from hacontrol.events import Event, PlanFinished, ProbeResult
from hacontrol.frozen import evolve
from hacontrol.model import Lease, LeaseMode, Model, Quarantined
from hacontrol.settings import Settings
from hacontrol.view import ClusterView, LockView, NodeView


def majority(settings: Settings) -> int:
    """A strict majority of ALL configured nodes."""
    return len(settings.nodes) // 2 + 1


def valid_until(lock: LockView, settings: Settings) -> float | None:
    """Until when this instance counts the node's leader lock as its own; None: not held."""
    if not lock.held or lock.sent is None:
        return None
    return lock.sent + settings.lease.validity


def held_until(view: ClusterView, settings: Settings) -> dict[str, float]:
    held = {name: valid_until(lock, settings) for name, lock in view.locks.items()}
    return {name: until for name, until in held.items() if until is not None}


def majority_until(view: ClusterView, settings: Settings) -> float | None:
    """Until when this instance holds a majority (the m-th latest end of its locks); None
    when it never holds one."""
    ends = sorted(held_until(view, settings).values(), reverse=True)
    needed = majority(settings)
    return ends[needed - 1] if len(ends) >= needed else None


def holds_majority(view: ClusterView, settings: Settings, now: float, seconds: float = 0.0) -> bool:
    """This instance holds the leader lock on a majority, valid ``seconds`` from ``now``."""
    until = majority_until(view, settings)
    return until is not None and until > now + seconds


def attainable(view: ClusterView, settings: Settings) -> bool:
    """Could this instance take a majority now: nodes known free plus its own reach m?"""
    mine = sum(1 for lock in view.locks.values() if lock.held)
    free = sum(1 for lock in view.locks.values() if lock.known and lock.leader is None)
    return mine + free >= majority(settings)


def leader_seen(view: ClusterView, settings: Settings) -> bool:
    """Others hold the leader lock on a majority: some instance leads (alerts are its job)."""
    others = sum(
        1
        for lock in view.locks.values()
        if lock.known and lock.leader is not None and lock.leader != lock.session
    )
    return others >= majority(settings)


def describe(view: ClusterView, settings: Settings, now: float) -> str:
    """Where this instance stands, node by node, for the log and status."""
    parts = []
    for name in sorted(view.nodes):
        lock = view.locks.get(name, LockView())
        until = valid_until(lock, settings)
        if until is not None:
            state = f"held, valid {until - now:.2f} s more" if until > now else "held, expired"
        elif not lock.known:
            state = f"unknown ({lock.error})"
        elif lock.leader is None:
            state = "free"
        else:
            by = f" ({lock.holder})" if lock.holder else ""
            state = f"held by connection {lock.leader}{by}"
        parts.append(f"{name}: {state}")
    needed = f"{majority(settings)} of {len(settings.nodes)} needed"
    return f"{'; '.join(parts)} ({needed})"


# ---------------------------------------------------------------------------------------------
# The lease over the whole model: step calls these for every event


def lease_update(model: Model, event: Event, settings: Settings, now: float) -> Step:
    """The lease after ``event``: who leads, what the lease edge does next, and the fresh
    probes a new leader waits for."""
    lease = model.lease
    if not lease.fleet:
        return model, ()
    if (
        isinstance(event, ProbeResult)
        and lease.ready_at is not None
        and event.at >= lease.ready_at
        and event.node in lease.unprobed
    ):
        lease = evolve(lease, unprobed=lease.unprobed - {event.node})
    jitter = getattr(event, "jitter", None)
    if jitter is not None and jitter != lease.jitter:
        lease = evolve(lease, jitter=jitter)
    step_down = None
    if isinstance(event, PlanFinished) and event.lease_lost:
        step_down = f"stepping down: {event.rule} stopped ({event.reason})"
    new, effects = lease_step(lease, model.view, settings, now, step_down=step_down)
    if new is model.lease:
        return model, effects
    if model.lease.leader_since is None and new.leader_since is not None:
        # A new leader mails every condition that still stands, once: as a follower it left
        # them to the leader (``step``: alert_left_to_leader) and kept them as alerted, and
        # the old leader may have died, or seen otherwise, before it mailed them.
        return evolve(model, lease=new, state=replace(model.state, alerted=frozenset())), effects
    return evolve(model, lease=new), effects


def lease_step(
    lease: Lease, view: ClusterView, settings: Settings, now: float, *, step_down: str | None = None
) -> tuple[Lease, tuple[Effect, ...]]:
    """The lease after what the view says now. Pure; table-tested (tests/test_lease_rules.py).

    ``step_down``: a plan stopped because the lease was not valid for its next step: let go
    (the next leader, this one or another, starts from the live topology)."""
    if not lease.fleet:
        return lease, ()
    before = lease
    leads = holds_majority(view, settings, now) and lease.mode is not LeaseMode.RELEASE
    if leads and step_down is None:
        if lease.leader_since is None:
            lease = taken(lease, view, settings, now)
        if lease.mode is not LeaseMode.ACQUIRE or lease.partial_since is not None:
            lease = evolve(lease, mode=LeaseMode.ACQUIRE, partial_since=None)
    elif lease.leader_since is not None:
        lease = let_go(lease, settings, now, step_down or lost(view, settings, now))
    else:
        lease = not_leading(lease, view, settings, now)
    effects: list[Effect] = list(changed_lines(before, lease, view, settings, now))
    if lease.mode is not before.mode:
        effects.append(SetLeaseMode(lease.mode))
    if lease.leader_since is not None and not lease.reprobed:
        assert lease.ready_at is not None
        if now >= lease.ready_at:  # the old leader's belief has ended: read everything afresh
            lease = replace(lease, reprobed=True)
            effects.append(Reprobe(frozenset(view.nodes)))
    return lease, tuple(effects)


def taken(lease: Lease, view: ClusterView, settings: Settings, now: float) -> Lease:
    held = sorted(held_until(view, settings))
    return replace(
        lease,
        leader_since=now,
        ready_at=now + settings.lease.validity,
        unprobed=frozenset(view.nodes),
        reprobed=False,
        changes=lease.changes + 1,
        reason=f"holds the leader lock on {', '.join(held)} ({len(held)} of {len(settings.nodes)})",
    )


def let_go(lease: Lease, settings: Settings, now: float, reason: str) -> Lease:
    """Release every lock, and wait a random while before trying again."""
    return replace(
        lease,
        mode=LeaseMode.RELEASE,
        leader_since=None,
        ready_at=None,
        unprobed=frozenset(),
        partial_since=None,
        backoff_until=now + lease.jitter * settings.lease.backoff,
        changes=lease.changes + (1 if lease.leader_since is not None else 0),
        reason=reason,
    )


def lost(view: ClusterView, settings: Settings, now: float) -> str:
    return f"lost the majority: {describe(view, settings, now)}"


def not_leading(lease: Lease, view: ClusterView, settings: Settings, now: float) -> Lease:
    """Not the leader: let go of a minority held for a whole round, or try when a majority
    can be had."""
    held = sorted(name for name, lock in view.locks.items() if lock.held)
    if held and lease.mode is LeaseMode.RELEASE:
        return lease  # letting go: the edge closes the sessions that hold them
    if held:
        since = lease.partial_since if lease.partial_since is not None else now
        if now - since >= settings.lease.keepalive:
            why = (
                f"held the leader lock on {', '.join(held)} only, "
                f"{majority(settings)} of {len(settings.nodes)} needed: letting go"
            )
            return let_go(lease, settings, now, why)
        return replace(lease, partial_since=since)
    if now >= lease.backoff_until and attainable(view, settings):
        reason = "trying for the leader lock: a majority of the nodes is free"
        return replace(lease, mode=LeaseMode.ACQUIRE, partial_since=None, reason=reason)
    reason = (
        "following: another instance holds the leader lock"
        if leader_seen(view, settings)
        else f"following: no majority can be had now ({describe(view, settings, now)})"
    )
    if now < lease.backoff_until:
        reason = f"backing off {lease.backoff_until - now:.2f} s before trying again"
    return replace(lease, mode=LeaseMode.HOLD, partial_since=None, reason=reason)


def changed_lines(
    before: Lease, after: Lease, view: ClusterView, settings: Settings, now: float
) -> tuple[Log, ...]:
    if before.leader_since is None and after.leader_since is not None:
        assert after.ready_at is not None
        return (
            log(
                "lease",
                None,
                "warning",
                leader=True,
                acting_in=round(after.ready_at - now, 3),
                reason=after.reason,
            ),
        )
    if before.leader_since is not None and after.leader_since is None:
        return (log("lease", None, "warning", leader=False, reason=after.reason),)
    if before.mode is not after.mode:
        return (log("lease_mode", None, "info", mode=after.mode, reason=after.reason),)
    return ()


def failover_seen(before: ClusterView, model: Model, settings: Settings, now: float) -> Step:
    """Fleet: the primary moved away from a node that is gone (another instance's failover,
    or the half of one it left): remember that node as an old primary, with the recovery
    block, as the instance that made the failover did, so that any instance leading later
    fences it when it returns instead of halting on two writers. Only a promotion: the new
    primary read writable now; never a move to a node that cannot be read (the view's primary
    falling back by its replicas' votes to the lost old primary, when the candidate froze):
    quarantined, that candidate would never be published when it answers."""
    old, new, state = before.primary, model.view.primary, model.state
    if not model.lease.fleet or old is None or new is None or old == new:
        return model, ()
    if old in state.quarantined or model.view.nodes[old].reachable:
        return model, ()
    if not read_writable(model.view.nodes[new]):
        return model, ()
    quarantined = {**state.quarantined, old: Quarantined(old, new, now)}
    blocked = now + settings.failover.recovery_block
    state = replace(state, quarantined=quarantined, last_failover_at=now, blocked_until=blocked)
    line = log("failover_seen", old, "warning", new_primary=new, reason=model.view.primary_reason)
    return replace(model, state=state), (line,)


def read_writable(node: NodeView) -> bool:
    """Read writable by its last probe, which did not fail (a fresh read, not a stale one)."""
    return (
        node.reachable
        and node.failures == 0
        and node.status is not None
        and not node.status.read_only
    )
