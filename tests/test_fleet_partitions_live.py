"""A fleet cut by real partitions (``sandbox up --netns --routers 3 --controllers 3``): three
real mariadbd, three real ProxySQL, each with its ``hacontrol run`` process on the same host
(the sidecar shares its pod's network: ``hacontrol.sandbox.netns.sandbox_hosts``), every host a
network namespace of its own. The leader is cut off for real, with the primary or alone.

Root and ProxySQL only: skipped with the reason otherwise. Behaviour with generous timeouts;
each test prints what it measured (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomysql
import pytest

from hacontrol.drill.fleet import LogTail
from hacontrol.drill.report import outage
from hacontrol.sandbox import Sandbox, SandboxSpec
from hacontrol.sandbox.model import RouterInfo
from hacontrol.sandbox.netns import router_host
from tests.live import WriteLoop, sql
from tests.proxysql_real import require_proxysql
from tests.sandbox_fixtures import run_sync, skip_without_netns, skip_without_servers
from tests.support import eventually

pytestmark = pytest.mark.integration

NODES = ("node1", "node2", "node3")
ON_NODES = frozenset({"Fence", "Promote", "Repoint", "Rejoin", "SetIOThreads", "SetWritable"})
"""The plan steps that change a database node (the router's steps, mails and locks aside)."""


@pytest.fixture
def netns_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """Three nodes, three ProxySQL and three controllers the sandbox starts, each on a host of
    its own (a controller on its router's), torn down whatever happens."""
    skip_without_netns()
    skip_without_servers()
    require_proxysql()
    directory = tmp_path_factory.mktemp("sbx") / "sandbox"
    spec = SandboxSpec(dir=directory, router="proxysql", routers=3, controllers=3, netns=True)
    sandbox = Sandbox(spec)
    last_resort = functools.partial(run_sync, sandbox.down)
    atexit.register(last_resort)
    try:
        run_sync(sandbox.up)
        yield sandbox
    finally:
        run_sync(sandbox.down)
        atexit.unregister(last_resort)


@dataclass
class Member:
    """One instance of the fleet: its controller's log (read as it grows) and its router."""

    name: str
    index: int
    router: RouterInfo
    log: LogTail

    def of(self, event: str, since: float = 0.0, **match: Any) -> list[dict[str, Any]]:
        return [
            r
            for r in self.log.read()
            if r.get("event") == event
            and r["_mono"] >= since
            and all(r.get(k) == v for k, v in match.items())
        ]

    def leads(self) -> bool:
        lines = self.of("lease")
        return bool(lines) and lines[-1]["leader"] is True

    def node_steps(self, since: float) -> list[dict[str, Any]]:
        """The steps this instance ran on a database node since ``since``."""
        return [a for a in self.of("action", since) if a["action"] in ON_NODES]


class Fleet:
    def __init__(self, sandbox: Sandbox) -> None:
        info = sandbox.status()
        offset = time.time() - time.monotonic()
        self.sandbox, self.info, self.network = sandbox, info, sandbox.network()
        self.members = [
            Member(c.name, c.router, info.routers[c.router], LogTail(Path(c.log), c.name, offset))
            for c in info.controllers
        ]

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def leaders(self) -> list[str]:
        return [m.name for m in self.members if m.leads()]

    async def wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        try:
            return await eventually(check, timeout, what, poll=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.story()}") from None

    def story(self) -> str:
        """What each instance decided and did, for a failure's message."""
        kept = {"lease", "plan_started", "plan_finished", "action", "alert", "published_primary"}
        out = []
        for m in self.members:
            out.append(f"--- {m.name} on host {router_host(m.index)}")
            for r in m.log.read():
                if r.get("event") in kept:
                    fields = {k: v for k, v in r.items() if k not in ("ts", "cluster", "_mono")}
                    out.append(f"{r['ts'][11:23]} {fields}"[:300])
        return "\n".join(out[-150:])

    async def writers(self, member: Member) -> frozenset[str] | None:
        """The nodes in ``member``'s ProxySQL writer hostgroup, read from ProxySQL itself
        (its admin socket); None when it does not answer."""
        addresses = {(n.host, n.port): n.name for n in self.info.nodes}
        try:
            conn = await aiomysql.connect(
                unix_socket=member.router.admin_socket,
                user="admin",
                password=self.sandbox.password("proxysql"),
                connect_timeout=2,
            )
        except (OSError, aiomysql.Error):
            return None
        try:
            async with conn.cursor() as cur:
                await cur.execute(
                    "SELECT hostname, port FROM runtime_mysql_servers "
                    "WHERE hostgroup_id = 10 AND status IN ('ONLINE', 'SHUNNED')"
                )
                rows = await cur.fetchall()
        finally:
            conn.close()
        return frozenset(addresses.get((host, int(port)), host) for host, port in rows)

    async def all_writers(self) -> dict[str, frozenset[str] | None]:
        return {m.name: await self.writers(m) for m in self.members}

    async def settled(self) -> Member:
        """One leader that published node1, every router writing to node1; the leader."""
        await self.wait(lambda: len(self.leaders()) == 1, 30, "one leader")
        leader = self.member(self.leaders()[0])
        await self.wait(
            lambda: leader.of("plan_finished", rule="PublishPrimary", ok=True), 20, "publication"
        )
        everywhere = {m.name: frozenset({"node1"}) for m in self.members}
        await self.wait(
            lambda: self.agrees(self.all_writers(), everywhere), 20, "every router on node1"
        )
        return leader

    @staticmethod
    async def agrees(value: Any, expected: Any) -> bool:
        return bool(await value == expected)


class RouterWrites(WriteLoop):
    """An application next to router ``index``, writing through its unix socket."""

    def __init__(self, sandbox: Sandbox, index: int, start_id: int) -> None:
        super().__init__(sandbox, period=0.05, start_id=start_id)
        self._socket = sandbox.status().routers[index].writer_socket

    async def _connect(self) -> aiomysql.Connection:
        info = self._sandbox.status()
        return await aiomysql.connect(
            unix_socket=self._socket,
            user=info.users["app"].user,
            password=self._sandbox.password("app"),
            autocommit=True,
            connect_timeout=2,
        )


async def node_state(sandbox: Sandbox, node: str) -> dict[str, Any]:
    """What a change to a node would alter: read_only, replication, semi-sync (read as root
    through the node's unix socket, which no partition cuts)."""
    (row,) = await sql(sandbox, node, "SELECT @@read_only, @@rpl_semi_sync_master_enabled")
    channels = await sql(sandbox, node, "SHOW ALL SLAVES STATUS")
    sources = sorted(f"{c[3]}:{c[4]}" for c in channels)  # Master_Host, Master_Port
    return {"read_only": row[0], "semi_sync_master": row[1], "sources": sources}


async def ids_on(sandbox: Sandbox, node: str) -> set[int]:
    return {row[0] for row in await sql(sandbox, node, "SELECT id FROM app.writes")}


Loops = dict[str, WriteLoop]


@contextlib.asynccontextmanager
async def load(fleet: Fleet) -> AsyncIterator[tuple[Loops, WriteLoop]]:
    """Writes through every router, and a client on node1's own host writing to it."""
    loops = {
        m.name: RouterWrites(fleet.sandbox, m.index, 1_000_000 * (m.index + 1)).start()
        for m in fleet.members
    }
    local = WriteLoop(fleet.sandbox, period=0.05, start_id=9_000_000, target="node1").start()
    try:
        await fleet.wait(
            lambda: all(len(w.acknowledged) >= 5 for w in (*loops.values(), local)),
            20,
            "writes through every router and on node1's host",
        )
        yield loops, local
    finally:
        await asyncio.gather(*(w.stop() for w in (*loops.values(), local)))


def since(records: list[dict[str, Any]], at: float) -> float:
    """Seconds from ``at`` to the first record."""
    return round(records[0]["_mono"] - at, 3)


def first_route_without_writer(member: Member, at: float) -> float | None:
    """Seconds from ``at`` until ``member`` took every writer out of its router."""
    routes = [
        a
        for a in member.of("action", at, action="Route", ok=True)
        if "'writers': []" in a["reason"]
    ]
    return since(routes, at) if routes else None


@dataclass
class LeaderCut:
    """What a test saw while the old leader was cut off, and after ``heal``."""

    old: Member
    cut: float
    down: dict[str, Any]
    new: Member | None = None
    promoted: str = "node1"
    healed: float = 0.0
    before: dict[str, dict[str, Any]] = field(default_factory=dict)
    during: dict[str, dict[str, Any]] = field(default_factory=dict)


async def with_primary_cut_off(fleet: Fleet, old: Member, loops: Loops) -> LeaderCut:
    """node1 and the leader's host against the rest, until the majority's routers write to the
    node the new leader promoted (and the old leader's router to none), 2 s more, then heal."""
    before = {"node1": await node_state(fleet.sandbox, "node1")}
    fleet.network.partition((("node1", old.name),))
    cut = time.monotonic()
    down = await fleet.wait(lambda: old.of("lease", cut, leader=False), 15, "old steps down")
    others = [m for m in fleet.members if m is not old]
    (new, finished), *_ = await fleet.wait(
        lambda: [(m, r) for m in others for r in m.of("plan_finished", cut, kind="failover")],
        40,
        "a failover on the majority side",
    )
    assert finished["ok"], finished["reason"]
    promoted = new.of("action", cut, action="Promote")[0]["node"]
    majority = {m.name: frozenset({promoted}) for m in others}

    async def routed() -> bool:
        writers = await fleet.all_writers()
        return {m.name: writers[m.name] for m in others} == majority and not writers[old.name]

    await fleet.wait(routed, 20, f"the majority's routers on {promoted}, the old one on none")
    resumed = time.monotonic()
    await fleet.wait(
        lambda: all(loops[m.name].acked_since(resumed) >= 5 for m in others),
        20,
        f"writes through the majority's routers on {promoted}",
    )
    await asyncio.sleep(2)  # the partition held well past detection and the takeover
    during = {"node1": await node_state(fleet.sandbox, "node1")}
    fleet.network.heal()
    return LeaderCut(old, cut, down[0], new, promoted, time.monotonic(), before, during)


async def old_primary_settled(fleet: Fleet, seen: LeaderCut) -> dict[str, Any]:
    """After heal: the new leader fences node1, then rejoins it or holds it with its errant
    GTIDs; every router writes to the promoted node. What settled node1."""
    new, healed = seen.new, seen.healed
    assert new is not None
    await fleet.wait(
        lambda: new.of("plan_finished", healed, rule="FenceReturningPrimary", ok=True),
        30,
        "the old primary fenced by the new leader",
    )

    def settled() -> list[dict[str, Any]]:
        errant = new.of("alert", healed, node="node1", kind="errant_transactions")
        return new.of("plan_finished", healed, rule="RejoinOldPrimary", ok=True) or errant

    how = await fleet.wait(settled, 30, "node1 rejoined or held with errant GTIDs")
    every = {m.name: frozenset({seen.promoted}) for m in fleet.members}
    await fleet.wait(
        lambda: fleet.agrees(fleet.all_writers(), every), 20, "every router on " + seen.promoted
    )
    return how[0]


def assert_old_leader_changed_nothing(fleet: Fleet, seen: LeaderCut) -> None:
    """It stepped down when its majority lapsed and changed no node (node1, which it still
    reached, kept its state); it ran its own router's changes and alerts only."""
    old, cut = seen.old, seen.cut
    assert "lost the majority" in seen.down["reason"], seen.down
    assert old.node_steps(cut) == [], old.node_steps(cut)
    assert not [p for p in old.of("plan_started", cut) if p["kind"] not in ("route", "alert")]
    assert not old.of("action", cut, action="Publish")
    assert seen.during == seen.before, (seen.before, seen.during)
    assert not old.of("lease", seen.down["_mono"], leader=True), "the old leader led again"
    assert seen.new is not None and fleet.leaders() == [seen.new.name]


async def test_leader_isolated_with_the_primary_changes_nothing_and_the_majority_fails_over(
    netns_fleet,
):
    fleet = Fleet(netns_fleet)
    old = await fleet.settled()
    async with load(fleet) as (loops, local):
        seen = await with_primary_cut_off(fleet, old, loops)
        how = await old_primary_settled(fleet, seen)
        await asyncio.sleep(1)
    new, cut = seen.new, seen.cut
    assert new is not None
    assert_old_leader_changed_nothing(fleet, seen)
    # Alerts: the old leader, on the minority side, cannot know what the other side does: no
    # quorum. The side that cannot reach the primary sees it dead (its replicas lost it too):
    # a failover, by the new leader alone. UnreachablePrimary (the controller alone cut from a
    # primary its replicas still reach) is nobody's case here.
    old_alerts = old.of("alert", cut)
    assert [a["kind"] for a in old_alerts][:1] == ["no_quorum"], old_alerts
    assert "1 of 3 recognized nodes reachable" in old_alerts[0]["reason"]
    failover = new.of("alert", cut, kind="failover")
    assert failover and "has a working link to it" in failover[0]["reason"], failover
    everyone = [a for m in fleet.members for a in m.of("alert", cut)]
    assert not [a for a in everyone if a["kind"] == "unreachable_primary"], everyone
    failed_over = [m.name for m in fleet.members if m.of("plan_started", cut, kind="failover")]
    assert failed_over == [new.name]
    # After heal the old leader follows and cannot read the locks for a moment (its lease
    # sessions reopen after its probes): no false alarm while the new leader fences node1 (it
    # used to send HALT: TwoWritableNodes and run on_halt in about half the runs).
    false_alarms = [a for a in old.of("alert", seen.healed) if a["kind"] in ("halt", "no_primary")]
    assert false_alarms == [], false_alarms
    # node1 acknowledged nothing after the cut: not to the client on its own host, nor through
    # the old leader's router while cut off; nothing acknowledged is missing on the new primary.
    late = [t for t in local.ack_times if t > cut + 0.1]
    late += [t for t in loops[old.name].ack_times if cut + 0.1 < t < seen.healed]
    assert late == [], late
    present = await ids_on(fleet.sandbox, seen.promoted)
    for name, loop in (*loops.items(), ("node1's host", local)):
        assert set(loop.acknowledged) <= present, f"{name} lost acknowledged writes"
    # After heal: one writer, every router on it (checked as it settled).
    after = {n: await node_state(fleet.sandbox, n) for n in NODES}
    assert [n for n in NODES if after[n]["read_only"] == 0] == [seen.promoted], after
    promote = new.of("action", cut, action="Promote")
    routed = since(new.of("action", promote[0]["_mono"], action="Route", ok=True), cut)
    unrouted = first_route_without_writer(old, cut)
    both = max(0.0, round(unrouted - routed, 3)) if unrouted is not None else None
    gaps = {m.name: outage(loops[m.name].ack_times, cut) for m in fleet.members}
    outages = {name: round(gap, 3) if gap is not None else None for name, gap in gaps.items()}
    print(
        f"\nleader {old.name} cut off with node1: stepped down {since([seen.down], cut)} s after "
        f"the cut ({seen.down['reason']}); {new.name} led "
        f"{since(new.of('lease', cut, leader=True), cut)} s after, promoted {seen.promoted} "
        f"{since(promote, cut)} s after and routed it {routed} s after; the old leader's router "
        f"without a writer {unrouted} s after (two routers on two writers for {both} s); write "
        f"outage through each router {outages}"
        f"\nalerts: {old.name}: {[(a['kind'], a['reason']) for a in old_alerts]}; "
        f"{new.name}: {[a['kind'] for a in new.of('alert', cut)]}; old leader's decisions after "
        f"heal: {sorted({d['rule'] for d in old.of('decision', seen.healed)})}"
        f"\nnode1 after heal: {how.get('rule') or how['kind']}; acknowledged by node1 after the "
        f"cut: {len(late)}; node1's host client errors: {local.errors}"
    )


async def test_leader_isolated_alone_a_follower_leads_and_nothing_changes(netns_fleet):
    fleet = Fleet(netns_fleet)
    old = await fleet.settled()
    others = [m for m in fleet.members if m is not old]
    before = {n: await node_state(fleet.sandbox, n) for n in NODES}
    async with load(fleet) as (loops, _):
        fleet.network.partition(((old.name,),))  # the leader's host against every other
        cut = time.monotonic()
        down = await fleet.wait(lambda: old.of("lease", cut, leader=False), 15, "old steps down")
        (new,) = await fleet.wait(
            lambda: [m for m in others if m.of("lease", cut, leader=True)], 20, "a new leader"
        )
        await fleet.wait(
            lambda: new.of("plan_finished", cut, rule="PublishPrimary", ok=True),
            20,
            "node1 published by the new leader",
        )
        alone = {m.name: frozenset({"node1"} if m is not old else ()) for m in fleet.members}
        await fleet.wait(
            lambda: fleet.agrees(fleet.all_writers(), alone),
            20,
            "the majority's routers on node1, the old leader's on none",
        )
        await asyncio.sleep(3)  # well past detection: nothing may change on a node
        during = {n: await node_state(fleet.sandbox, n) for n in NODES}
        healed = time.monotonic()
        fleet.network.heal()
        every = {m.name: frozenset({"node1"}) for m in fleet.members}
        await fleet.wait(lambda: fleet.agrees(fleet.all_writers(), every), 20, "routers on node1")
        await asyncio.sleep(1)
    seen = LeaderCut(old, cut, down[0], new, "node1", healed, before, during)
    assert_old_leader_changed_nothing(fleet, seen)
    for m in fleet.members:  # no failover, no change on a node by anyone
        assert m.node_steps(cut) == [] and not m.of("plan_started", cut, kind="failover"), m.name
    assert {n: await node_state(fleet.sandbox, n) for n in NODES} == before
    for m in others:  # the majority's routers kept their writer: writes went on
        assert loops[m.name].acked_since(cut) > 0, m.name
    gaps = {m.name: outage(loops[m.name].ack_times, cut, healed) for m in others}
    print(
        f"\nleader {old.name} cut off alone: stepped down {since(down, cut)} s after the cut; "
        f"{new.name} led {since(new.of('lease', cut, leader=True), cut)} s after and published "
        f"node1 {since(new.of('plan_finished', cut, rule='PublishPrimary'), cut)} s after; "
        f"the old leader's router without a writer {first_route_without_writer(old, cut)} s "
        f"after; longest write gap through the majority's routers {gaps}; alerts: "
        f"{[(m.name, a['kind']) for m in fleet.members for a in m.of('alert', cut)]}"
    )
