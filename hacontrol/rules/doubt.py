"""Replicas that cannot be read when a failover is decided: could one of them hold a write the
dead primary acknowledged that the candidate lacks? Pure.

Semi-synchronous replication holds each commit until ONE replica acknowledges it. With
replicas node2 and node3, a write acknowledged by node3 alone is not on node2: promoting node2
while node3 cannot be read may lose it. Only a source that never falls back to asynchronous
replication promises anything (``SemiSync.never_falls_back``); otherwise the failover alert
says how long writes were at risk, and nothing here applies.

A replica that cannot be read is *cleared* when all of these hold, from facts the view has:

- it was gone before the primary's last good probe: its last good probe was sent a whole probe
  interval plus a probe timeout before that one (its next probe, due meanwhile, failed, and
  every probe since: the failures are consecutive);
- the primary said so itself at that probe: its semi-sync clients
  (``Rpl_semi_sync_master_clients``) were no more than the replicas that answer now and were
  linked to it then (``linked_at``; a replica cut off from the controller alone, still
  replicating, is one of those clients);
- the candidate holds (executed or in its relay log) everything the primary had written at that
  probe: so it holds every write the gone replica could have acknowledged before it went; after
  it, only the replicas that answer acknowledged anything, and the failover stops and compares
  those (``missing_from``, ``WaitApplied``'s peers). That assumes the gone replica did not
  reconnect to the primary alone afterwards (a partial partition): a residual risk nothing
  the controller reads rules out (docs/partitions.md).

Anything else is a real doubt: the failover waits (``failover.wait_unreachable_replica``) for
the replica to answer, then halts with an alert.
"""

from __future__ import annotations

from dataclasses import dataclass

from hacontrol.flavors.base import IoState
from hacontrol.rules.candidates import executed, holdings
from hacontrol.settings import Settings
from hacontrol.view import ClusterView, NodeView


@dataclass(frozen=True)
class Unanswered:
    """A replica of the dead primary that cannot be read now; ``doubt``: why it may hold an
    acknowledged write the candidate lacks (None: it cannot, and ``why`` says so)."""

    node: str
    why: str
    doubt: str | None

    def describe(self) -> str:
        return f"{self.node}: {self.doubt or self.why}"


UNNAMED = "a semi-sync replica the controller cannot name"


def unanswered(
    view: ClusterView, dead: str, consented: frozenset[str] = frozenset()
) -> tuple[str, ...]:
    """Nodes that may be replicas of ``dead`` and cannot be read now: a replica of it whose
    last probe failed (unreachable, or on its way there: what it holds now is not known), and
    a node never read at all (its source unknown). Hidden ones too (in maintenance for a
    backup, a replica may still replicate), unless in ``consented``: hidden by an operator
    after the failover began to wait for them (how an operator accepts going on without)."""
    out = []
    for name, node in view.nodes.items():
        if name == dead or name in consented:
            continue
        maybe_replica = view.sources.get(name) == dead or node.status is None
        if maybe_replica and (not node.reachable or node.failures > 0):
            out.append(name)
    return tuple(out)


def judge_unanswered(
    view: ClusterView,
    settings: Settings,
    dead: str,
    best: str,
    consented: frozenset[str] = frozenset(),
) -> list[Unanswered]:
    """Every unanswered replica of ``dead``, cleared or in doubt against the candidate ``best``
    (module docstring), and an unnamed doubt when the primary counted more semi-sync clients
    at its last good probe than the replicas that answer and were linked to it then. Empty
    when the dead primary's semi-sync promises nothing."""
    primary = view.nodes[dead]
    semi = primary.status.semi_sync if primary.status is not None else None
    if semi is None or not semi.never_falls_back:
        return []
    gone = unanswered(view, dead, consented)
    answering = [r for r in view.replicas_of(dead) if r not in gone and r not in consented]
    linked = [r for r in answering if linked_at(view.nodes[r], primary.last_ok_at, settings)]
    clients = semi.source_clients
    if not gone:
        # A node the operator chose to go on without may have been one of the clients: with
        # no named node left in doubt, the unnamed client's share is accepted with it. Never
        # when judging a named node (below): a consented node that was no client would free a
        # slot for one that was (another node's acknowledged writes lost without consent).
        counted = len(set(linked) | (consented & set(view.nodes)))  # each once
        if clients is None or clients <= counted:
            return []
        return [
            Unanswered(
                UNNAMED,
                "",
                f"{dead} had {clients} semi-sync replica(s) connected at its last good probe, "
                f"more than the {counted} known replicas that answer and were linked to it "
                "then: one the controller cannot name (not in its settings, or never read) may "
                "hold a write it alone acknowledged",
            )
        ]
    pending = lacking(primary, view.nodes[best])
    return [judge_one(view, dead, best, name, len(linked), pending, settings) for name in gone]


def judge_one(
    view: ClusterView,
    dead: str,
    best: str,
    name: str,
    linked: int,
    pending: str | None,
    settings: Settings,
) -> Unanswered:
    primary, node = view.nodes[dead], view.nodes[name]
    assert primary.status is not None
    clients = primary.status.semi_sync.source_clients
    why = gone_before(node, primary, settings)
    doubt = None
    if why is None:
        doubt = (
            f"it may still have been replicating at {dead}'s last good probe (its own "
            f"last answer {age(node, primary)}): it may have acknowledged writes since"
        )
    elif clients is None or clients > linked:
        doubt = (
            f"{dead} had {'unknown' if clients is None else clients} semi-sync replica(s) "
            f"connected at its last good probe, more than the {linked} that answer and were "
            "linked to it then: it may still have been one"
        )
    elif pending is not None:
        doubt = f"{best} lacks {pending} of what {dead} had written at its last good probe"
    if doubt is None:
        why = (
            f"{why}; {dead} then had {clients} semi-sync replica(s) connected, no more than "
            f"the {linked} that answer and were linked to it then, and {best} holds all "
            f"{dead} had written: it acknowledged nothing {best} lacks"
        )
    return Unanswered(name, why or "", doubt)


def linked_at(node: NodeView, at: float | None, settings: Settings) -> bool:
    """Could this answering replica have been one of the primary's semi-sync clients at
    ``at``: connected as a semi-sync client (``Rpl_semi_sync_slave_status`` ON: the
    variable alone takes effect only at the IO thread's next connect), its IO thread not
    stopped, and its received GTID or heartbeats moving around then
    (``view.link_alive``'s measure; without heartbeats, the IO thread alone). One that was not
    cannot stand for a client the primary counted: the gone replica may have been that one."""
    channel = node.channel
    if at is None or channel is None or channel.io_state is IoState.STOPPED:
        return False
    if node.status is None or not node.status.semi_sync.replica_client:
        return False  # an asynchronous replica is no semi-sync client
    if channel.heartbeat_period is None or channel.heartbeats_received is None:
        return True
    stall = max(settings.failover.io_stall, 2.5 * channel.heartbeat_period)
    return node.io_progress_at is not None and node.io_progress_at >= at - stall


def gone_before(node: NodeView, primary: NodeView, settings: Settings) -> str | None:
    """Why ``node`` was already gone at the primary's last good probe, or None if it may not
    have been: its next probe was due within one interval of its last good one, and failed
    within the probe timeout."""
    if primary.last_ok_at is None:
        return None
    if node.last_ok_at is None:
        return "it has not answered since the controller started"
    bound = node.last_ok_at + settings.probes.interval + settings.probes.timeout
    if bound > primary.last_ok_at:
        return None
    last = age(node, primary)
    return f"it stopped answering before the primary's last good probe (its last answer {last})"


def age(node: NodeView, primary: NodeView) -> str:
    if node.last_ok_at is None or primary.last_ok_at is None:
        return "never"
    delta = primary.last_ok_at - node.last_ok_at
    return f"{abs(delta):.1f} s {'before' if delta >= 0 else 'after'} that probe"


def lacking(primary: NodeView, best: NodeView) -> str | None:
    """What the primary had written at its last good probe that ``best`` does not hold ("?"
    when either cannot be read), or None when ``best`` holds all of it."""
    theirs, mine = executed(primary.status), holdings(best)
    if theirs is None or mine is None or theirs.flavor != mine.flavor:
        return "? (GTID sets unreadable)"
    try:
        extra = theirs - mine
    except ValueError:
        return "? (GTID sets diverge)"
    return str(extra) if extra else None
