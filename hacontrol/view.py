"""ClusterView: the controller's current picture of the cluster, folded from events.

``fold(view, event, settings) -> view`` is pure: no I/O, no clock (time comes from the events).
Everything cluster-wide (topology, primary, quorum, problems) is derived from the per-node
facts by ``derive`` so that it can never disagree with them. ``changes(old, new)`` lists the
state changes worth a log line.

A probe that changes no fact ``derive`` reads (``facts``: health, reason, roles, the replication
channel's state, whether its link is alive; not the GTID positions, heartbeat counters and
round-trip times that move on every probe), and any event that touches no node, leaves every
derived field as it was: ``fold`` then skips ``derive`` (most events, at rest).

Problems are named and come from one prioritized rule table (``RULES``); each carries a one-line
reason. Detection is holistic: a primary the controller cannot reach is ``DeadPrimary`` only
when no reachable replica still has a working link to it; otherwise it is
``UnreachablePrimary`` (the controller is the one cut off).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from hacontrol.addresses import host_key as _host_key
from hacontrol.events import (
    CallerGone,
    ConnectionLost,
    Event,
    LeaseObserved,
    OperatorCommand,
    PlanFinished,
    ProbeResult,
    RouterProbeResult,
    Stop,
    Tick,
)
from hacontrol.flavors.base import IoState, NodeStatus, ReplicationStatus
from hacontrol.frozen import evolve
from hacontrol.routing import Membership
from hacontrol.settings import Settings


class Health(StrEnum):
    UNKNOWN = "unknown"  # not probed successfully yet
    HEALTHY = "healthy"
    LAGGING = "lagging"
    REPLICATION_BROKEN = "replication_broken"
    UNREACHABLE = "unreachable"  # failure_threshold consecutive failed probes


IoMarker = tuple[str, int | None, tuple[str, int] | None]


@dataclass(frozen=True)
class NodeView:
    name: str
    probes: int = 0
    """Probes received, failed or not."""
    failures: int = 0
    """Consecutive failed probes."""
    status: NodeStatus | None = None
    """Last successful answer; kept while the node fails, so its last position is known."""
    last_ok_at: float | None = None
    last_error: str | None = None
    rtt: float | None = None
    io_marker: IoMarker | None = None
    """(received GTID, heartbeats received, read position) of the replica's channel at the
    last change."""
    io_progress_at: float | None = None
    """When ``io_marker`` last changed: the replica's link to its source was alive then (the
    time the answer that showed the change was read: ``_io_progress``)."""
    io_stopped_at: float | None = None
    """When this instance first read the replica's IO thread stopped (the answer's read time)
    since it last read it running; None while it runs, or never read."""
    health: Health = Health.UNKNOWN
    reason: str = "not probed yet"
    facts: tuple[object, ...] | None = field(default=None, init=False, compare=False, repr=False)
    """``node_facts(self)`` as computed when ``fold`` made this value (a cache; None: not
    computed; ``replace`` resets it)."""

    @property
    def reachable(self) -> bool:
        return self.health not in (Health.UNKNOWN, Health.UNREACHABLE)

    @property
    def channel(self) -> ReplicationStatus | None:
        """The default replication channel (MariaDB '' connection, MySQL '' channel)."""
        if self.status is None or not self.status.replication:
            return None
        for channel in self.status.replication:
            if channel.connection_name == "":
                return channel
        return self.status.replication[0]


@dataclass(frozen=True)
class LockView:
    """The fleet's two locks on one node, as this instance's lease session last saw them.

    ``session``: this instance's lease session (connection id) on the node; ``leader`` and
    ``primary``: who holds each lock (connection ids; None: free or unknown). ``sent``: when the
    round trip that read this was sent. After a failed round trip everything is unknown: the
    session and its locks are gone, and nothing can be read from the node."""

    session: int | None = None
    leader: int | None = None
    primary: int | None = None
    sent: float | None = None
    error: str | None = "not read yet"
    holder: str | None = None

    @property
    def known(self) -> bool:
        return self.error is None and self.session is not None

    @property
    def held(self) -> bool:
        """This instance holds the leader lock on the node."""
        return self.known and self.leader == self.session

    @property
    def publishes(self) -> bool:
        """Someone holds the primary lock on the session that holds the leader lock here: the
        leader's choice of primary, published."""
        return self.known and self.leader is not None and self.primary == self.leader


@dataclass(frozen=True)
class RouterView:
    kind: str = "none"
    membership: Membership | None = None
    error: str | None = None
    at: float | None = None
    warnings: tuple[str, ...] = ()


class Code(StrEnum):
    NO_QUORUM = "NoQuorum"
    ROUTER_HAS_TWO_WRITERS = "RouterHasTwoWriters"
    TWO_WRITABLE_NODES = "TwoWritableNodes"
    DEAD_PRIMARY = "DeadPrimary"
    UNREACHABLE_PRIMARY = "UnreachablePrimary"
    NO_PRIMARY = "NoPrimary"
    ROUTER_UNREACHABLE = "RouterUnreachable"
    ROUTER_CONFLICT = "RouterConflict"
    ROUTER_WRITER_IS_NOT_PRIMARY = "RouterWriterIsNotPrimary"
    ROUTER_READER_UNHEALTHY = "RouterReaderUnhealthy"
    REPLICA_NOT_REPLICATING_FROM_PRIMARY = "ReplicaNotReplicatingFromPrimary"
    REPLICATION_BROKEN = "ReplicationBroken"
    REPLICA_LAGGING = "ReplicaLagging"
    NODE_UNREACHABLE = "NodeUnreachable"


@dataclass(frozen=True)
class Problem:
    code: Code
    node: str | None
    reason: str

    def to_json(self) -> dict[str, str | None]:
        return {"code": self.code.value, "node": self.node, "reason": self.reason}


@dataclass(frozen=True)
class Quorum:
    """A strict majority of every configured node, hidden ones included (``_quorum``)."""

    reachable: tuple[str, ...]
    recognized: tuple[str, ...]
    hidden_unreachable: tuple[str, ...] = ()
    """Hidden nodes that do not answer: counted all the same (the no-quorum advice names them)."""

    @property
    def ok(self) -> bool:
        return 2 * len(self.reachable) > len(self.recognized)

    @property
    def tied(self) -> bool:
        """Exactly half reachable: no strict majority here, and none possible on another side
        either (a fleet's lease needs one too): nothing may change, but what routes may stay."""
        return 2 * len(self.reachable) == len(self.recognized)

    def describe(self) -> str:
        return f"{len(self.reachable)} of {len(self.recognized)} recognized nodes reachable"


@dataclass(frozen=True)
class ClusterView:
    cluster: str
    nodes: Mapping[str, NodeView]
    router: RouterView = RouterView()
    at: float = 0.0
    """Time of the last event folded in."""
    maintenance: frozenset[str] = frozenset()
    """Nodes an operator hid through hacontrol (HAProxy has no hidden group of its own): hidden,
    never promoted; still counted for the quorum (``_quorum``). Kept here only (and in the
    journal)."""
    locks: Mapping[str, LockView] = field(default_factory=dict)
    """The fleet's locks per node (``controller.fleet``); empty for a single instance."""
    # Derived by ``derive``; never set by hand.
    sources: Mapping[str, str | None] = field(default_factory=dict)
    """Replica -> the node (name, or 'host:port' when not managed) it replicates from."""
    writable: tuple[str, ...] = ()
    primary: str | None = None
    primary_reason: str = "not known yet"
    quorum: Quorum = Quorum((), ())
    problems: tuple[Problem, ...] = ()
    published: str | None = None
    """The node the fleet's leader publishes as the primary, or None (nobody, or ambiguous)."""
    lag_unknown: tuple[str, ...] = ()
    """Reachable replicas whose lag is NULL: whether they may serve reads depends on their
    GTID positions against the primary's, which move on every probe."""
    generation: int = field(default=0, compare=False)
    """How many times ``derive`` ran: unchanged, every derived field is the very same."""

    def has(self, code: Code) -> bool:
        return any(p.code is code for p in self.problems)

    def replicas_of(self, source: str) -> tuple[str, ...]:
        return tuple(n for n, s in self.sources.items() if s == source)


def initial(settings: Settings) -> ClusterView:
    nodes = {n.name: NodeView(name=n.name) for n in settings.nodes}
    view = ClusterView(
        cluster=settings.cluster.name, nodes=nodes, router=RouterView(kind=settings.router.kind)
    )
    return derive(view, settings)


def fold(view: ClusterView, event: Event, settings: Settings) -> ClusterView:
    """The view after ``event``. Pure."""
    at = max(view.at, event.at)
    match event:
        case ProbeResult(node=name) if name in view.nodes:
            before = view.nodes[name]
            node = _fold_probe(before, event, settings)
            nodes = {**view.nodes, name: node}
            if node.facts == node_facts(before, settings) and not primary_in_doubt(view):
                return evolve(view, nodes=nodes, at=at)  # nothing ``derive`` reads changed
            view = replace(view, nodes=nodes)
        case LeaseObserved(node=name) if name in view.nodes:
            lock = _fold_lock(event)
            locks = {**view.locks, name: lock}
            if same_lock(view.locks.get(name), lock):
                return evolve(view, locks=locks, at=at)  # a keepalive: only its time moved
            view = replace(view, locks=locks)
        case RouterProbeResult():
            router = RouterView(
                kind=event.kind,
                membership=event.membership if event.ok else (view.router.membership),
                error=event.error,
                at=event.at,
                warnings=event.warnings,
            )
            if same_router(view.router, router):
                return evolve(view, router=router, at=at)  # only its time moved
            view = replace(view, router=router)
        case (
            ConnectionLost()
            | Tick()
            | Stop()
            | PlanFinished()
            | OperatorCommand()
            | CallerGone()
            | ProbeResult()
            | LeaseObserved()
        ):
            # A lost connection only triggers a re-probe; the probe's result tells. Derived
            # facts do not depend on the view's time (see ``link_alive``).
            return evolve(view, at=at)
    return derive(replace(view, at=at), settings)


def primary_in_doubt(view: ClusterView) -> bool:
    """The primary's last probe failed: ``primary_lost_early`` then reads what every probe
    moves (the replicas' last good probe against the primary's, the time of their link's last
    progress), so every probe is derived until the primary answers again or is unreachable."""
    primary = view.nodes.get(view.primary) if view.primary is not None else None
    return primary is not None and primary.failures > 0


def same_router(old: RouterView, new: RouterView) -> bool:
    """Whether ``new`` says what ``old`` said: only the time of the probe moved (``derive``
    reads whether the router was probed at all, never when)."""
    return old.at is not None and (old.kind, old.membership, old.error, old.warnings) == (
        new.kind,
        new.membership,
        new.error,
        new.warnings,
    )


def same_lock(old: LockView | None, new: LockView) -> bool:
    """Whether ``new`` says who holds what as ``old`` did: only the time of the round trip
    (and an error's wording) moved. ``derive`` reads whether a node carries the publication,
    the view's changes who holds what; neither reads when, nor the holder's address."""
    return old is not None and (old.known, old.session, old.leader, old.primary) == (
        new.known,
        new.session,
        new.leader,
        new.primary,
    )


def with_maintenance(view: ClusterView, nodes: frozenset[str], settings: Settings) -> ClusterView:
    """The view with ``nodes`` in maintenance (an operator's command, or the journal's)."""
    return derive(replace(view, maintenance=frozenset(nodes)), settings)


def _fold_lock(event: LeaseObserved) -> LockView:
    if not event.ok:
        return LockView(sent=event.at, error=event.error or "no lease session")
    return LockView(event.session, event.leader, event.primary, event.at, None, event.holder)


def _fold_probe(node: NodeView, result: ProbeResult, settings: Settings) -> NodeView:
    threshold = settings.probes.failure_threshold
    if not result.ok:
        failures = node.failures + 1
        error = result.error or "no answer"
        if failures >= threshold:
            health, reason = Health.UNREACHABLE, f"{failures} consecutive failed probes: {error}"
        else:
            health = node.health
            reason = f"{node.reason} (probe failed {failures}/{threshold}: {error})"
        node = evolve(
            node,
            probes=node.probes + 1,
            failures=failures,
            last_error=error,
            health=health,
            reason=reason,
        )
    else:
        assert result.status is not None
        node = evolve(
            node,
            probes=node.probes + 1,
            failures=0,
            status=result.status,
            last_ok_at=result.at,
            last_error=None,
            rtt=result.rtt,
        )
        read = result.at + (result.rtt or 0.0)
        io_marker, io_progress_at = _io_progress(node, read)
        health, reason = node_health(node, settings.failover.max_lag)
        node = evolve(
            node,
            io_marker=io_marker,
            io_progress_at=io_progress_at,
            io_stopped_at=_io_stopped_at(node, read),
            health=health,
            reason=reason,
        )
    node = evolve(node, facts=None)
    return evolve(node, facts=node_facts(node, settings))


VOLATILE_NODE = frozenset(
    {
        "name",
        "probes",
        "status",
        "last_ok_at",
        "rtt",
        "io_marker",
        "io_progress_at",
        "io_stopped_at",
        "facts",
    }
)
VOLATILE_STATUS = frozenset(
    {"gtid_executed", "gtid_binlog_pos", "gtid_slave_pos", "gtid_binlog_state", "replication"}
)
VOLATILE_CHANNEL = frozenset({"received_gtid", "heartbeats_received", "received_pos"})


def node_facts(node: NodeView, settings: Settings) -> tuple[object, ...]:
    """Everything ``derive`` (and a decision in a cluster as desired) reads of a node: every
    field but the GTID positions, heartbeat counters, round-trip time and the times of the
    last probe and of the link's last progress, which move on every probe; what they tell
    instead: the probes counted up to the failure threshold (the start-up grace) and whether
    the replica's link is alive. Kept on the node by ``fold`` (``NodeView.facts``).

    Fields added to these records later count as facts until listed as volatile here: the
    shortcut can only be taken less often, never wrongly."""
    if node.facts is not None:
        return node.facts
    own = tuple(v for k, v in node.__dict__.items() if k not in VOLATILE_NODE)
    grace = min(node.probes, settings.probes.failure_threshold)
    status = node.status
    if status is None:
        return (own, grace)
    server = tuple(v for k, v in status.__dict__.items() if k not in VOLATILE_STATUS)
    channels = tuple(
        (
            tuple(v for k, v in channel.__dict__.items() if k not in VOLATILE_CHANNEL),
            channel.heartbeats_received is None,
        )
        for channel in status.replication
    )
    alive = link_alive(node, float("inf"), settings.failover.io_stall)
    return (own, grace, server, channels, alive)


def _io_progress(node: NodeView, read: float) -> tuple[IoMarker | None, float | None]:
    """(io_marker, io_progress_at) after a good probe whose answer was read at ``read``.

    A changed marker is stamped with the time its answer was read, not the time the question
    was sent (``last_ok_at``): the replica may have counted that heartbeat at any moment in
    between, and a round trip the controller's own stall stretched (its loop starved: CPU,
    garbage collection) must not back-date the progress. Otherwise the next probe, a moment
    later and as it should with the same counter (one heartbeat per period), would measure
    the whole stall as the link's silence: a false ``DeadPrimary``. ``link_alive`` thus
    measures the silence from the newest possible progress to the oldest possible reading:
    never longer than it really was."""
    channel = node.channel
    if channel is None:
        return None, None
    marker = (channel.received_gtid, channel.heartbeats_received, channel.received_pos)
    if marker != node.io_marker or node.io_progress_at is None:
        return marker, read
    return node.io_marker, node.io_progress_at


def _io_stopped_at(node: NodeView, read: float) -> float | None:
    """``io_stopped_at`` after a good probe read at ``read`` (its status already folded)."""
    channel = node.channel
    if channel is None or channel.io_state is not IoState.STOPPED:
        return None
    return read if node.io_stopped_at is None else node.io_stopped_at


def node_health(node: NodeView, max_lag: float) -> tuple[Health, str]:
    """Health of a node that answered its last probe. Pure."""
    status = node.status
    assert status is not None
    channel = node.channel
    if channel is None:
        mode = "read_only" if status.read_only else "writable"
        return Health.HEALTHY, f"not a replica, {mode}"
    broken = replication_problem(channel)
    if broken:
        return Health.REPLICATION_BROKEN, broken
    if channel.seconds_behind is not None and channel.seconds_behind > max_lag:
        return (
            Health.LAGGING,
            f"{channel.seconds_behind} s behind its source (max_lag {max_lag:g} s)",
        )
    lag = "unknown lag" if channel.seconds_behind is None else f"{channel.seconds_behind} s behind"
    return Health.HEALTHY, f"replicating from {channel.source_host}:{channel.source_port}, {lag}"


def replication_problem(channel: ReplicationStatus) -> str | None:
    """Why this channel does not replicate, or None when both threads run without error."""
    parts = []
    if channel.io_state is not IoState.RUNNING:
        text = f"IO thread {channel.io_state.value}"
        if channel.last_io_errno:
            text += f" (error {channel.last_io_errno}: {channel.last_io_error})"
        parts.append(text)
    if not channel.sql_running:
        text = "SQL thread stopped"
        if channel.last_sql_errno:
            text += f" (error {channel.last_sql_errno}: {channel.last_sql_error})"
        parts.append(text)
    elif channel.last_sql_errno:
        parts.append(f"SQL error {channel.last_sql_errno}: {channel.last_sql_error}")
    return "; ".join(parts) or None


def link_alive(node: NodeView, now: float, stall: float) -> bool:
    """Does this reachable replica still have a working link to its source?

    The IO thread must run, and its received GTID or heartbeat counter must have advanced
    within ``stall`` seconds: a frozen or partitioned source closes no connection, so a
    running IO thread alone proves nothing. The silence runs from when the answer that showed
    the advance was read (``io_progress_at``) to when the newest query was sent
    (``last_ok_at``): a stall of the controller's own is never counted as the link's.
    """
    channel = node.channel
    if channel is None or channel.io_state is not IoState.RUNNING:
        return False
    if channel.heartbeat_period is None or channel.heartbeats_received is None:
        # Without frequent heartbeats an idle source sends nothing for long stretches: "no
        # progress" proves nothing, only the IO thread's own state counts.
        return True
    if node.io_progress_at is None or node.last_ok_at is None:
        return False
    # Measured on the replica's own last good probe, never on the view's clock: a replica
    # the controller has just lost (a probe or two failed) must not look like one whose link
    # to its source stopped. (``fold`` keeps the view's time at or after every node's last
    # good probe, so with the view's time this never depends on it: ``node_facts``.)
    seen = min(now, node.last_ok_at)
    return seen - node.io_progress_at <= max(stall, 2.5 * channel.heartbeat_period)


def witness(node: NodeView) -> bool:
    """Can this reachable replica testify about its source? Not when its IO thread is stopped
    (by an operator, or by a failover's ``SetIOThreads``), whatever error it last recorded:
    that error predates the stop and says nothing about the source's health now."""
    channel = node.channel
    if channel is None or node.failures > 0:
        return False  # its own last probe failed: what it said before is not fresh testimony
    return channel.io_state is not IoState.STOPPED


# ---------------------------------------------------------------------------------------------
# Derivation


def derive(view: ClusterView, settings: Settings) -> ClusterView:
    addresses = _address_book(settings)
    sources = {
        name: _source_name(node.channel, addresses)
        for name, node in view.nodes.items()
        if node.status is not None and node.channel is not None
    }
    writable = tuple(
        name
        for name, node in view.nodes.items()
        if node.reachable and node.status is not None and not node.status.read_only
    )
    view = replace(view, sources=sources, writable=writable)
    primary, primary_reason = _primary(view, settings.failover.io_stall)
    view = replace(
        view,
        primary=primary,
        primary_reason=primary_reason,
        quorum=_quorum(view),
        published=_published(view),
    )
    problems: list[Problem] = []
    for rule in RULES:
        problems.extend(rule(view, settings))
    lag_unknown = tuple(
        name
        for name, node in view.nodes.items()
        if node.reachable
        and (channel := node.channel) is not None
        and channel.seconds_behind is None
    )
    return replace(
        view, problems=tuple(problems), lag_unknown=lag_unknown, generation=view.generation + 1
    )


def _address_book(settings: Settings) -> dict[tuple[str, int], str]:
    book: dict[tuple[str, int], str] = {}
    for node in settings.nodes:
        book[(_host_key(node.host), node.port)] = node.name
    return book


def _source_name(
    channel: ReplicationStatus | None, book: Mapping[tuple[str, int], str]
) -> str | None:
    if channel is None:
        return None
    key = (_host_key(channel.source_host), channel.source_port)
    return book.get(key, f"{channel.source_host}:{channel.source_port}")


def _primary(view: ClusterView, stall: float) -> tuple[str | None, str]:
    """The primary as the servers see it.

    A reachable node that is writable and replicates from nobody, unless replicas with a
    working link follow another node (a topology split: a stray writable server, or a
    controller cut off from the real primary: never trust it). When no such node is
    reachable, the node the replicas replicate from (its last known status must not be a
    replica itself).
    """
    candidates = [name for name in view.writable if view.nodes[name].channel is None]
    followed = sorted(
        {
            root
            for name, source in view.sources.items()
            if view.nodes[name].reachable
            and link_alive(view.nodes[name], view.at, stall)
            and (root := _chain_root(view, source)) is not None
        }
    )
    if len(candidates) > 1:
        # A returning old primary, a stray server: the one replicas really follow is the
        # primary (TwoWritableNodes is still reported and halts everything but fencing).
        chosen = [c for c in candidates if c in followed]
        if len(chosen) == 1 and len(followed) == 1:
            others = ", ".join(sorted(set(candidates) - {chosen[0]}))
            return chosen[0], f"writable and followed by the replicas ({others} writable too)"
        return None, f"several writable non-replicating nodes: {', '.join(sorted(candidates))}"
    if len(candidates) == 1:
        (only,) = candidates
        if stray := [f for f in followed if f != only]:
            return None, (
                f"topology split: {only} is writable and replicates from nobody, but "
                f"replicas with a working link follow {', '.join(stray)}"
            )
        return only, "writable and not replicating"
    votes: dict[str, int] = {}
    for name, source in view.sources.items():
        if view.nodes[name].reachable and source in view.nodes:
            votes[source] = votes.get(source, 0) + 1
    if not votes:
        return None, "no writable node and no replica points at a managed node"
    best = max(votes.values())
    leaders = sorted(s for s, v in votes.items() if v == best)
    if len(leaders) > 1:
        return None, f"replicas disagree on their source: {', '.join(leaders)}"
    leader = leaders[0]
    last = view.nodes[leader].status
    if last is not None and view.nodes[leader].channel is not None and view.nodes[leader].reachable:
        return None, f"the replicas' source {leader} is itself a replica"
    return leader, f"source of {best} reachable replica(s), itself not writable or not reachable"


def _published(view: ClusterView) -> str | None:
    """The one node whose primary lock shares its session with the leader lock; None when no
    node carries the publication, or when several do (an old leader's session has not ended
    yet): never guess between two."""
    carriers = [name for name, lock in view.locks.items() if lock.publishes]
    return carriers[0] if len(carriers) == 1 else None


def _chain_root(view: ClusterView, source: str | None) -> str | None:
    """The top of a replication chain (node2 -> node1 -> nobody: node1); None if unmanaged."""
    seen: set[str] = set()
    while source in view.nodes and source not in seen:
        seen.add(source)
        upstream = view.sources.get(source)
        if upstream is None:
            return source
        source = upstream
    return None


def hidden_nodes(view: ClusterView) -> frozenset[str]:
    """Hidden by an operator: in the router's hidden group, or put in maintenance through us."""
    hidden = view.router.membership.hidden if view.router.membership else frozenset()
    return hidden | view.maintenance


def _quorum(view: ClusterView) -> Quorum:
    """A strict majority of EVERY configured node must answer; hiding a node (maintenance, the
    router's hidden group) takes it out of routing and promotion, never out of this count.

    A hidden node that does not answer stays in the denominator: the controller cannot tell a
    node stopped for an upgrade from one alive on the far side of a partition, next to a
    primary that still takes writes; leaving it out would let an operator's hiding turn a
    partition's minority into a majority (two writers once it heals). A hidden node that
    answers counts as reachable: it proves the controller's link to it, which is all the count
    asks; it is still never a promotion candidate (``rules/candidates.py``). The cost: a node
    hidden and stopped counts against the majority (three nodes, one stopped for an upgrade,
    then the primary dies: 1 of 3, no failover); ``no_quorum`` says so and gives the way on."""
    hidden = hidden_nodes(view)
    reachable = tuple(n for n in view.nodes if view.nodes[n].reachable)
    away = tuple(n for n in view.nodes if n in hidden and n not in reachable)
    return Quorum(reachable=reachable, recognized=tuple(view.nodes), hidden_unreachable=away)


def serves(view: ClusterView) -> tuple[bool, str]:
    """Whether this instance's router may keep serving (``/ready``), and why: with quorum; or in
    a tie (``Quorum.tied``: no majority anywhere, so no failover on another side) while the
    primary is reachable and writable here. Never a change: that still needs the majority."""
    quorum = view.quorum
    if quorum.ok:
        return True, quorum.describe()
    primary = view.nodes.get(view.primary or "")
    status = primary.status if primary is not None and primary.reachable else None
    if quorum.tied and status is not None and not status.read_only:
        return True, f"{quorum.describe()} (a tie; {view.primary} still the writable primary)"
    return False, f"no quorum: {quorum.describe()}"


# ---------------------------------------------------------------------------------------------
# Problem rules, in priority order. Each returns the problems it finds; one rule per concern.

Rule = Callable[[ClusterView, Settings], Iterable[Problem]]


def no_quorum(view: ClusterView, settings: Settings) -> Iterable[Problem]:
    if not view.quorum.ok:
        unreachable = sorted(set(view.quorum.recognized) - set(view.quorum.reachable))
        yield Problem(
            Code.NO_QUORUM,
            None,
            f"{view.quorum.describe()}; a strict majority is needed (not reached: "
            f"{', '.join(unreachable)}){hidden_advice(view.quorum)}",
        )


def hidden_advice(quorum: Quorum) -> str:
    """Why hidden nodes that do not answer count, and the way on (``_quorum``): starting them
    again only where that makes a majority; the manual way only through the runbook's steps
    (the replica applies what it received before anything resets it)."""
    away = quorum.hidden_unreachable
    if not away:
        return ""
    one = len(away) == 1
    names, them = ", ".join(away), "it" if one else "them"
    said = (
        f"; {names} {'is' if one else 'are'} hidden and not answering: counted all the same "
        "(hiding takes a node out of routing and promotion, never out of the quorum: the "
        "controller cannot tell a node stopped from one alive on the far side of a partition, "
        "with the primary)"
    )
    total, back = len(quorum.recognized), len(quorum.reachable) + len(away)
    if 2 * back > total:
        way = (
            f"start {them} again (hidden, {'it only has' if one else 'they only have'} to "
            "answer: a hidden node that answers counts as reachable and is never promoted; "
            "the failover then goes on by itself if the primary is dead)"
        )
    else:
        way = (
            f"starting {them} again is not enough ({back} of {total} would answer: still no "
            "majority): bring back the other nodes not reached"
        )
    return (
        f"{said}. The way on: {way}; or, only if the nodes not reached are known down, not cut "
        "off, promote by hand following every step of docs/runbook.md, 'No quorum with a "
        "hidden node stopped' (the replica applies what it received first; with semi-sync "
        "that never falls back it takes writes only once a replica acknowledges)"
    )


def router_two_writers(view: ClusterView, settings: Settings) -> Iterable[Problem]:
    membership = view.router.membership
    if membership is not None and len(membership.writers) > 1:
        yield Problem(
            Code.ROUTER_HAS_TWO_WRITERS,
            None,
            f"router sends writes to {len(membership.writers)} nodes: "
            f"{', '.join(sorted(membership.writers))}",
        )


def two_writable(view: ClusterView, settings: Settings) -> Iterable[Problem]:
    if len(view.writable) > 1:
        yield Problem(
            Code.TWO_WRITABLE_NODES,
            None,
            f"{len(view.writable)} nodes are writable (read_only=OFF): {', '.join(view.writable)}",
        )


def primary_lost(view: ClusterView, settings: Settings) -> Iterable[Problem]:
    primary = view.primary
    if primary is None:
        return
    node = view.nodes[primary]
    if node.health is not Health.UNREACHABLE:
        yield from primary_lost_early(view, primary, settings)
        return
    replicas = [
        r for r in view.replicas_of(primary) if view.nodes[r].reachable and witness(view.nodes[r])
    ]
    alive = [r for r in replicas if link_alive(view.nodes[r], view.at, settings.failover.io_stall)]
    if alive:
        yield Problem(
            Code.UNREACHABLE_PRIMARY,
            primary,
            f"controller cannot reach {primary} ({node.last_error}) but replica(s) "
            f"{', '.join(alive)} still replicate from it: the controller's link is at fault",
        )
    elif replicas:
        yield Problem(
            Code.DEAD_PRIMARY,
            primary,
            f"{primary} unreachable ({node.reason}) and none of its reachable replicas "
            f"({', '.join(replicas)}) has a working link to it",
        )
    else:
        yield Problem(
            Code.UNREACHABLE_PRIMARY,
            primary,
            f"{primary} unreachable ({node.reason}) and no reachable replica can confirm it",
        )


def primary_lost_early(view: ClusterView, primary: str, settings: Settings) -> Iterable[Problem]:
    """Confirmation from two vantage points before ``failure_threshold``: the primary's last
    probe failed AND every replica that can testify has lost its link to it, as seen on a
    probe of that replica taken after the primary's last good answer (a failed probe of the
    primary re-probes every node at once). A replica's link is lost when its IO thread gave up
    (its own ``slave_net_timeout``) or its heartbeats stopped for ``failover.io_stall``: the
    replicas time the silence themselves, so one probe timeout of the controller's own is
    enough. A primary that only the controller cannot reach waits for ``failure_threshold``
    and is never failed over (``UnreachablePrimary``)."""
    node = view.nodes[primary]
    if node.failures == 0 or node.last_ok_at is None or not majority_without(view, primary):
        return
    stall = settings.failover.io_stall
    # A link that was already lost long before the primary's last good answer (a replica
    # broken for an hour) says nothing about what happened to the primary now.
    recent = node.last_ok_at - settings.probes.interval - stall
    witnesses = [
        r
        for r in view.replicas_of(primary)
        if view.nodes[r].reachable
        and witness(view.nodes[r])
        and (view.nodes[r].last_ok_at or 0.0) > node.last_ok_at
        and (view.nodes[r].io_progress_at or float("-inf")) >= recent
    ]
    everyone = [r for r in view.replicas_of(primary) if view.nodes[r].reachable]
    if len(witnesses) < len(everyone):
        return  # a replica that cannot testify yet: wait for it, or for failure_threshold
    if witnesses and not any(link_alive(view.nodes[r], view.at, stall) for r in witnesses):
        yield Problem(
            Code.DEAD_PRIMARY,
            primary,
            f"{primary}'s last probe failed ({node.last_error}) and every replica that can "
            f"testify ({', '.join(witnesses)}) lost its link to it since its last good answer",
        )


def majority_without(view: ClusterView, primary: str) -> bool:
    """Whether the nodes the controller reaches are a strict majority without ``primary``: a
    primary in doubt still counts as reachable for the quorum until ``failure_threshold``, and
    replicas on its side of a partition (still acknowledging its commits) may already count
    as unreachable; the early path must not fail over where the threshold would find no
    quorum."""
    quorum = view.quorum
    others = [n for n in quorum.reachable if n != primary]
    return 2 * len(others) > len(quorum.recognized)


def no_primary(view: ClusterView, settings: Settings) -> Iterable[Problem]:
    # Not when two writable nodes are reported (``two_writable``, from the same facts): read
    # from the facts, never from ``view.problems``, which still holds the last derivation's.
    if view.primary is None and len(view.writable) <= 1 and view.quorum.reachable:
        yield Problem(Code.NO_PRIMARY, None, view.primary_reason)


def router_state(view: ClusterView, settings: Settings) -> Iterable[Problem]:
    router = view.router
    if router.kind == "none":
        return
    if router.error:
        yield Problem(Code.ROUTER_UNREACHABLE, None, f"{router.kind}: {router.error}")
    for warning in router.warnings:
        yield Problem(Code.ROUTER_CONFLICT, None, warning)
    membership = router.membership
    if membership is None:
        return
    primary = view.primary
    if primary is not None and membership.writers != {primary}:
        now = ", ".join(sorted(membership.writers)) or "no node"
        yield Problem(
            Code.ROUTER_WRITER_IS_NOT_PRIMARY,
            primary,
            f"router sends writes to {now}, the primary is {primary}",
        )
    for name in sorted(membership.readers):
        node = view.nodes.get(name)
        if node is not None and node.health in (
            Health.UNREACHABLE,
            Health.REPLICATION_BROKEN,
            Health.LAGGING,
        ):
            yield Problem(
                Code.ROUTER_READER_UNHEALTHY,
                name,
                f"router sends reads to {name}, which is {node.health.value}: {node.reason}",
            )


def replica_source(view: ClusterView, settings: Settings) -> Iterable[Problem]:
    primary = view.primary
    if primary is None:
        return
    for name, node in view.nodes.items():
        if name == primary or not node.reachable or node.status is None:
            continue
        source = view.sources.get(name)
        if source != primary:
            what = "replicates from nobody" if source is None else f"replicates from {source}"
            yield Problem(
                Code.REPLICA_NOT_REPLICATING_FROM_PRIMARY,
                name,
                f"{name} {what}, the primary is {primary}",
            )


def replica_health(view: ClusterView, settings: Settings) -> Iterable[Problem]:
    for name, node in view.nodes.items():
        if node.health is Health.REPLICATION_BROKEN:
            yield Problem(Code.REPLICATION_BROKEN, name, node.reason)
        elif node.health is Health.LAGGING:
            yield Problem(Code.REPLICA_LAGGING, name, node.reason)
        elif node.health is Health.UNREACHABLE and name != view.primary:
            yield Problem(Code.NODE_UNREACHABLE, name, node.reason)


RULES: tuple[Rule, ...] = (
    no_quorum,
    router_two_writers,
    two_writable,
    primary_lost,
    no_primary,
    router_state,
    replica_source,
    replica_health,
)


# ---------------------------------------------------------------------------------------------
# State changes worth a log line


@dataclass(frozen=True)
class Change:
    event: str
    node: str | None
    level: str
    fields: Mapping[str, object]


def changes(old: ClusterView, new: ClusterView) -> list[Change]:
    return [
        *_node_changes(old, new),
        *_lock_changes(old, new),
        *_cluster_changes(old, new),
        *_problem_changes(old, new),
    ]


def _lock_changes(old: ClusterView, new: ClusterView) -> list[Change]:
    """A node's locks changed hands, or could not be read any more (a new session of this
    instance after a broken one is a change too: it holds nothing)."""
    out: list[Change] = []
    for name, lock in new.locks.items():
        before = old.locks.get(name, LockView())
        shape = (lock.known, lock.session, lock.leader, lock.primary)
        if shape == (before.known, before.session, before.leader, before.primary):
            continue
        fields = {
            "held": lock.held,
            "session": lock.session,
            "leader": lock.leader,
            "primary": lock.primary,
            "error": lock.error,
        }
        out.append(Change("lock", name, "info" if lock.known else "warning", fields))
    return out


def _node_changes(old: ClusterView, new: ClusterView) -> list[Change]:
    out: list[Change] = []
    for name, node in new.nodes.items():
        before = old.nodes.get(name)
        if before is None or before.health != node.health:
            bad = node.health in (Health.UNREACHABLE, Health.REPLICATION_BROKEN)
            fields = {
                "from": before.health.value if before else None,
                "to": node.health.value,
                "reason": node.reason,
            }
            out.append(Change("node_state", name, "warning" if bad else "info", fields))
    return out


def _cluster_changes(old: ClusterView, new: ClusterView) -> list[Change]:
    out: list[Change] = []
    if old.primary != new.primary:
        fields = {"from": old.primary, "to": new.primary, "reason": new.primary_reason}
        out.append(Change("primary_changed", new.primary, "warning", fields))
    if old.quorum.ok != new.quorum.ok:
        level = "info" if new.quorum.ok else "error"
        fields = {"ok": new.quorum.ok, "reason": new.quorum.describe()}
        out.append(Change("quorum", None, level, fields))
    if old.published != new.published:
        carriers = sorted(n for n, lock in new.locks.items() if lock.publishes)
        fields = {"from": old.published, "to": new.published, "carried_by": carriers}
        out.append(Change("published_primary", new.published, "info", fields))
    before, after = old.router.membership, new.router.membership
    if before != after and after is not None:
        fields = {"from": before.to_json() if before else None, "to": after.to_json()}
        out.append(Change("router_membership", None, "info", fields))
    return out


def _problem_changes(old: ClusterView, new: ClusterView) -> list[Change]:
    old_keys = {(p.code, p.node) for p in old.problems}
    new_keys = {(p.code, p.node) for p in new.problems}
    out = [
        Change("problem", p.node, "warning", {"code": p.code.value, "reason": p.reason})
        for p in new.problems
        if (p.code, p.node) not in old_keys
    ]
    out += [
        Change("problem_cleared", p.node, "info", {"code": p.code.value})
        for p in old.problems
        if (p.code, p.node) not in new_keys
    ]
    return out
