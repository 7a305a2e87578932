"""GTID positions of nodes, the ranking of promotion candidates, and the texts alerts carry.

Pure: what a node executed and received comes from its last probe; the best candidate is the
one holding most (executed plus received), never ``Seconds_Behind_Master`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from hacontrol import gtid
from hacontrol.flavors.base import NodeStatus
from hacontrol.flavors.mariadb import binlog_state_of
from hacontrol.plan import Hook
from hacontrol.settings import Settings
from hacontrol.view import ClusterView, NodeView, hidden_nodes


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


def errant_against(
    node: NodeView, others: list[gtid.GtidSet], known: gtid.BinlogState | None = None
) -> gtid.GtidSet | gtid.BinlogState | None:
    """Transactions ``node`` executed that no other node has (errant), or None if unknown.

    With ``known`` (what the cluster holds, as a binlog state) and the node's own binlog state,
    per (domain, server id) pair, which sees a divergence below the last GTID; else positions.
    """
    if known is not None and node.status is not None:
        try:
            mine_state = binlog_state_of(node.status)
        except ValueError:
            return None
        if mine_state is not None:
            return gtid.errant_by_state(mine_state, known)
    mine = executed(node.status)
    if mine is None:
        return None
    rest = mine
    for other in others:
        if other.flavor == mine.flavor:
            rest = rest - other
    return rest


def known_state(
    reference: NodeStatus | None, received_positions: list[str]
) -> gtid.BinlogState | None:
    """The reference's binlog state merged with positions received from it (relay logs), or
    None when its state was never read or does not parse (positions are compared then)."""
    try:
        state = binlog_state_of(reference) if reference is not None else None
        if state is None:
            return None
        return gtid.server_state(str(state), *(p for p in received_positions if p))
    except ValueError:
        return None


@dataclass(frozen=True)
class Errant:
    """What a node holds that a reference lacks: ``gtids`` ("" none), or ``unknown`` with the
    reason it cannot be told (then the node is treated as errant: never rejoined)."""

    gtids: str = ""
    unknown: str | None = None
    by_state: bool = False

    def __bool__(self) -> bool:
        return bool(self.gtids) or self.unknown is not None

    def describe(self) -> str:
        return self.gtids if self.unknown is None else f"unknown ({self.unknown})"


def errant_between(node: NodeStatus, reference: NodeStatus) -> Errant:
    """The errant GTIDs of ``node`` against ``reference`` (the primary): per (domain, server id)
    from both binlog states when both were read (a divergence below the last GTID included,
    ``gtid.errant_by_state``); else from positions (MySQL, a state not read). Text that does
    not parse makes it unknown, never clean."""
    try:
        mine, theirs = binlog_state_of(node), binlog_state_of(reference)
    except ValueError as exc:
        return Errant(unknown=f"binlog state unreadable: {exc}")
    if mine is not None and theirs is not None:
        return Errant(str(gtid.errant_by_state(mine, theirs)), by_state=True)
    try:
        flavor = node.flavor.value
        diff = gtid.parse(node.gtid_executed, flavor) - gtid.parse(reference.gtid_executed, flavor)
    except ValueError as exc:
        return Errant(unknown=f"GTID positions unreadable: {exc}")
    return Errant(str(diff) if diff else "")


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


def semi_sync_promised(view: ClusterView, dead: str) -> bool:
    """The dead primary's semi-sync never falls back: it acknowledged nothing no replica
    received, so a replica that cannot be read (its last probe failed) is judged, never
    promoted, stopped or compared on a stale answer (``rules/doubt.py``). Otherwise nothing is
    promised, and such a replica is treated as before (by its last answer)."""
    node = view.nodes[dead]
    return node.status is not None and node.status.semi_sync.never_falls_back


def candidates(view: ClusterView, settings: Settings, dead: str) -> list[Candidate]:
    """Every replica of ``dead``, ranked: eligible first, then the one holding most (executed
    plus received: what is in its relay log counts, never Seconds_Behind_Master alone), then
    priority, then lowest lag. Each with the reason it is eligible or rejected."""
    hidden = hidden_nodes(view)
    dead_status = view.nodes[dead].status
    strict = semi_sync_promised(view, dead)
    # What the cluster is known to have from the primary: its last executed set and every
    # replica's relay log (a node's own relay log included: received is not errant).
    known = [s for s in (executed(dead_status),) if s is not None]
    for name, node in view.nodes.items():
        if name != dead and (got := received(node)) is not None:
            known.append(got)
    relayed = [n.channel.received_gtid for k, n in view.nodes.items() if k != dead and n.channel]
    state = known_state(dead_status, relayed)
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
        errant = errant_against(node, known, state)
        reason = rejection(node, name in hidden, conf.no_promote, got, errant)
        if reason is None and strict and node.failures > 0:
            reason = f"its last probe failed ({node.last_error}): what it holds now is unknown"
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


def rejection(
    node: NodeView,
    hidden: bool,
    no_promote: bool,
    got: gtid.GtidSet | None,
    errant: gtid.GtidSet | gtid.BinlogState | None,
) -> str | None:
    """Why a replica of the dead primary cannot be promoted, or None when it can."""
    channel = node.channel
    if not node.reachable:
        return f"not reachable ({node.reason})"
    if hidden:
        return "hidden by an operator (maintenance)"
    if no_promote:
        return "no_promote is set"
    if channel is None or not channel.sql_running:
        return "SQL thread not running" + (
            f" (error {channel.last_sql_errno}: {channel.last_sql_error})"
            if channel and channel.last_sql_errno
            else ""
        )
    if got is None:
        return "received GTID position unknown"
    if errant is None:
        return "executed GTID set unreadable"
    if errant:
        return f"errant transactions {errant}"
    return None


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
    detached = orphans(view, dead)
    for name in (*view.replicas_of(dead), *detached):
        node = view.nodes[name]
        if name == best or not node.reachable:
            continue
        theirs = holdings(node)
        if theirs is None:
            gaps.append(f"{name}: unreadable")
            continue
        if theirs.flavor != mine.flavor:
            continue
        # A detached node's relay log is gone (a promotion cut after its reset): all it holds
        # counts, not only what the replicas still show of the primary.
        ours = theirs if name in detached else (theirs & from_primary if from_primary else None)
        if ours is not None and (extra := ours - mine):
            gaps.append(
                f"{name} {'(replicating from nobody) ' if name in detached else ''}has {extra}"
            )
    return "; ".join(gaps) or None


def orphans(view: ClusterView, dead: str) -> tuple[str, ...]:
    """Reachable read-only nodes that replicate from nobody: a promotion cut halfway (its
    replication reset, still read-only) or a node an operator detached. What they hold
    counts too: promoting a replica that lacks it would lose it."""
    return tuple(
        name
        for name, node in view.nodes.items()
        if name != dead
        and node.reachable
        and node.status is not None
        and node.status.read_only
        and not node.status.replication
    )


def hooks(
    settings: Settings, phase: str, context: tuple[tuple[str, str], ...], *, required: bool = False
) -> tuple[Hook, ...]:
    """A Hook action when the operator configured a command for ``phase``; else nothing."""
    if not getattr(settings.hooks, phase):
        return ()
    return (Hook(phase, (("phase", phase), *context), required),)


def candidate_table(rows: list[Candidate]) -> str:
    return "\n".join(c.row() for c in rows) or "(no replica of the dead primary)"


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
