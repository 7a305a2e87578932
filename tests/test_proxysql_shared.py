"""Two clusters routed by one real ProxySQL 2.7.1, their routers sharing one admin link.

Each cluster owns its own hostgroups (orders: 10/20/30/40, users: 110/120/130/140); both
routers drive the admin port over the one connection of their shared ``AdminLink``. Shown here:
``LOAD MYSQL SERVERS TO RUNTIME`` publishes every cluster's written-but-unloaded rows (why an
apply runs whole under the link's lock); two clusters' applies started together never
interleave; a failover apply of one cluster leaves the other's rows identical in memory,
runtime and disk at every statement; no write names another cluster's hostgroup; and the
check before each LOAD refuses a configuration with two writers in any cluster of the link.

The nodes are addresses only (ProxySQL runs without its monitor): the router only needs rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest

from hacontrol.actions.proxysql import LOAD_TO_RUNTIME, SAVE_TO_DISK, AdminLinks, ProxySQLRouter
from hacontrol.events import Event, RouterProbeResult
from hacontrol.jsonlog import JsonLog
from hacontrol.probes.router import RouterProbe
from hacontrol.routing import Membership, RouterBusy, RouterError
from hacontrol.settings import NodeSettings, ProxySQLSettings, RouterSettings
from tests.live import LogCapture
from tests.proxysql_real import AdminTap, RealProxySQL, runtime_rows
from tests.proxysql_real import Row as SeedRow

HOSTGROUPS = {
    "orders": dict(
        writer_hostgroup=10, reader_hostgroup=20, broken_hostgroup=30, hidden_hostgroup=40
    ),
    "users": dict(
        writer_hostgroup=110, reader_hostgroup=120, broken_hostgroup=130, hidden_hostgroup=140
    ),
}
IDS = {name: set(hgs.values()) for name, hgs in HOSTGROUPS.items()}
NODES = {
    "orders": tuple(NodeSettings(name=f"o{k}", host=f"127.0.1.{k}", port=3306) for k in (1, 2, 3)),
    "users": tuple(NodeSettings(name=f"u{k}", host=f"127.0.2.{k}", port=3306) for k in (1, 2, 3)),
}
OTHER = SeedRow(50, "127.0.9.9", 3306, comment="another team's hostgroup")


def seed(cluster: str) -> list[SeedRow]:
    """Node 1 the writer, every node a reader."""
    hg = HOSTGROUPS[cluster]
    first, *_ = NODES[cluster]
    rows = [SeedRow(hg["writer_hostgroup"], first.host, first.port)]
    rows += [SeedRow(hg["reader_hostgroup"], n.host, n.port) for n in NODES[cluster]]
    return rows


def failed_over(cluster: str, to: int) -> Membership:
    """Node ``to`` the writer and a reader with the third, node 1 broken."""
    names = [n.name for n in NODES[cluster]]
    new, old = names[to - 1], names[0]
    rest = [n for n in names if n not in (new, old)]
    return Membership.of([new], [new, *rest], [old])


def healthy(cluster: str) -> Membership:
    names = [n.name for n in NODES[cluster]]
    return Membership.of([names[0]], names)


@pytest.fixture(scope="module")
def real_proxysql(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealProxySQL]:
    with RealProxySQL(tmp_path_factory.mktemp("proxysql-shared")) as proxysql:
        yield proxysql


class Shared:
    """The ProxySQL, the tap every router statement goes through (a runtime snapshot after
    each), and both clusters' routers on one AdminLinks."""

    def __init__(self, px: RealProxySQL, tap: AdminTap) -> None:
        self.px, self.tap = px, tap
        self.links = AdminLinks()
        self.routers = {name: self.router(name) for name in HOSTGROUPS}

    def settings(self, cluster: str, **changes: object) -> ProxySQLSettings:
        return ProxySQLSettings(
            **{
                "host": self.tap.host,
                "port": self.tap.port,
                "user": self.px.user,
                "password": self.px.password,
                "timeout": 5.0,
                **HOSTGROUPS[cluster],
                **changes,
            },
        )

    def router(
        self, cluster: str, links: AdminLinks | None = None, share_age: float = 0.0
    ) -> ProxySQLRouter:
        settings = self.settings(cluster)
        link = (links if links is not None else self.links).get(settings)
        return ProxySQLRouter(
            settings,
            NODES[cluster],
            RouterSettings(kind="proxysql"),
            link=link,
            share_age=share_age,
            cluster=cluster,
        )

    async def rows(self, cluster: str, table: str) -> list[tuple[str | None, ...]]:
        """Every column of the cluster's rows in ``table``, on a connection of its own."""
        ids = ", ".join(str(i) for i in sorted(IDS[cluster]))
        sql = f"SELECT * FROM {table} WHERE hostgroup_id IN ({ids}) ORDER BY 1, 2, 3"
        return await asyncio.to_thread(self.px.admin, sql)

    async def layers(self, cluster: str) -> dict[str, list[tuple[str | None, ...]]]:
        tables = ("mysql_servers", "runtime_mysql_servers", "disk.mysql_servers")
        return {table: await self.rows(cluster, table) for table in tables}


@pytest.fixture
async def shared(real_proxysql: RealProxySQL) -> AsyncIterator[Shared]:
    await asyncio.to_thread(real_proxysql.reset, [*seed("orders"), *seed("users"), OTHER])
    tap = await AdminTap(
        (real_proxysql.host, real_proxysql.port), snapshot=lambda: runtime_rows(real_proxysql)
    ).start()
    both = Shared(real_proxysql, tap)
    try:
        yield both
    finally:
        await both.links.close()
        await tap.stop()


# -- reading the tap ---------------------------------------------------------------------------

WRITE = re.compile(r"^(INSERT|DELETE|UPDATE)\b")
HOSTGROUP_IN_WRITE = re.compile(r"hostgroup_id = (\d+)|VALUES \((\d+),")


def cluster_of_write(sql: str) -> str:
    """The cluster whose hostgroup a write names (exactly one: the test fails otherwise)."""
    ids = {int(a or b) for a, b in HOSTGROUP_IN_WRITE.findall(sql)}
    owners = {name for name, hgs in IDS.items() if ids & hgs}
    assert len(owners) == 1 and all(any(i in hgs for hgs in IDS.values()) for i in ids), sql
    return owners.pop()


def apply_segments(statements: Sequence[str]) -> list[tuple[str, int, int]]:
    """(cluster, first, last): from each apply's first write to the SAVE that ends it."""
    segments, open_at, owner = [], None, ""
    for i, sql in enumerate(statements):
        if WRITE.match(sql) and open_at is None:
            open_at, owner = i, cluster_of_write(sql)
        elif sql == SAVE_TO_DISK and open_at is not None:
            segments.append((owner, open_at, i))
            open_at = None
    assert open_at is None, "an apply never reached its SAVE"
    return segments


def managed(rows: Sequence[tuple[int, str, int, str]], cluster: str) -> list[tuple]:
    return sorted(r for r in rows if int(r[0]) in IDS[cluster])


def writers(rows: Sequence[tuple[int, str, int, str]], cluster: str) -> list[tuple]:
    writer = HOSTGROUPS[cluster]["writer_hostgroup"]
    return [r for r in rows if int(r[0]) == writer and r[3] in ("ONLINE", "SHUNNED")]


# -- ProxySQL's own behaviour ------------------------------------------------------------------


async def test_load_publishes_another_clusters_unloaded_rows(shared: Shared) -> None:
    # Cluster users' apply has deleted its writer and not yet loaded; anyone's LOAD now
    # publishes that half-written state: users has no writer in runtime.
    px = shared.px
    await asyncio.to_thread(px.admin, "DELETE FROM mysql_servers WHERE hostgroup_id = 110")
    assert writers(await runtime_rows(px), "users") != []
    await asyncio.to_thread(px.admin, LOAD_TO_RUNTIME)  # another connection, another cluster
    assert writers(await runtime_rows(px), "users") == []


# -- the shared link ---------------------------------------------------------------------------


async def test_both_routers_share_one_link_and_read_only_their_rows(shared: Shared) -> None:
    orders, users = shared.routers["orders"], shared.routers["users"]
    assert orders.link is users.link and len(shared.links) == 1
    assert (await orders.probe())[0] == healthy("orders")
    assert (await users.probe())[0] == healthy("users")
    connection = orders.link.session.connection
    assert await users.read() == healthy("users")
    assert orders.link.session.connection is connection  # one connection for both


async def test_a_failover_apply_leaves_the_other_clusters_rows_untouched(shared: Shared) -> None:
    orders, users = shared.routers["orders"], shared.routers["users"]
    before = await shared.layers("users")
    probing = asyncio.Event()

    async def probe_users() -> int:  # users' router probe goes on during orders' failover
        count = 0
        while not probing.is_set():
            assert (await users.probe())[0] == healthy("users")
            count += 1
            await asyncio.sleep(0)
        return count

    prober = asyncio.create_task(probe_users())
    assert await orders.apply(failed_over("orders", to=2)) is True
    probing.set()
    assert await prober > 0
    assert await orders.read() == failed_over("orders", to=2)
    assert await shared.layers("users") == before  # every column, all three layers
    await shared.tap.settle()
    users_runtime = {tuple(managed(s, "users")) for s in shared.tap.history}
    assert len(users_runtime) == 1  # identical after every statement of the failover
    writes = [sql for sql in orders.statements_sent if WRITE.match(sql)]
    assert writes and {cluster_of_write(sql) for sql in writes} == {"orders"}
    assert all(len(writers(s, "orders")) <= 1 for s in shared.tap.history)


async def test_the_probes_of_clusters_on_one_link_share_one_read(shared: Shared) -> None:
    links = AdminLinks()
    orders, users = (shared.router(name, links, share_age=60.0) for name in HOSTGROUPS)

    def runtime_reads() -> list[str]:
        return [sql for sql in shared.tap.statements if "FROM runtime_mysql_servers" in sql]

    try:
        assert (await orders.probe())[0] == healthy("orders")
        assert (await users.probe())[0] == healthy("users")
        (read,) = runtime_reads()  # one read of both clusters' rows served both probes
        assert "10, 20, 30, 40, 110, 120, 130, 140" in read
        assert await orders.apply(failed_over("orders", to=2)) is True
        reads = len(runtime_reads())
        assert (await users.probe())[0] == healthy("users")  # read again after the apply
        assert (await orders.probe())[0] == failed_over("orders", to=2)  # never the old read
        assert len(runtime_reads()) == reads + 1
    finally:
        await links.close()


async def test_two_clusters_applies_started_together_never_interleave(shared: Shared) -> None:
    orders, users = shared.routers["orders"], shared.routers["users"]
    for round_ in range(3):
        wanted = {
            "orders": failed_over("orders", 2) if round_ % 2 == 0 else healthy("orders"),
            "users": failed_over("users", 3) if round_ % 2 == 0 else healthy("users"),
        }
        probes = [r.probe() for r in (orders, users) for _ in range(3)]
        await asyncio.gather(orders.apply(wanted["orders"]), users.apply(wanted["users"]), *probes)
        assert await orders.read() == wanted["orders"] and await users.read() == wanted["users"]
    await shared.tap.settle()
    statements, history = shared.tap.statements, shared.tap.history
    segments = apply_segments(statements)
    assert sorted(owner for owner, _, _ in segments) == ["orders"] * 3 + ["users"] * 3
    for owner, first, last in segments:
        inside = statements[first : last + 1]
        assert all(cluster_of_write(sql) == owner for sql in inside if WRITE.match(sql))
    # A cluster's runtime rows change only at a LOAD inside one of its own applies.
    for i in range(1, len(history)):
        for cluster in HOSTGROUPS:
            if managed(history[i], cluster) != managed(history[i - 1], cluster):
                assert statements[i] == LOAD_TO_RUNTIME, (cluster, statements[i])
                assert any(o == cluster and f <= i <= la for o, f, la in segments), (cluster, i)
        assert all(len(writers(history[i], c)) <= 1 for c in HOSTGROUPS)


async def test_an_apply_begun_in_the_middle_of_another_waits_for_its_end(shared: Shared) -> None:
    orders, users = shared.routers["orders"], shared.routers["users"]
    started: list[asyncio.Task[bool]] = []

    async def hook(sql: str, previous: str | None) -> None:
        # Right after users deleted its old writer (not loaded yet): orders' failover starts.
        if not started and previous and previous.startswith("DELETE FROM mysql_servers"):
            started.append(asyncio.create_task(orders.apply(failed_over("orders", 2))))

    shared.tap.hooks.append(hook)
    assert await users.apply(failed_over("users", 3)) is True
    assert started and await started[0] is True
    statements = shared.tap.statements
    users_save = statements.index(SAVE_TO_DISK)
    orders_writes = [
        i
        for i, sql in enumerate(statements)
        if WRITE.match(sql) and cluster_of_write(sql) == "orders"
    ]
    assert orders_writes and min(orders_writes) > users_save


async def test_a_busy_admin_fails_no_call_that_waits_behind_others(shared: Shared) -> None:
    # Each apply takes 1.2 s of its 2 s (ProxySQL slow to SAVE): a read queued behind both
    # waits 2.4 s, more than its 2 s, and is still not a timeout.
    links = AdminLinks()
    orders, users = (shared.router(name, links) for name in HOSTGROUPS)
    orders.settings = users.settings = orders.settings.model_copy(update={"timeout": 2.0})

    async def slow_save(sql: str, previous: str | None) -> None:
        if sql == SAVE_TO_DISK:
            await asyncio.sleep(1.2)

    shared.tap.hooks.append(slow_save)
    started = time.monotonic()
    try:
        done = await asyncio.gather(
            orders.apply(failed_over("orders", 2)),
            users.apply(failed_over("users", 3)),
            orders.read(),
        )
    finally:
        await links.close()
    assert done == [True, True, failed_over("orders", 2)]
    assert time.monotonic() - started > 2.4
    assert await orders.read() == failed_over("orders", 2)
    assert await users.read() == failed_over("users", 3)


async def test_a_hung_admin_fails_the_waiting_calls_in_bounded_time(shared: Shared) -> None:
    orders, users = shared.routers["orders"], shared.routers["users"]
    for router in (orders, users):
        router.settings = router.settings.model_copy(update={"timeout": 0.5})
    await orders.read()  # the kept connection is open
    shared.px.freeze()
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            orders.read(), users.read(), orders.probe(), return_exceptions=True
        )
        elapsed = time.monotonic() - started
    finally:
        shared.px.thaw()
    assert all(isinstance(r, RouterError) for r in results), results
    assert "timed out after 0.5 s at" in str(results[0])
    assert elapsed < 3 * 0.5 + 0.5  # the last waited for two calls, then timed out its own
    assert await users.read() == healthy("users")  # back: a new connection


async def test_no_load_publishes_two_writers_of_any_cluster_on_the_link(shared: Shared) -> None:
    # Someone planted a second writer for users in memory (not loaded). Orders' next apply
    # would LOAD it: refused, and nothing of orders' plan is loaded either.
    orders = shared.routers["orders"]
    second = NODES["users"][1]
    await asyncio.to_thread(shared.px.admin, SeedRow(110, second.host, second.port).insert_sql())
    runtime_before = await runtime_rows(shared.px)
    with pytest.raises(
        RouterError,
        match=r"refusing to LOAD .* 2 writers \['u1', 'u2'\] in hostgroup 110 of cluster users "
        r"\(changed by someone else meanwhile\?\); another cluster on this admin",
    ):
        await orders.apply(failed_over("orders", 2))
    assert await runtime_rows(shared.px) == runtime_before


def test_one_admin_endpoint_is_one_link_with_one_set_of_credentials() -> None:
    links = AdminLinks()
    a = ProxySQLSettings(host="127.0.0.1", port=6032, password="x", **HOSTGROUPS["orders"])
    b = ProxySQLSettings(host="127.0.0.1", port=6032, password="x", **HOSTGROUPS["users"])
    assert links.get(a) is links.get(b) and len(links) == 1
    other = ProxySQLSettings(host="127.0.0.1", port=6033, password="x")
    assert links.get(other) is not links.get(a) and len(links) == 2
    for wrong in (
        b.model_copy(update={"user": "root"}),
        b.model_copy(update={"password": a.password.__class__("y")}),
    ):
        with pytest.raises(RouterError, match=r"127\.0\.0\.1:6032 is named by several clusters"):
            links.get(wrong)


def test_every_spelling_of_one_admin_is_one_link() -> None:
    links = AdminLinks()
    first = links.get(ProxySQLSettings(host="127.0.0.1", port=6032, password="x"))
    for host in ("localhost", "LOCALHOST", "::ffff:127.0.0.1", "::1"):
        assert links.get(ProxySQLSettings(host=host, port=6032, password="x")) is first, host
    assert len(links) == 1


def test_two_clusters_on_one_link_may_not_share_a_hostgroup() -> None:
    link = AdminLinks().get(ProxySQLSettings(host="127.0.0.1", port=6032, password="x"))
    settings = ProxySQLSettings(host="127.0.0.1", port=6032, password="x", **HOSTGROUPS["orders"])
    ProxySQLRouter(settings, NODES["orders"], link=link)
    clash = settings.model_copy(update={"hidden_hostgroup": 140, "writer_hostgroup": 110})
    with pytest.raises(RouterError, match=r"hostgroup\(s\) \[20, 30\] managed for two clusters"):
        ProxySQLRouter(clash, NODES["users"], link=link)
    assert len(link.layouts) == 1


GARBLED = b"\x01\x00\x00\x01\x01" + b"\x04\x00\x00\x02\x03def"
"""An answer of one column whose definition stops after its catalog."""


class SilentRelay:
    """A TCP relay in front of the admin port; ``blackhole()`` stops forwarding on the
    connections open now, silently (no close, no RST: packets dropped on a half-dead flow),
    while new connections are relayed normally."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.flows: list[dict[str, bool]] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> SilentRelay:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def blackhole(self) -> None:
        for flow in self.flows:
            flow["dead"] = True

    def garble(self) -> None:
        """The next answer on the connections open now is garbage (a result set whose column
        definition is cut short), the rest of the flow dropped."""
        for flow in self.flows:
            flow["garble"] = True

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]
        flow = {"dead": False, "garble": False}
        self.flows.append(flow)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    if flow["garble"] and dst is writer:
                        flow["garble"], flow["dead"] = False, True
                        dst.write(GARBLED)
                    if not flow["dead"]:
                        dst.write(data)
                        await dst.drain()

        with contextlib.suppress(asyncio.CancelledError):  # the test's end: relay closed
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@contextlib.asynccontextmanager
async def relayed(shared: Shared) -> AsyncIterator[tuple[SilentRelay, AdminLinks]]:
    """A SilentRelay in front of the admin port and links of their own: both closed at the
    end, whatever the test did."""
    relay = await SilentRelay((shared.px.host, shared.px.port)).start()
    links = AdminLinks()
    try:
        yield relay, links
    finally:
        await links.close()
        await relay.stop()


@contextlib.asynccontextmanager
async def users_relayed(shared: Shared) -> AsyncIterator[tuple[SilentRelay, ProxySQLRouter]]:
    """The users cluster's router through a relay (``relayed``; its admin timeout 2 s), its
    kept connection open."""
    async with relayed(shared) as (relay, links):
        settings = shared.settings("users", port=relay.port, timeout=2.0)
        users = ProxySQLRouter(
            settings, NODES["users"], RouterSettings(kind="proxysql"), link=links.get(settings)
        )
        assert await users.read() == healthy("users")  # the kept connection is open
        yield relay, users


async def test_a_silently_dead_kept_connection_is_replaced_before_the_call(
    shared: Shared,
) -> None:
    # The kept connection's packets are dropped (no error, no close): without a check the
    # fence would wait its whole 2 s and fail (a failover's required RouteFence: failover
    # halted). A SELECT 1 bounded by min(timeout/4, 0.5 s) finds it dead; a new connection
    # then does the apply with its full time.
    async with users_relayed(shared) as (relay, users):
        relay.blackhole()
        started = time.monotonic()
        assert await users.apply(failed_over("users", 2)) is True
        elapsed = time.monotonic() - started
        assert await shared.rows("users", "runtime_mysql_servers")  # still readable
        assert await users.read() == failed_over("users", 2)
    assert elapsed < 0.5 + 1.5  # the check's bound, then the apply (well under its 2 s)
    assert len(relay.flows) == 2  # one reconnect, no more


async def test_a_kept_connection_that_answers_garbage_to_its_check_is_replaced(
    shared: Shared,
) -> None:
    # The liveness check's answer is garbage (read in one pass: MalformedAnswer): the kept
    # connection is dropped and the call goes on, on a new one, like a dead one's.
    async with users_relayed(shared) as (relay, users):
        relay.garble()
        assert await users.read() == healthy("users")
    assert len(relay.flows) == 2  # one reconnect, no more


async def test_a_call_whose_connection_is_closed_under_it_fails_with_a_router_error(
    shared: Shared,
) -> None:
    # Shutdown closes the kept connection after waiting a little for the call in progress;
    # that call's next statement is a RouterError (what every caller handles), not a crash.
    link = shared.routers["orders"].link

    async def slow_body(session) -> list:
        await session.query("SELECT 1")
        await asyncio.sleep(0.5)  # between two statements when the link closes
        return await session.query("SELECT 1")

    call = asyncio.create_task(link.call("read", slow_body, 2.0))
    await asyncio.sleep(0.2)
    await link.close(wait=0.05)
    with pytest.raises(RouterError, match=r"read failed .*closed"):
        await call


async def test_a_probe_behind_another_clusters_apply_is_busy_not_unreachable(
    shared: Shared,
) -> None:
    # orders' failover apply holds the shared admin 1.2 s (ProxySQL slow to SAVE). users'
    # router probe (0.4 s interval, its wait for the admin bounded at half of it, as the
    # runtime sets it) is skipped as busy, naming what holds the admin: no error event (no
    # RouterUnreachable problem); once the apply is done it reads users' rows again.
    orders = shared.routers["orders"]
    users = shared.routers["users"]
    users.busy_after = 0.2
    saving = asyncio.Event()

    async def slow_save(sql: str, previous: str | None) -> None:
        if sql == SAVE_TO_DISK:
            saving.set()
            await asyncio.sleep(1.2)

    shared.tap.hooks.append(slow_save)
    events: list[Event] = []
    probe = RouterProbe(users, interval=0.4, timeout=0.4, emit=events.append)
    apply = asyncio.create_task(orders.apply(failed_over("orders", 2)))
    await asyncio.wait_for(saving.wait(), 5)
    looping = asyncio.create_task(probe.run())
    try:
        assert await apply is True
        await asyncio.sleep(0.5)  # a round after the apply
    finally:
        looping.cancel()
        await asyncio.gather(looping, return_exceptions=True)
    assert probe.skipped >= 1
    assert all(isinstance(e, RouterProbeResult) and e.ok for e in events), events
    assert events and events[-1].membership == healthy("users")
    assert probe.busy is None  # the last read ran
    skipped = await _skipped_probe(shared, orders, users)
    assert "skipped: the admin is busy with cluster orders's apply" in skipped


async def _skipped_probe(shared: Shared, orders: ProxySQLRouter, users: ProxySQLRouter) -> str:
    """What a probe of ``users`` reports while ``orders`` applies (its SAVE held 1 s)."""
    holding = asyncio.Event()

    async def hold(sql: str, previous: str | None) -> None:
        if sql == SAVE_TO_DISK:
            holding.set()
            await asyncio.sleep(1.0)

    shared.tap.hooks[:] = [hold]
    probe = RouterProbe(users, interval=0.4, timeout=0.4, emit=lambda e: None)
    apply = asyncio.create_task(orders.apply(failed_over("orders", 3)))
    await asyncio.wait_for(holding.wait(), 5)
    assert await probe.probe() is None
    await apply
    assert probe.busy is not None
    return probe.busy


async def test_the_router_lines_are_json_and_name_their_cluster(shared: Shared) -> None:
    # Both clusters' applies (together), and a probe skipped while another call holds the
    # admin: each line is one JSON record of the cluster whose call it was.
    capture = LogCapture()
    log = JsonLog(None, stream=capture)
    for name, router in shared.routers.items():
        router.lines = log.for_cluster(name)
    await asyncio.gather(
        shared.routers["orders"].apply(failed_over("orders", 2)),
        shared.routers["users"].apply(failed_over("users", 3)),
    )
    statements = capture.of("router_statement")
    writes = [r for r in statements if WRITE.match(r["sql"])]
    assert writes and all(r["cluster"] == cluster_of_write(r["sql"]) for r in writes), writes
    loads = [r["cluster"] for r in statements if r["sql"] == LOAD_TO_RUNTIME]
    assert set(loads) == {"orders", "users"}
    users = shared.routers["users"]
    users.busy_after = 0.0  # the probe of users while orders holds the admin: busy, named
    hold = asyncio.Event()
    holding = asyncio.create_task(
        shared.routers["orders"].link.call("apply", lambda s: hold.wait(), 5.0, by="cluster x")
    )
    await asyncio.sleep(0.1)
    with pytest.raises(RouterBusy):
        await users.probe()
    hold.set()
    await holding
    (busy,) = capture.of("router_busy")
    assert busy["cluster"] == "users" and "busy with cluster x's apply" in busy["reason"]
    assert busy["level"] == "debug"


async def test_calls_cancelled_on_the_shared_link_leave_it_free_for_the_others(
    shared: Shared,
) -> None:
    # A call of orders hangs in the middle of a statement (its flow silently dead) and is
    # cancelled (a failover preempted, a shutdown) while users' apply and a read of orders
    # wait for the lock; the read is cancelled too. The lock is free, no call is counted, the
    # kept connection (cut mid-statement) was dropped, and users' apply runs at once on a new
    # connection, within a fraction of its own 5 s.
    async with relayed(shared) as (relay, links):
        orders, users = (
            ProxySQLRouter(
                shared.settings(name, port=relay.port),
                NODES[name],
                RouterSettings(kind="proxysql"),
                link=links.get(shared.settings(name, port=relay.port)),
                cluster=name,
            )
            for name in ("orders", "users")
        )
        link = orders.link
        hanging = asyncio.Event()

        async def hang(session) -> None:
            await session.query("SELECT 1")
            relay.blackhole()
            hanging.set()
            await session.query("SELECT 1")  # never answered

        cut = asyncio.create_task(link.call("apply", hang, 5.0, by="cluster orders"))
        await asyncio.wait_for(hanging.wait(), 5)
        waiting_apply = asyncio.create_task(users.apply(failed_over("users", 3)))
        waiting_read = asyncio.create_task(orders.read())
        await asyncio.sleep(0.1)
        assert link.calls == 3
        waiting_read.cancel()
        cut.cancel()
        started = time.monotonic()
        assert await waiting_apply is True
        elapsed = time.monotonic() - started
        for task in (cut, waiting_read):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert link.calls == 0 and not link.lock.locked() and link.holder is None
        assert await users.read() == failed_over("users", 3)
        assert await orders.read() == healthy("orders")
    assert elapsed < 1.0, elapsed  # no wait for the cut call's time, no check of a dead flow
    assert len(relay.flows) == 2  # the cut connection dropped, one new one


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "::1", "::ffff:127.0.0.1", "127.0.0.2"])
def test_check_config_and_the_links_agree_on_what_is_one_admin(host: str) -> None:
    # Two clusters naming the admin 127.0.0.1:6032 and host:6032 with the same writer
    # hostgroup: check-config refuses exactly when the process would give them one link.
    from hacontrol.settings_clusters import cross_problems
    from hacontrol.settings_model import Settings

    def cluster(name: str, admin_host: str, base: int) -> Settings:
        nodes = [
            {"name": f"{name}{k}", "host": f"127.0.{base}.{k}", "port": 3306} for k in (1, 2, 3)
        ]
        proxysql = {"host": admin_host, "port": 6032, "password": "admin-secret"}
        return Settings(
            cluster={"name": name},
            nodes=nodes,
            mysql={"password": "secret-one", "replication_password": "secret-two"},
            router={"kind": "proxysql", "proxysql": {**proxysql, **HOSTGROUPS["orders"]}},
        )

    first, second = cluster("a", "127.0.0.1", 1), cluster("b", host, 2)
    refused = [p for p in cross_problems([("a", first), ("b", second)]) if "hostgroup 10" in p]
    links = AdminLinks()
    one_link = links.get(first.router.proxysql) is links.get(second.router.proxysql)
    assert bool(refused) == one_link == (host != "127.0.0.2")


async def test_a_cluster_keeps_its_rows_on_the_link_until_its_fresh_router_takes_them() -> None:
    # A router closed on a shared link (its cluster refused at start-up, crashed, restarting)
    # leaves its rows registered: the other clusters' check before each LOAD still covers
    # them. The same cluster's fresh router takes their place; another cluster may not.
    link = AdminLinks().get(ProxySQLSettings(host="127.0.0.1", port=6032, password="x"))
    settings = {
        name: ProxySQLSettings(host="127.0.0.1", port=6032, password="x", **HOSTGROUPS[name])
        for name in HOSTGROUPS
    }
    old = ProxySQLRouter(settings["orders"], NODES["orders"], link=link, cluster="orders")
    ProxySQLRouter(settings["users"], NODES["users"], link=link, cluster="users")
    await old.close()
    assert link.layouts == [old.layout, link.layouts[1]] and link.owners[10] == "cluster orders"
    fresh = ProxySQLRouter(settings["orders"], NODES["orders"], link=link, cluster="orders")
    again = ProxySQLRouter(settings["orders"], NODES["orders"], link=link, cluster="orders")
    assert len(link.layouts) == 2 and link.layouts[-1] is again.layout
    assert not any(layout is fresh.layout or layout is old.layout for layout in link.layouts)
    with pytest.raises(RouterError, match=r"\[10, 20, 30, 40\] managed for two clusters"):
        ProxySQLRouter(settings["orders"], NODES["orders"], link=link, cluster="billing")
    with pytest.raises(RouterError, match="managed for two clusters"):
        ProxySQLRouter(settings["orders"], NODES["orders"], link=link)  # unnamed: never a match
    assert sorted(link.owners.values()) == ["cluster orders", "cluster users"]
