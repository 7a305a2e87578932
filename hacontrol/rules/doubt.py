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

An operator may accept losing what a replica in doubt alone holds: ``hacontrol maintenance
NODE on`` while the failover waits for NODE (accepted also when NODE is already hidden) records
a ``Consent`` for this incident: the dead primary and what it had executed at its last good
probe. Journaled with the state, so a restart keeps it; it applies only while the dead primary
is the same at the same position (a new incident asks again), and is dropped once the failover
it allowed is planned, or by ``maintenance NODE off``. Never inferred: hiding a node by any
other means (the router, before the incident) is no consent.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hacontrol.flavors.base import IoState
from hacontrol.model import AlertKey, Condition, Consent, ControllerState
from hacontrol.rules.candidates import executed, holdings
from hacontrol.settings import Settings
from hacontrol.view import ClusterView, Code, NodeView


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
    if primary.status is None:
        return unread_primary(view, dead, consented)
    semi = primary.status.semi_sync
    if not semi.never_falls_back:
        return []
    silent, linked = silent_and_linked(view, dead, settings)
    gone = tuple(n for n in silent if n not in consented)
    clients = semi.source_clients
    if not gone:
        # A node the operator chose to go on without may have been one of the clients: with
        # no named node left in doubt, it fills a client's slot, once, if it may have been
        # one (never read, or linked then by its last answer). Never when judging a
        # named node (below), and never one that was no client: either would free a slot for
        # one that was (a named node's, or an unnamed client's, writes lost without consent).
        given = consented & set(silent)
        filled = {n for n in given if may_have_been_client(view, n, primary, settings)}
        counted = len(set(linked) | filled)
        if clients is None or clients <= counted:
            return []
        return [
            Unanswered(
                UNNAMED,
                "",
                f"{dead} had {clients} semi-sync replica(s) connected at its last good probe, "
                f"more than the {counted} known replicas that answer and were linked to it "
                "then, or that an operator went on without and may have been one: one the "
                "controller cannot name (not in its settings, or never read) may hold a write "
                "it alone acknowledged",
            )
        ]
    pending = lacking(primary, view.nodes[best])
    return [judge_one(view, dead, best, name, len(linked), pending, settings) for name in gone]


def silent_and_linked(
    view: ClusterView, dead: str, settings: Settings
) -> tuple[tuple[str, ...], list[str]]:
    """The nodes that may be replicas of ``dead`` and cannot be read now (consented or not),
    and the replicas that answer and were linked to it at its last good probe (a consented
    node that answers again is a replica like the others)."""
    silent = unanswered(view, dead)
    at = view.nodes[dead].last_ok_at
    answering = [r for r in view.replicas_of(dead) if r not in silent]
    return silent, [r for r in answering if linked_at(view.nodes[r], at, settings)]


def may_have_been_client(
    view: ClusterView, name: str, primary: NodeView, settings: Settings
) -> bool:
    """Could ``name``, which cannot be read now, have been one of the primary's semi-sync
    clients at its last good probe: never read (nothing says it was not), or linked then by
    its last answer (``linked_at``). A node cut off from the controller alone may still have
    been one though its answers stopped before: the count cannot tell it from a client
    outside the settings (``unnamed_share`` says so to the operator)."""
    node = view.nodes.get(name)
    if node is None:
        return False  # not in the settings: no slot of its own to fill
    return node.status is None or linked_at(node, primary.last_ok_at, settings)


def unnamed_share(view: ClusterView, settings: Settings, dead: str, nodes: list[str]) -> str:
    """What a consent to go on without ``nodes`` gives up beyond them, said to the operator:
    when the primary counted more semi-sync clients than the replicas that answer and were
    linked, a consented node that may have been a client fills one of those slots; if it was
    not one, a client the controller cannot name (outside the settings) was. "" when no slot
    is open or no node fills one (the unnamed client then stays in doubt)."""
    primary = view.nodes.get(dead)
    if primary is None or primary.status is None:
        return ""
    clients = primary.status.semi_sync.source_clients
    _, linked = silent_and_linked(view, dead, settings)
    fill = [
        n for n in nodes if n in view.nodes and may_have_been_client(view, n, primary, settings)
    ]
    if clients is None or clients <= len(linked) or not fill:
        return ""
    they = "it was" if len(fill) == 1 else "they were"
    return (
        f" {dead} counted {clients} semi-sync client(s) at its last good probe, "
        f"{len(linked)} of them among the replicas that answer: {', '.join(fill)} may fill "
        f"the other slot(s); if {they} not among them, a semi-sync client the controller "
        "cannot name (outside its settings) was, and what it alone may hold is given up too."
    )


def unread_primary(view: ClusterView, dead: str, consented: frozenset[str]) -> list[Unanswered]:
    """``dead`` was not read since the controller started (a restart while it was down): what
    its semi-sync promised is unknown. When a replica of it that answers is a semi-sync
    replica (by its variable: its link is down now), or the node that cannot be read may be
    one (never read, or one by its last answer), nothing can clear it (no last good probe of
    ``dead`` to compare with): it is in doubt."""
    silent = unanswered(view, dead)
    semi = [
        r for r in view.replicas_of(dead) if r not in silent and semi_sync_replica(view.nodes[r])
    ]
    out = []
    for name in (n for n in silent if n not in consented):
        why = semi_sync_evidence(semi, name, view.nodes[name])
        if why is not None:
            doubt = (
                f"{dead} was not read since the controller started: whether its semi-sync "
                f"promised anything is unknown ({why}), and {name} may hold a write it alone "
                "acknowledged"
            )
            out.append(Unanswered(name, "", doubt))
    return out


def semi_sync_evidence(semi: list[str], name: str, node: NodeView) -> str | None:
    """Why the unread primary may have waited for ``name``'s acknowledgement, or None."""
    if semi:
        return f"its replicas {', '.join(semi)} are semi-sync replicas"
    if node.status is None:
        return f"{name} was never read: it may be its one semi-sync replica"
    if node.status.semi_sync.replica_enabled:
        return f"{name} was a semi-sync replica at its last answer"
    return None


def semi_sync_replica(node: NodeView) -> bool:
    return node.status is not None and node.status.semi_sync.replica_enabled


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


def doubted(dead: str, node: str) -> AlertKey:
    """When the failover away from ``dead`` first waited for ``node`` (``first_seen``; kept
    while the primary is dead)."""
    return AlertKey(Condition.NO_CANDIDATE, f"{dead} doubted {node}")


def position(view: ClusterView, dead: str) -> str | None:
    """What ``dead`` had executed at its last good probe (None: not read since the
    controller started)."""
    node = view.nodes.get(dead)
    done = executed(node.status) if node is not None else None
    return None if done is None else str(done)


def held(view: ClusterView, dead: str) -> str | None:
    """What the replicas of ``dead`` that answer hold (executed and received), together: with
    ``dead`` gone it does not change, unless ``dead`` came back and wrote to them (None: one
    of them cannot be read as a GTID set)."""
    together = None
    for name in view.replicas_of(dead):
        node = view.nodes[name]
        if not node.reachable or node.failures > 0:
            continue
        mine = holdings(node)
        if mine is None:
            return None
        try:
            together = mine if together is None else together | mine
        except ValueError:
            return None
    return None if together is None else str(together)


def same_incident(view: ClusterView, consent: Consent, dead: str) -> bool:
    """Is this loss of ``dead`` the one the consent was given for? Read since the controller
    started: at the same position (a primary that answered again and died again is read at
    another one, or was not read when the consent was given). Not read (a restart): its
    replicas hold exactly what they held then (nothing came from it since)."""
    if consent.dead != dead or not consent_lasts(view, consent):
        return False
    now = position(view, dead)
    if now is not None:
        return consent.position == now
    return consent.held is not None and consent.held == held(view, dead)


def consent_lasts(view: ClusterView, consent: Consent) -> bool:
    """A consent ends with its incident: once its dead primary answered after it was given
    (back, even at the same position: what it wrote after that answer is another incident's),
    it is dropped (``rules.alerts.prune``), journaled away with the state. So is one that
    names a node no longer in the settings."""
    node = view.nodes.get(consent.dead)
    if node is None or consent.node not in view.nodes:
        return False  # a node no longer in the settings (a restart with new settings)
    return node.last_ok_at is None or node.last_ok_at <= consent.at


def consented(view: ClusterView, consents: tuple[Consent, ...], dead: str) -> frozenset[str]:
    """The nodes an operator consented to fail over without, for this loss of ``dead``."""
    if not consents:
        return frozenset()  # the common case: nothing to parse
    return frozenset(c.node for c in consents if same_incident(view, c, dead))


def give_consent(
    view: ClusterView, state: ControllerState, settings: Settings, node: str | None, now: float
) -> tuple[ControllerState, str] | str | None:
    """``maintenance NODE on`` for a node the failover away from the dead primary waits for
    (or halted on): the state with the consent recorded, and what it means; why it cannot be
    recorded (this incident cannot be told from the next); None when NODE is not in doubt
    now (the command is then a plain maintenance)."""
    dead = next((p.node for p in view.problems if p.code is Code.DEAD_PRIMARY), None)
    if dead is None or node is None or doubted(dead, node) not in state.first_seen:
        return None
    consent = Consent(node, dead, position(view, dead), held(view, dead), now)
    if consent.position is None and consent.held is None:  # never given blindly
        return (
            f"consent NOT recorded: this loss of {dead} cannot be told from the next ({dead} "
            f"not read since the controller started, and no replica of it answers with a "
            "readable GTID set); retry when one does, or promote by hand"
        )
    kept = tuple(c for c in state.consents if (c.node, c.dead) != (node, dead))
    at = f"dead at {consent.position}" if consent.position else f"its replicas at {consent.held}"
    text = (
        f"consent recorded: the failover away from {dead} ({at}) may go on without {node}; "
        f"what {node} alone may hold (writes {dead} acknowledged) is given up."
        + unnamed_share(view, settings, dead, [node])
    )
    return replace(state, consents=(*kept, consent)), text


def withdraw_consent(state: ControllerState, node: str | None) -> ControllerState:
    """``maintenance NODE off``: NODE's consents are withdrawn (it is waited for again)."""
    return replace(state, consents=tuple(c for c in state.consents if c.node != node))
