"""Routing rules: where every managed node should be routed, and bringing the router there.

Writer changes belong to failovers and switchovers; routine reconciling moves readers, fills an
empty writer group, or replaces a writer that is gone, and alerts instead of guessing.
"""

from __future__ import annotations

from hacontrol import gtid
from hacontrol.model import AlertKey, Condition, ControllerState, Decision
from hacontrol.plan import AlertKind, Notify, Plan, PlanKind, Publish, Route
from hacontrol.routing import Membership
from hacontrol.rules.alerts import alert_once, alert_unless_a_leader_may_act, refusal_subject
from hacontrol.rules.candidates import executed, holdings, topology_text
from hacontrol.settings import Settings
from hacontrol.view import ClusterView, Health, NodeView, hidden_nodes, link_alive, witness


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
    """Where every managed node should be routed, or None when no primary can be named.

    A fleet's instance routes its writer to the primary the leader publishes instead
    (``fleet_membership``)."""
    if settings.controller.fleet:
        return fleet_membership(view, state, settings)
    primary = view.primary
    if primary is None or not view.nodes[primary].reachable or primary in state.quarantined:
        return None
    status = view.nodes[primary].status
    if status is None or status.read_only:
        return None
    return around(view, state, settings, primary)


def around(
    view: ClusterView, state: ControllerState, settings: Settings, primary: str
) -> Membership:
    """``primary`` the writer, the replicas healthy under it readers, the others broken."""
    hidden = hidden_nodes(view)
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


def fleet_writer(
    view: ClusterView, state: ControllerState, settings: Settings
) -> tuple[str | None, str]:
    """The writer of every instance's router in a fleet, and why.

    The node carrying the leader's publication (its primary lock on the session of its leader
    lock). With no publication (the leader died or lost its lease, and no new one has
    published yet): the router's current writer while it is still, by this instance's own
    probes, the primary, writable and reachable (routers keep routing through a takeover);
    otherwise nobody: writes wait, never to a stale primary.

    Only with quorum: an instance that reaches no majority of the nodes may be on the small
    side of a partition, where an old publication can outlive the failover made on the other
    side (it lasts until the server frees the old leader's idle session, W). Not to a
    published node the replicas here have deserted (``replicas_deserted``: a publication
    lingers up to W on a primary the leader lost last, while it fails it over); and with no
    publication, only while the replicas here follow the writer with a live link
    (``replicas_lost``: a takeover keeps them, a failover behind a cut does not). In a tie
    (exactly half the nodes reachable: four nodes, one hidden and stopped, one more lost) the
    current writer is kept on the same conditions, never a publication followed: a symmetric
    cut leaves no majority anywhere, and an asymmetric one (a node both sides reach gives the
    far side its majority) is told by the replicas' testimony, hidden ones included."""
    quorum = view.quorum
    if not quorum.ok and not quorum.tied:
        return None, f"no quorum ({quorum.describe()}): no writer on this side"
    if not quorum.ok:  # a tie: keep a writer its replicas vouch for, never a new publication
        writer, why = still_the_writer(view, state, settings)
        return writer, f"no quorum ({quorum.describe()}, a tie: no majority anywhere); {why}"
    if view.published is not None:
        if deserted := replicas_deserted(view, view.published, settings):
            return None, f"the leader publishes {view.published}, but {deserted}"
        return view.published, f"the leader publishes {view.published}"
    return still_the_writer(view, state, settings)


def still_the_writer(
    view: ClusterView, state: ControllerState, settings: Settings
) -> tuple[str | None, str]:
    """With no publication to follow: the router's current writer while it is still, by this
    instance's own probes, the primary, writable and reachable, its replicas here following it
    live (``replicas_lost``); otherwise nobody."""
    membership = view.router.membership
    current = membership.writer if membership is not None else None
    node = view.nodes.get(current) if current is not None else None
    if (
        current is not None
        and node is not None
        and current == view.primary
        and node.reachable
        and node.status is not None
        and not node.status.read_only
        and current not in state.quarantined
    ):
        if lost := replicas_lost(view, current, settings):
            return None, f"nobody publishes the primary, and {lost}"
        return current, f"nobody publishes; {current} is still the writable primary here"
    return None, "nobody publishes the primary, and the router's writer is not the primary"


def replicas_lost(view: ClusterView, writer: str, settings: Settings) -> str | None:
    """Why the replicas this instance reaches do not vouch for ``writer``, or None: each must
    follow it (directly or down a chain) with a live link, and at least one that can testify
    must. Without a publication this is what tells a takeover (the replicas still follow the
    primary) from a failover the leader makes on the other side of a cut this instance does
    not see (they lost it). A hidden replica testifies like any other (it counts for the
    quorum too) unless its IO thread was stopped (``witness``: an operator's maintenance):
    otherwise an instance that reaches the primary through hidden replicas only would keep
    routing to it while the leader fails it over (an asymmetric cut)."""
    hidden = hidden_nodes(view)
    vouching = 0
    for name, node in sorted(view.nodes.items()):
        if name == writer or not node.reachable or (name in hidden and not testifies(view, name)):
            continue
        if _root(view, name) != writer:
            return f"{name} does not replicate from {writer}"
        if not link_alive(node, view.at, settings.failover.io_stall):
            return f"{name} has no live link to {writer} (its source may be failed over)"
        vouching += witness(node)
    if not vouching:
        return f"no replica here can vouch for {writer} (none follows it with a running IO thread)"
    return None


def testifies(view: ClusterView, name: str) -> bool:
    """Whether a hidden replica says anything about the writer: its IO thread runs (``witness``)
    from a managed node's chain (one following an outside source, for a migration, says
    nothing; one a far side's failover repointed follows a managed node)."""
    return witness(view.nodes[name]) and _root(view, name) in view.nodes


def replicas_deserted(view: ClusterView, writer: str, settings: Settings) -> str | None:
    """Why the replicas this instance reaches testify that ``writer`` is gone, or None: every
    one of them that follows it has heard nothing from it (no transaction, no heartbeat) for
    longer than ``failover.io_stall``. A publication lingers up to W on a primary the leader
    lost last (its session there is idle until the server frees it), while the leader fails it
    over; an instance that still reaches it must not route writes there meanwhile. Replicas
    just repointed, without heartbeats, or whose IO thread an operator stopped say nothing."""
    stall = settings.failover.io_stall
    followers = [
        node
        for name, node in view.nodes.items()
        if name != writer
        and node.reachable
        and witness(node)  # an IO thread an operator stopped says nothing
        and _root(view, name) == writer
    ]
    if followers and all(silent(node, stall) for node in followers):
        return f"the replicas here have heard nothing from it for over {stall:g} s"
    return None


def silent(node: NodeView, stall: float) -> bool:
    """This replica has received nothing from its source (heartbeats on) for over ``stall``."""
    channel = node.channel
    if channel is None or channel.heartbeat_period is None or channel.heartbeats_received is None:
        return False
    if node.io_progress_at is None or node.last_ok_at is None:
        return False
    return node.last_ok_at - node.io_progress_at > max(stall, 2.5 * channel.heartbeat_period)


def _root(view: ClusterView, name: str) -> str | None:
    """Where ``name``'s replication chain starts (None: it replicates from nobody)."""
    seen = {name}
    source = view.sources.get(name)
    while source is not None and source not in seen and view.sources.get(source) is not None:
        seen.add(source)
        source = view.sources.get(source)
    return source


def fleet_membership(
    view: ClusterView, state: ControllerState, settings: Settings
) -> Membership | None:
    """A fleet instance's router: the writer from ``fleet_writer``; with none, the current
    membership without its writers (reads go on); None when the router is unknown."""
    writer, _ = fleet_writer(view, state, settings)
    if writer is not None:
        return around(view, state, settings, writer)
    current = view.router.membership
    if current is None:
        return None
    unreachable = {n for n, node in view.nodes.items() if not node.reachable}
    hidden = current.hidden | view.maintenance
    return Membership(
        frozenset(),
        current.readers - current.writers - unreachable - hidden,
        (current.broken | current.writers | (current.readers & unreachable)) - hidden,
        hidden,
    )


def routing_differs(current: Membership | None, desired: Membership) -> bool:
    """Compare what routes traffic: writers and readers (HAProxy reads hidden back as broken)."""
    if current is None:
        return True
    return current.writers != desired.writers or current.readers != desired.readers


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


def rule_route(
    view: ClusterView, state: ControllerState, settings: Settings, now: float
) -> Decision | None:
    if settings.router.kind == "none" or now < state.route_retry_at:
        return None
    desired = desired_membership(view, state, settings)
    current = view.router.membership
    if desired is None or current is None:
        return None
    if not routing_differs(current, desired):
        return None
    fleet = settings.controller.fleet
    if not fleet and current.writers != desired.writers:
        (new,) = desired.writers
        if why := writer_change_problem(view, state, current, new):
            return writer_mismatch(view, state, current, new, why)
    writers = sorted(current.writers) if current else "unknown"
    readers = sorted(current.readers) if current else "unknown"
    reason = (
        f"router differs from the topology: writers {writers} -> "
        f"{sorted(desired.writers)}, readers {readers} -> {sorted(desired.readers)}"
    )
    if fleet:
        reason += f" ({fleet_writer(view, state, settings)[1]})"
    # The operator's maintenance not in the router's hidden group yet (its own Route failed)
    # is added: without leave to change that group the router refused every reconcile.
    adds = bool(view.maintenance - current.hidden)
    route = Route(desired, no_writer=not desired.writers, hidden_change=adds)
    return Decision(Plan("RouteReconcile", reason, (route,), kind=PlanKind.ROUTE), state)


def writer_mismatch(
    view: ClusterView, state: ControllerState, current: Membership, new: str, why: str
) -> Decision:
    plan = Plan(
        "RouterWriterMismatch",
        f"not moving the router's writer "
        f"{sorted(current.writers)} to {new}: {why}; an operator must decide",
        kind=PlanKind.ALERT,
    )
    alert = Notify(
        AlertKind.ROUTER_WRITER_MISMATCH,
        new,
        "router writer differs from the primary",
        plan.reason,
        (("topology", topology_text(view)),),
    )
    return alert_once(state, AlertKey(Condition.WRITER_MISMATCH, new), plan, alert)


def rule_publish(
    view: ClusterView, state: ControllerState, settings: Settings, now: float
) -> Decision | None:
    """Fleet: the leader publishes the primary it sees when no node carries its publication:
    at a fleet's start, after a takeover, after a failed publication. Only a writable
    primary, not an old one, and only when no other reachable node holds a transaction it
    lacks (a half-done failover left behind is then an operator's call). A follower that
    cannot read the locks yet holds that alert a while (``alert_unless_a_leader_may_act``):
    right after a partition heals, the old primary the leader fenced still holds what it never
    acknowledged, and the follower cannot see that the leader quarantined it."""
    primary = view.primary
    if not settings.controller.fleet or primary is None or view.published == primary:
        return None
    node = view.nodes[primary]
    if (
        not node.reachable
        or node.status is None
        or node.status.read_only
        or primary in state.quarantined
        or now < state.retry_at.get((PlanKind.PUBLISH, primary), 0.0)
    ):
        return None
    if refused := ahead_of(view, state, primary):
        return publish_refused(view, state, settings, now, primary, refused)
    was = f", in place of {view.published}" if view.published else ""
    reason = f"publishing {primary}, the writable primary, to every router of the fleet{was}"
    return Decision(Plan("PublishPrimary", reason, (Publish(primary),), PlanKind.PUBLISH), state)


def publish_refused(
    view: ClusterView,
    state: ControllerState,
    settings: Settings,
    now: float,
    primary: str,
    refused: tuple[str, str, str],
) -> Decision:
    """The primary not published, with one alert per refusal, about the node that stops it
    (its subject "primary node2 not published (ahead): node3"): a refusal for another node
    ahead (or unreadable) is another alert, mailed again; the same one (the node ahead taking
    more writes) is not."""
    node, what, why = refused
    plan = Plan(
        "PublishRefused",
        f"not publishing {primary} as the primary: {why} (an operator must decide)",
        kind=PlanKind.ALERT,
    )
    # The node that stops it, not the primary: the mail's subject names it, and the
    # notifier's dedup (per kind and node) lets another refusal's mail through.
    summary = f"primary {primary} not published ({what}):"
    alert = Notify(AlertKind.NO_PRIMARY, node, summary, plan.reason)
    key = AlertKey(Condition.NO_PRIMARY, refusal_subject(primary, node, what))
    decision = alert_once(state, key, plan, alert)
    return alert_unless_a_leader_may_act(view, state, settings, now, key, decision)


def ahead_of(
    view: ClusterView, state: ControllerState, primary: str
) -> tuple[str, str, str] | None:
    """Which reachable node that does not replicate from ``primary`` (an old primary aside)
    holds transactions ``primary`` has not executed, or None: (the node, "ahead" or
    "unreadable", why). Its own replicas are left out: they hold nothing it lacks, and a
    replica probed a moment after it may show newer transactions than its last probe."""
    theirs = executed(view.nodes[primary].status)
    if theirs is None:
        return primary, "unreadable", f"{primary}'s transactions unreadable"
    for name, node in sorted(view.nodes.items()):
        if (
            name == primary
            or not node.reachable
            or name in state.quarantined
            or view.sources.get(name) == primary
        ):
            continue
        mine = holdings(node)
        if mine is None:
            return name, "unreadable", f"{name}'s transactions unreadable"
        if mine.flavor == theirs.flavor and (extra := mine - theirs):
            return name, "ahead", f"{name} has {extra}, which {primary} lacks"
    return None
