"""ProxySQL router: pure row/statement logic, then the router against a real ProxySQL.

The integration tests drive ``ProxySQLRouter`` against a real ``proxysql`` (skipped, with how to
get one, when none is on PATH) through ``AdminTap``, which records every statement and the
runtime after each one, and lets a test act between two statements: an operator writing at the
worst moment, a crash or a freeze in the middle of an apply. That ProxySQL runs without its
monitor (the servers here are names, not databases); the monitor's own behaviour is shown
against the sandbox in tests/test_proxysql_live.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence

import aiomysql
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacontrol.actions.proxysql import (
    LOAD_TO_RUNTIME,
    SAVE_TO_DISK,
    Hostgroups,
    Layout,
    ProxySQLRouter,
    ReplicationHostgroup,
    ServerRow,
    cluster_sync_warning,
    conflict_warnings,
    delete_sql,
    differences,
    hidden_problem,
    insert_sql,
    membership_of,
    plan_drain,
    plan_statements,
    set_online_sql,
    sql_literal,
)
from hacontrol.routing import Membership, RouterError
from hacontrol.settings import NodeSettings, ProxySQLSettings, RouterSettings
from tests.proxysql_real import AdminTap, RealProxySQL, pair_sql, runtime_rows, writers_in
from tests.proxysql_real import Row as SeedRow

HOSTS = {"node1": "db1", "node2": "db2", "node3": "db3", "node4": "db'4", "node5": "db\\5"}
NODES = tuple(NodeSettings(name=name, host=host, port=3306) for name, host in HOSTS.items())
LAYOUT = Layout.of(Hostgroups(), NODES)
WRITES = ("INSERT", "DELETE", "UPDATE", "REPLACE", "LOAD", "SAVE")

# Rows the controller must never touch: another hostgroup, a managed server in an unmanaged
# hostgroup, an unmanaged server in the writer and reader hostgroups, another port of db1.
UNMANAGED = (
    SeedRow(50, "db1", 3306, weight=3, comment="analytics"),
    SeedRow(10, "legacy", 3306, max_connections=5, comment="not ours"),
    SeedRow(20, "reporting", 3306, weight=9),
    SeedRow(20, "db1", 3307),
)


def row(hg: int, node: str, status: str = "ONLINE", **kw: object) -> ServerRow:
    return ServerRow(hg, HOSTS[node], 3306, status=status, **kw)  # type: ignore[arg-type]


def seed(hg: int, node: str, **kw: object) -> SeedRow:
    return SeedRow(hg, HOSTS[node], 3306, **kw)  # type: ignore[arg-type]


def m(
    writers: Iterable[str] = (),
    readers: Iterable[str] = (),
    broken: Iterable[str] = (),
    hidden: Iterable[str] = (),
) -> Membership:
    return Membership.of(writers, readers, broken, hidden)


# --- pure: values -------------------------------------------------------------------------------


def test_sql_literal_is_sqlite_quoting() -> None:
    assert sql_literal(10) == "10"
    assert sql_literal("db1") == "'db1'"
    assert sql_literal("it's") == "'it''s'"
    assert sql_literal("a\\b") == "'a\\b'"  # a backslash is a plain character in SQLite
    with pytest.raises(ValueError, match="NUL"):
        sql_literal("a\x00b")
    with pytest.raises(TypeError):
        sql_literal(True)


def test_rows_from_admin_strings_are_typed() -> None:
    admin = {
        "hostgroup_id": "20",
        "hostname": "db2",
        "port": "3306",
        "gtid_port": "0",
        "status": "shunned",
        "weight": "7",
        "compression": "0",
        "max_connections": "100",
        "max_replication_lag": "10",
        "use_ssl": "1",
        "max_latency_ms": "0",
        "comment": "",
    }
    assert ServerRow.from_admin(admin) == ServerRow(
        20, "db2", 3306, status="SHUNNED", weight=7, max_connections=100,
        max_replication_lag=10, use_ssl=1,
    )  # fmt: skip
    with pytest.raises(RouterError, match="unexpected mysql_servers row"):
        ServerRow.from_admin({**admin, "port": "x"})
    pair = {"writer_hostgroup": "10", "reader_hostgroup": "20", "check_type": "read_only"}
    assert ReplicationHostgroup.from_admin({**pair, "comment": None}) == ReplicationHostgroup(
        10, 20
    )


def test_membership_reads_routing_writers_and_readers_only() -> None:
    rows = [
        row(10, "node1"),
        row(20, "node1"),
        row(20, "node2", "SHUNNED"),  # ProxySQL's health opinion: it routes there again by itself
        row(20, "node3", "OFFLINE_SOFT"),  # drained: no new traffic
        row(30, "node4", "OFFLINE_HARD"),  # broken and hidden count with any status
        row(40, "node5", "SHUNNED"),
        ServerRow(10, "legacy", 3306),  # not a managed node
        ServerRow(20, "db2", 3307),  # managed host, other port
        ServerRow(50, "db3", 3306),  # not a managed hostgroup
        ServerRow(10, "DB2", 3306),  # hostnames match exactly
    ]
    assert membership_of(rows, LAYOUT) == m(["node1"], ["node1", "node2"], ["node4"], ["node5"])
    shunned_writer = [row(10, "node2", "SHUNNED"), row(10, "node3", "OFFLINE_HARD")]
    assert membership_of(shunned_writer, LAYOUT) == m(["node2"])


def test_hostgroup_numbers_come_from_settings() -> None:
    layout = Layout.of(
        Hostgroups.from_settings(
            ProxySQLSettings(
                writer_hostgroup=1, reader_hostgroup=2, broken_hostgroup=3, hidden_hostgroup=4
            )
        ),
        NODES,
    )
    rows = [row(1, "node1"), row(2, "node2"), row(3, "node3"), row(4, "node4"), row(10, "node5")]
    assert membership_of(rows, layout) == m(["node1"], ["node2"], ["node3"], ["node4"])


def test_differences_name_node_role_and_status() -> None:
    rows = [row(10, "node1"), row(20, "node2", "OFFLINE_SOFT"), row(30, "node3")]
    assert differences(rows, m(["node2"], ["node2"]), LAYOUT) == (
        "node2 missing from writer hostgroup 10",
        "node3 still in broken hostgroup 30",
        "node1 still in writer hostgroup 10",
        "node2 is OFFLINE_SOFT in reader hostgroup 20",
    )
    assert differences(rows, m(["node1"], [], ["node3"]), LAYOUT) == (
        "node2 still in reader hostgroup 20",
    )
    # SHUNNED routes; an unwanted OFFLINE_HARD row is ProxySQL's leftover of a removed server.
    runtime = [row(10, "node1", "OFFLINE_HARD"), row(10, "node2", "SHUNNED"), row(20, "node2")]
    assert differences(runtime, m(["node2"], ["node2"]), LAYOUT) == ()


def test_hidden_problem_refuses_any_change_of_hostgroup_40() -> None:
    config = runtime = [row(10, "node1"), row(40, "node4")]
    assert hidden_problem(m(["node1"], hidden=["node4"]), config, runtime, LAYOUT) is None
    unhide = hidden_problem(m(["node1"], ["node4"]), config, runtime, LAYOUT)
    assert unhide is not None and "desired [], mysql_servers has ['node4']" in unhide
    assert hidden_problem(m(["node1"], hidden=["node4", "node5"]), config, runtime, LAYOUT)
    # An operator's edit of hostgroup 40 waiting for LOAD: the controller does not publish it.
    pending = hidden_problem(m(["node1"], hidden=["node4"]), [row(10, "node1")], runtime, LAYOUT)
    assert pending is not None and "waiting for LOAD MYSQL SERVERS TO RUNTIME" in pending


# --- pure: statements ---------------------------------------------------------------------------


def test_statement_texts_name_hostgroup_host_and_port() -> None:
    target = ServerRow(20, "db'4", 3306, weight=5, comment="x")
    assert delete_sql(target) == (
        "DELETE FROM mysql_servers WHERE hostgroup_id = 20 AND hostname = 'db''4' AND port = 3306"
    )
    assert set_online_sql(target) == (
        "UPDATE mysql_servers SET status = 'ONLINE' "
        "WHERE hostgroup_id = 20 AND hostname = 'db''4' AND port = 3306"
    )
    assert insert_sql(target) == (
        "INSERT INTO mysql_servers (hostgroup_id, hostname, port, gtid_port, status, weight, "
        "compression, max_connections, max_replication_lag, use_ssl, max_latency_ms, comment) "
        "VALUES (20, 'db''4', 3306, 0, 'ONLINE', 5, 0, 1000, 0, 0, 0, 'x')"
    )


def test_plan_is_empty_when_config_runtime_and_disk_match() -> None:
    rows = [row(10, "node1"), row(20, "node1"), row(20, "node2"), row(30, "node3")]
    assert (
        plan_statements(m(["node1"], ["node1", "node2"], ["node3"]), rows, rows, rows, LAYOUT) == ()
    )


def test_writer_change_removes_and_loads_the_old_writer_first() -> None:
    rows = [row(10, "node1"), row(20, "node1"), row(20, "node2")]
    plan = plan_statements(m(["node2"], ["node2"], ["node1"]), rows, rows, rows, LAYOUT)
    assert plan == (
        delete_sql(row(10, "node1")),
        LOAD_TO_RUNTIME,
        insert_sql(row(10, "node2")),
        insert_sql(row(30, "node1")),
        delete_sql(row(20, "node1")),
        LOAD_TO_RUNTIME,
        SAVE_TO_DISK,
    )


def test_writer_kept_changes_are_one_load() -> None:
    rows = [row(10, "node1"), row(20, "node2"), row(20, "node3")]
    plan = plan_statements(m(["node1"], ["node1", "node2"], ["node3"]), rows, rows, rows, LAYOUT)
    assert plan == (
        insert_sql(row(20, "node1")),
        insert_sql(row(30, "node3")),
        delete_sql(row(20, "node3")),
        LOAD_TO_RUNTIME,
        SAVE_TO_DISK,
    )


def test_a_writer_still_in_runtime_is_loaded_away_before_the_new_one() -> None:
    # Someone deleted node1's writer row without LOAD: the runtime still routes writes to it.
    config = [row(20, "node2")]
    runtime = [row(10, "node1"), row(20, "node2")]
    plan = plan_statements(m(["node2"], ["node2"]), config, runtime, runtime, LAYOUT)
    assert plan == (
        LOAD_TO_RUNTIME,
        insert_sql(row(10, "node2")),
        LOAD_TO_RUNTIME,
        SAVE_TO_DISK,
    )


def test_two_configured_writers_lose_the_extra_one_in_one_load() -> None:
    rows = [row(10, "node1"), row(10, "node2")]
    plan = plan_statements(m(["node2"]), rows, rows, rows, LAYOUT)
    assert plan == (delete_sql(row(10, "node1")), LOAD_TO_RUNTIME, SAVE_TO_DISK)


def test_stale_runtime_is_reloaded_and_stale_disk_resaved() -> None:
    config = [row(10, "node1"), row(20, "node2")]
    desired = m(["node1"], ["node2"])
    assert plan_statements(desired, config, [row(10, "node2")], config, LAYOUT) == (
        LOAD_TO_RUNTIME,
        SAVE_TO_DISK,
    )
    drained = [row(10, "node1", "OFFLINE_SOFT"), row(20, "node2")]
    assert plan_statements(desired, config, drained, config, LAYOUT) == (
        LOAD_TO_RUNTIME,
        SAVE_TO_DISK,
    )
    # A writer ProxySQL shuns is still the writer: no LOAD that would fight its health checks.
    shunned = [row(10, "node1", "SHUNNED"), row(20, "node2")]
    assert plan_statements(desired, config, shunned, config, LAYOUT) == ()
    assert plan_statements(desired, config, config, [row(10, "node3")], LAYOUT) == (SAVE_TO_DISK,)


def test_routed_rows_not_online_in_config_are_set_online() -> None:
    rows = [
        row(10, "node1", "OFFLINE_SOFT"),
        row(20, "node2", "OFFLINE_HARD"),
        row(30, "node3", "OFFLINE_HARD"),
    ]
    plan = plan_statements(m(["node1"], ["node2"], ["node3"]), rows, rows, rows, LAYOUT)
    assert plan == (
        set_online_sql(row(10, "node1")),
        set_online_sql(row(20, "node2")),
        LOAD_TO_RUNTIME,
        SAVE_TO_DISK,
    )  # a broken row's status is left as it is


def test_new_rows_copy_the_servers_columns_but_not_comment_or_writer_lag() -> None:
    reader = row(
        20, "node2", weight=5, max_connections=77, max_replication_lag=30, use_ssl=1, comment="keep"
    )
    rows = [row(10, "node1"), reader]
    plan = plan_statements(m(["node2"], ["node2"], ["node1"]), rows, rows, rows, LAYOUT)
    assert insert_sql(ServerRow(10, "db2", 3306, weight=5, max_connections=77, use_ssl=1)) in plan
    assert insert_sql(row(30, "node1")) in plan  # node1's writer row had the defaults
    assert not any(
        sql.startswith(("DELETE", "UPDATE")) and "hostgroup_id = 20" in sql for sql in plan
    )


def test_plan_never_writes_hidden_rows() -> None:
    rows = [row(10, "node1"), row(40, "node4"), row(20, "node4")]
    plan = plan_statements(m(["node1"], ["node1"], hidden=["node4"]), rows, rows, rows, LAYOUT)
    assert plan == (
        insert_sql(row(20, "node1")),
        delete_sql(row(20, "node4")),
        LOAD_TO_RUNTIME,
        SAVE_TO_DISK,
    )
    assert not any("hostgroup_id = 40" in sql or "VALUES (40" in sql for sql in plan)


def test_conflict_warnings() -> None:
    active, pending, other = (
        ReplicationHostgroup(10, 20),
        ReplicationHostgroup(30, 60, "super_read_only"),
        ReplicationHostgroup(50, 60),
    )
    warnings = conflict_warnings([active, other], [active, pending, other], [], LAYOUT)
    assert len(warnings) == 2
    assert warnings[0].startswith(
        "mysql_replication_hostgroups writer_hostgroup=10 reader_hostgroup=20 "
        "(check_type 'read_only', comment '') is active over hacontrol's hostgroup(s) [10, 20]"
    )
    assert "DELETE FROM mysql_replication_hostgroups WHERE writer_hostgroup=10" in warnings[0]
    assert "writer_hostgroup=30" in warnings[1] and "configured but not loaded" in warnings[1]
    assert conflict_warnings([other], [other], [row(10, "node1")], LAYOUT) == []
    unmanaged = conflict_warnings([], [], [row(10, "node1"), ServerRow(10, "legacy")], LAYOUT)
    assert unmanaged == [
        "server legacy:3306 (ONLINE) is in writer hostgroup 10 but is not a managed node: "
        "ProxySQL sends writes to it too. Move it to another hostgroup, or add it to the nodes "
        "setting"
    ]


def test_drain_sets_only_the_writer_row_offline_soft() -> None:
    config = [row(10, "node1"), row(20, "node1"), row(20, "node2")]
    assert plan_drain("node1", config, config, LAYOUT) == (
        "UPDATE mysql_servers SET status = 'OFFLINE_SOFT' "
        "WHERE hostgroup_id = 10 AND hostname = 'db1' AND port = 3306",
        LOAD_TO_RUNTIME,
    )
    soft = [row(10, "node1", "OFFLINE_SOFT"), row(20, "node1")]
    assert plan_drain("node1", soft, config, LAYOUT) == (LOAD_TO_RUNTIME,)
    assert plan_drain("node1", soft, soft, LAYOUT) == ()
    with pytest.raises(RouterError, match="cannot drain node2: it has no row in writer"):
        plan_drain("node2", config, config, LAYOUT)


def test_a_draining_old_writer_is_loaded_away_before_the_new_one() -> None:
    # The drained writer's row is gone from memory but still OFFLINE_SOFT in runtime: its
    # running transactions may still write there, so the new writer waits for its own LOAD.
    config = [row(20, "node2")]
    runtime = [row(10, "node1", "OFFLINE_SOFT"), row(20, "node2")]
    plan = plan_statements(m(["node2"], ["node2"]), config, runtime, runtime, LAYOUT)
    assert plan[:2] == (LOAD_TO_RUNTIME, insert_sql(row(10, "node2")))
    gone = [row(10, "node1", "OFFLINE_HARD"), row(20, "node2")]
    plan = plan_statements(m(["node2"], ["node2"]), config, gone, gone, LAYOUT)
    assert plan == (insert_sql(row(10, "node2")), LOAD_TO_RUNTIME, SAVE_TO_DISK)


# --- against a real ProxySQL --------------------------------------------------------------------

SEED = (
    seed(10, "node1"),
    seed(20, "node1"),
    seed(20, "node2", weight=5, max_connections=77, comment="keep me"),
    seed(20, "node3"),
    seed(40, "node5", comment="hidden by ops"),
    *UNMANAGED,
)


class Admin:
    """A real ProxySQL and the tap the router under test talks through."""

    def __init__(self, proxysql: RealProxySQL, tap: AdminTap) -> None:
        self.px = proxysql
        self.tap = tap
        self.host, self.port = tap.host, tap.port
        self.user, self.password = proxysql.user, proxysql.password
        self.routers: list[ProxySQLRouter] = []
        """Routers made for it (``make_router``): their kept connections closed at the end."""

    @property
    def statements(self) -> list[str]:
        return self.tap.statements

    async def history(self) -> list:
        await self.tap.settle()
        return self.tap.history

    async def runtime(self) -> list[tuple[int, str, int, str]]:
        return await runtime_rows(self.px)

    def after(self, previous: str, action) -> None:
        """Run ``action()`` once, right after the first statement starting with ``previous``
        was answered (before the router's next statement reaches ProxySQL)."""
        done = False

        async def hook(sql: str, before: str | None) -> None:
            nonlocal done
            if not done and before is not None and before.startswith(previous):
                done = True
                await action()

        self.tap.hooks.append(hook)


@pytest.fixture(scope="module")
def real_proxysql(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealProxySQL]:
    with RealProxySQL(tmp_path_factory.mktemp("proxysql")) as proxysql:
        yield proxysql


@contextlib.asynccontextmanager
async def tapped(proxysql: RealProxySQL, rows: Sequence[SeedRow], pairs=()):
    await asyncio.to_thread(proxysql.reset, rows, pairs)
    tap = await AdminTap(
        (proxysql.host, proxysql.port), snapshot=lambda: runtime_rows(proxysql)
    ).start()
    try:
        admin = Admin(proxysql, tap)
        yield admin
    finally:
        for router in admin.routers:
            await router.close()
        await tap.stop()


@pytest.fixture
async def proxysql(real_proxysql: RealProxySQL) -> AsyncIterator[Admin]:
    async with tapped(real_proxysql, SEED) as admin:
        yield admin


def managed_address(hg: int, hostname: str, port: int, nodes: Sequence[NodeSettings]) -> bool:
    return hg in (10, 20, 30, 40) and any(n.host == hostname and n.port == port for n in nodes)


async def admin_rows(admin: Admin, table: str) -> list[tuple[str | None, ...]]:
    conn = await aiomysql.connect(
        host=admin.px.host, port=admin.px.port, user=admin.user, password=admin.password
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"SELECT * FROM {table} ORDER BY hostgroup_id, hostname, port")
            return list(await cur.fetchall())
    finally:
        conn.close()


async def untouched_rows(
    admin: Admin, nodes: Sequence[NodeSettings] = NODES
) -> dict[str, list[tuple[str | None, ...]]]:
    """Every row that is not the controller's, as the admin port sends it, in all three layers."""
    out = {}
    for table in ("mysql_servers", "runtime_mysql_servers", "disk.mysql_servers"):
        out[table] = [
            r
            for r in await admin_rows(admin, table)
            if not managed_address(int(str(r[0])), str(r[1]), int(str(r[2])), nodes)
        ]
    return out


async def two_writer_snapshots(
    admin: Admin, nodes: Sequence[NodeSettings] = NODES
) -> list[tuple[str, list]]:
    """(statement, runtime after it) for every snapshot with more than one managed writer."""
    managed = [(n.host, n.port) for n in nodes]
    history = await admin.history()
    return [
        (statement, snapshot)
        for statement, snapshot in zip(admin.statements, history, strict=True)
        if len(writers_in(snapshot, managed)) > 1
    ]


def writes(statements: Iterable[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith(WRITES)]


def make_router(
    admin: Admin,
    nodes: Sequence[NodeSettings] = NODES,
    *,
    timeout: float = 2.0,
    **hostgroups: int,
) -> ProxySQLRouter:
    settings = ProxySQLSettings(
        host=admin.host,
        port=admin.port,
        user=admin.user,
        password=admin.password,
        timeout=timeout,
        **hostgroups,
    )
    router = ProxySQLRouter(settings, nodes, RouterSettings(kind="proxysql"))
    admin.routers.append(router)
    return router


async def test_apply_sets_exactly_the_managed_rows(proxysql: Admin) -> None:
    router = make_router(proxysql)
    before = await untouched_rows(proxysql)
    assert await router.read() == m(["node1"], ["node1", "node2", "node3"], hidden=["node5"])

    desired = m(["node2"], ["node2", "node4"], ["node1", "node3"], ["node5"])
    assert await router.apply(desired) is True
    assert await router.read() == desired
    assert await untouched_rows(proxysql) == before
    # node2's reader row stayed as it was; its new writer row copied its weight and limits.
    config = await admin_rows(proxysql, "mysql_servers")
    assert ("20", "db2", "3306", "0", "ONLINE", "5", "0", "77", "0", "0", "0", "keep me") in config
    assert ("10", "db2", "3306", "0", "ONLINE", "5", "0", "77", "0", "0", "0", "") in config
    hidden = ("40", "db\\5", "3306", "0", "ONLINE", "1", "0", "1000", "0", "0", "0")
    assert (*hidden, "hidden by ops") in config
    # The quoted hostname made it through unchanged, in every layer.
    for table in ("mysql_servers", "runtime_mysql_servers", "disk.mysql_servers"):
        assert ("20", "db'4") in [r[:2] for r in await admin_rows(proxysql, table)]
    assert await admin_rows(proxysql, "disk.mysql_servers") == config
    assert writes(proxysql.statements) == router.statements_sent

    mark = len(proxysql.statements)
    assert await router.apply(desired) is False
    assert proxysql.statements[mark:] and writes(proxysql.statements[mark:]) == []
    await router.close()


async def test_writer_moves_without_ever_two_writers(proxysql: Admin) -> None:
    router = make_router(proxysql)
    for old, new in (("node1", "node2"), ("node2", "node3"), ("node3", "node1")):
        mark = len(proxysql.statements)
        others = {"node1", "node2", "node3"} - {new}
        desired = m([new], [new, *sorted(others - {old})], [old], ["node5"])
        assert await router.apply(desired) is True
        assert await router.read() == desired
        sent = writes(proxysql.statements[mark:])
        # Old writer out and loaded before the new one is inserted.
        assert sent[:3] == [
            f"DELETE FROM mysql_servers WHERE hostgroup_id = 10 AND hostname = "
            f"{sql_literal(HOSTS[old])} AND port = 3306",
            LOAD_TO_RUNTIME,
            insert_sql(ServerRow(10, HOSTS[new], 3306, weight=5 if new == "node2" else 1,
                                 max_connections=77 if new == "node2" else 1000)),
        ]  # fmt: skip
    history = await proxysql.history()
    assert len(history) == len(proxysql.statements) > 0
    assert await two_writer_snapshots(proxysql) == []
    # The writer hostgroup was empty for a moment, never doubled.
    assert any(not [r for r in snap if r[0] == 10 and r[1] != "legacy"] for snap in history)


async def test_primary_is_reader_is_the_callers_choice(proxysql: Admin) -> None:
    router = make_router(proxysql)
    await router.apply(m(["node1"], ["node2", "node3"], hidden=["node5"]))
    runtime = await proxysql.runtime()
    assert (10, "db1", 3306, "ONLINE") in runtime and (20, "db1", 3306, "ONLINE") not in runtime
    await router.apply(m(["node1"], ["node1", "node2", "node3"], hidden=["node5"]))
    assert (20, "db1", 3306, "ONLINE") in await proxysql.runtime()


@pytest.mark.parametrize(
    ("desired", "reason"),
    [
        (m([], ["node1"]), "0 writers"),
        (m(["node1", "node2"], ["node1"]), "2 writers"),
        (m(["node1"], ["node1"], ["node1"]), "cannot be writer and broken"),
        (m(["node1"], ["node9"]), "unmanaged node(s) ['node9']"),
    ],
)
async def test_invalid_states_are_refused_before_anything_is_sent(
    proxysql: Admin, desired: Membership, reason: str
) -> None:
    router = make_router(proxysql)
    with pytest.raises(RouterError, match="refusing to apply ProxySQL membership") as info:
        await router.apply(desired)
    assert reason in str(info.value)
    assert proxysql.statements == [] and router.statements_sent == []


async def test_changing_who_is_hidden_is_refused(proxysql: Admin) -> None:
    router = make_router(proxysql)
    runtime = await proxysql.runtime()
    for desired in (m(["node1"], ["node1", "node5"]), m(["node1"], hidden=["node5", "node4"])):
        mark = len(proxysql.statements)
        with pytest.raises(RouterError, match="would change the hidden nodes"):
            await router.apply(desired)
        assert writes(proxysql.statements[mark:]) == []  # it read, it wrote nothing
    assert await proxysql.runtime() == runtime and router.statements_sent == []


async def test_a_shunned_writer_is_still_the_writer_and_is_left_alone(proxysql: Admin) -> None:
    # Configured SHUNNED here; the monitor's own shunning is shown against the sandbox.
    proxysql.px.admin(
        "UPDATE mysql_servers SET status = 'SHUNNED' WHERE hostgroup_id = 10",
        "LOAD MYSQL SERVERS TO RUNTIME",
    )
    router = make_router(proxysql)
    desired = m(["node1"], ["node1", "node2", "node3"], hidden=["node5"])
    assert await router.read() == desired
    assert (10, "db1", 3306, "SHUNNED") in await proxysql.runtime()
    # Memory says SHUNNED: the controller's row is set ONLINE (a configured status, not health).
    assert await router.apply(desired) is True
    assert writes(router.statements_sent)[0].startswith(
        "UPDATE mysql_servers SET status = 'ONLINE'"
    )
    assert (10, "db1", 3306, "ONLINE") in await proxysql.runtime()


async def test_unconfirmed_runtime_is_retried_then_an_error(proxysql: Admin) -> None:
    """Someone on another admin session drains node2 after every LOAD the router sends."""

    async def operator(sql: str, before: str | None) -> None:
        if before == LOAD_TO_RUNTIME:
            await asyncio.to_thread(
                proxysql.px.admin,
                "UPDATE mysql_servers SET status = 'OFFLINE_SOFT' WHERE hostgroup_id = 10",
                LOAD_TO_RUNTIME,
            )

    proxysql.tap.hooks.append(operator)
    router = make_router(proxysql)
    with pytest.raises(RouterError) as info:
        await router.apply(m(["node2"], ["node1"], hidden=["node5"]))
    assert str(info.value) == (
        "ProxySQL did not confirm the membership after 3 attempts: "
        "node2 is OFFLINE_SOFT in writer hostgroup 10"
    )
    assert writes(router.statements_sent).count(LOAD_TO_RUNTIME) == 4  # 2 + one per retry
    assert await two_writer_snapshots(proxysql) == []


async def test_no_load_publishes_a_writer_row_someone_else_added(proxysql: Admin) -> None:
    sneak_in = "INSERT INTO mysql_servers (hostgroup_id, hostname) VALUES (10, 'db3')"
    proxysql.after(
        "INSERT INTO mysql_servers (hostgroup_id, hostname, port, gtid_port, status, weight, "
        "compression, max_connections, max_replication_lag, use_ssl, max_latency_ms, comment) "
        "VALUES (10,",
        lambda: asyncio.to_thread(proxysql.px.admin, sneak_in),
    )
    router = make_router(proxysql)
    with pytest.raises(RouterError) as info:
        await router.apply(m(["node2"], ["node2"], hidden=["node5"]))
    assert str(info.value) == (
        "refusing to LOAD MYSQL SERVERS TO RUNTIME: mysql_servers holds 2 writers "
        "['node2', 'node3'] in hostgroup 10 (changed by someone else meanwhile?)"
    )
    assert router.statements_sent.count(LOAD_TO_RUNTIME) == 1  # the second LOAD was not sent
    assert await two_writer_snapshots(proxysql) == []
    assert writers_in(await proxysql.runtime(), [(n.host, n.port) for n in NODES]) == []


async def test_proxysql_killed_during_apply_then_restarted_with_stale_disk(
    proxysql: Admin,
) -> None:
    # An older SAVE left node1 the writer and node2 broken on disk.
    stale = [seed(10, "node1"), seed(30, "node2"), seed(40, "node5"), *UNMANAGED]
    proxysql.px.set_disk_rows(stale)
    router = make_router(proxysql, timeout=2.0)
    desired = m(["node2"], ["node2", "node3"], ["node1"], ["node5"])
    killed_at: list[float] = []

    async def kill() -> None:
        killed_at.append(time.monotonic())
        await proxysql.px.akill()

    proxysql.after("DELETE FROM mysql_servers WHERE hostgroup_id = 10", kill)  # before its LOAD
    with pytest.raises(RouterError, match=r"ProxySQL admin 127\.0\.0\.1:\d+: apply failed at"):
        await router.apply(desired)
    assert time.monotonic() - killed_at[0] < 1.0

    # It comes back (without --initial) with what the older SAVE left on disk.
    await proxysql.px.astart()
    proxysql.tap.hooks.clear()
    mark = len(proxysql.statements)
    assert await router.read() == m(["node1"], [], ["node2"], ["node5"])
    assert await router.apply(desired) is True
    assert await router.read() == desired
    assert await two_writer_snapshots(proxysql) == []
    disk = [r[:3] for r in await admin_rows(proxysql, "disk.mysql_servers")]
    assert [r for r in disk if r[0] in ("10", "30")] == [
        ("10", "db2", "3306"),
        ("10", "legacy", "3306"),
        ("30", "db1", "3306"),
    ]
    assert ("20", "db2", "3306") in disk and ("20", "db3", "3306") in disk
    assert SAVE_TO_DISK in proxysql.statements[mark:]


async def test_frozen_proxysql_fails_within_the_timeout(proxysql: Admin) -> None:
    router = make_router(proxysql, timeout=0.4)
    proxysql.px.freeze()
    try:
        for call in (
            router.read,
            lambda: router.apply(m(["node2"], hidden=["node5"])),
            router.conflicts,
        ):
            started = time.monotonic()
            with pytest.raises(RouterError, match=r"timed out after 0.4 s"):
                await call()
            assert time.monotonic() - started < 0.7
    finally:
        proxysql.px.thaw()
    await asyncio.sleep(0.5)  # the abandoned connections are served now, and closed
    assert writes(proxysql.statements) == []
    assert await router.read() == m(["node1"], ["node1", "node2", "node3"], hidden=["node5"])


async def test_unreachable_or_refused_proxysql_is_a_router_error(proxysql: Admin) -> None:
    router = make_router(proxysql)
    wrong = ProxySQLRouter(
        ProxySQLSettings(host=proxysql.px.host, port=proxysql.px.port, password="nope"), NODES
    )
    with pytest.raises(RouterError, match="read failed at connect: 1045: ProxySQL Error: Access"):
        await wrong.read()
    await proxysql.px.akill()
    with pytest.raises(RouterError, match="read failed at connect: 2013"):
        await router.read()  # the tap accepts, then finds ProxySQL gone
    direct = ProxySQLRouter(
        ProxySQLSettings(host=proxysql.px.host, port=proxysql.px.port, password="x"), NODES
    )
    with pytest.raises(RouterError, match="read failed at connect: 2003"):
        await direct.read()
    with pytest.raises(RouterError, match="conflicts failed at connect"):
        await router.conflicts()
    # Unreachable at start-up is no refusal: the router probe reports it, routing repairs
    # when it answers (a refusal would stop every cluster of the process).
    await router.check_startup()


async def test_other_hostgroup_numbers_are_honoured(real_proxysql: RealProxySQL) -> None:
    rows = [seed(11, "node1"), seed(10, "node2"), seed(44, "node3")]
    async with tapped(real_proxysql, rows) as admin:
        router = make_router(
            admin,
            writer_hostgroup=11,
            reader_hostgroup=21,
            broken_hostgroup=31,
            hidden_hostgroup=44,
        )
        assert await router.read() == m(["node1"], hidden=["node3"])
        await router.apply(m(["node1"], ["node1", "node2"], hidden=["node3"]))
        assert sorted(await admin.runtime()) == [
            (10, "db2", 3306, "ONLINE"),  # hostgroup 10 is not managed here
            (11, "db1", 3306, "ONLINE"),
            (21, "db1", 3306, "ONLINE"),
            (21, "db2", 3306, "ONLINE"),
            (44, "db3", 3306, "ONLINE"),
        ]


@pytest.mark.parametrize(
    ("pair", "expected"),
    [((10, 20), ["writer_hostgroup=10 reader_hostgroup=20"]), ((50, 60), []), ((60, 30), ["[30]"])],
)
async def test_replication_hostgroups_over_managed_ones_block_startup_and_apply(
    real_proxysql: RealProxySQL, pair: tuple[int, int], expected: list[str]
) -> None:
    async with tapped(
        real_proxysql, [seed(10, "node1"), seed(50, "node2")], [pair_sql(*pair)]
    ) as admin:
        router = make_router(admin)
        warnings = await router.conflicts()
        assert len(warnings) == len(expected)
        for warning, text in zip(warnings, expected, strict=True):
            assert text in warning and "fights hacontrol" in warning
        desired = m(["node1"], ["node1"])
        if expected:
            with pytest.raises(RouterError, match="refusing to start until fixed") as info:
                await router.check_startup()
            assert expected[0] in str(info.value)
            with pytest.raises(RouterError, match="while ProxySQL's monitor routes"):
                await router.apply(desired)
            assert writes(admin.statements) == []
        else:
            await router.check_startup()
            assert await router.apply(desired) is True


def test_cluster_sync_of_mysql_servers_is_a_conflict_naming_the_variable() -> None:
    assert cluster_sync_warning([], 3) is None  # no peer: no ProxySQL Cluster
    assert cluster_sync_warning(["px2:6032"], 0) is None  # peers, but servers not synced
    warning = cluster_sync_warning(["px3:6032", "px2:6032"], 3)
    assert warning is not None
    assert "admin-cluster_mysql_servers_diffs_before_sync = 3" in warning
    assert "px2:6032, px3:6032" in warning and "SET admin-cluster_mysql_servers" in warning


async def test_proxysql_cluster_syncing_mysql_servers_is_refused_at_start_up(
    real_proxysql: RealProxySQL,
) -> None:
    """A peer in proxysql_servers with the default diffs_before_sync (3): refused, the variable
    named; with the sync of mysql_servers off (0): accepted."""
    variable = "admin-cluster_mysql_servers_diffs_before_sync"
    async with tapped(real_proxysql, [seed(10, "node1"), seed(20, "node1")]) as admin:
        router = make_router(admin)
        await asyncio.to_thread(
            real_proxysql.admin,
            "INSERT INTO proxysql_servers (hostname, port) VALUES ('127.0.0.1', 1)",
            "LOAD PROXYSQL SERVERS TO RUNTIME",
        )
        try:
            with pytest.raises(RouterError, match="refusing to start until fixed") as info:
                await router.check_startup()
            assert f"{variable} = 3" in str(info.value) and "127.0.0.1:1" in str(info.value)
            await asyncio.to_thread(
                real_proxysql.admin,
                f"SET {variable} = 0",
                "LOAD ADMIN VARIABLES TO RUNTIME",
            )
            await router.check_startup()
            assert not [w for w in await router.conflicts() if variable in w]
        finally:
            await asyncio.to_thread(
                real_proxysql.admin,
                "DELETE FROM proxysql_servers",
                "LOAD PROXYSQL SERVERS TO RUNTIME",
                f"SET {variable} = 3",
                "LOAD ADMIN VARIABLES TO RUNTIME",
            )


async def test_unmanaged_writer_is_a_conflict(proxysql: Admin) -> None:
    warnings = await make_router(proxysql).conflicts()
    assert warnings == [
        "server legacy:3306 (ONLINE) is in writer hostgroup 10 but is not a managed node: "
        "ProxySQL sends writes to it too. Move it to another hostgroup, or add it to the nodes "
        "setting"
    ]


async def test_drain_of_an_idle_writer_and_its_undoing(proxysql: Admin) -> None:
    router = make_router(proxysql)
    drained = await router.drain("node1", timeout=2.0)
    assert drained.node == "node1" and drained.idle and drained.in_use == 0
    assert (10, "db1", 3306, "OFFLINE_SOFT") in await proxysql.runtime()
    assert (20, "db1", 3306, "ONLINE") in await proxysql.runtime()  # reads go on
    assert await router.read() == m([], ["node1", "node2", "node3"], hidden=["node5"])
    assert SAVE_TO_DISK not in router.statements_sent
    assert (await router.drain("node1", timeout=1.0)).idle  # again: nothing more is sent
    assert writes(router.statements_sent).count(LOAD_TO_RUNTIME) == 1
    with pytest.raises(RouterError, match="cannot drain node2: it has no row in writer"):
        await router.drain("node2", timeout=1.0)
    back = m(["node1"], ["node1", "node2", "node3"], hidden=["node5"])
    assert await router.apply(back) is True
    assert await router.read() == back


# --- property: any sequence of desired states --------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[tuple[str, ...], list[SeedRow], list[Membership]]:
    names = tuple(HOSTS)[: draw(st.integers(3, 5))]
    hidden = draw(st.sets(st.sampled_from(names), max_size=1))
    visible = [n for n in names if n not in hidden]
    statuses = st.sampled_from(("ONLINE", "ONLINE", "SHUNNED", "OFFLINE_SOFT"))
    # Any starting rows with at most one writer row: leftovers, odd statuses, a hidden node
    # that also has other rows.
    first_writer = draw(st.sampled_from([None, *names]))
    initial = [seed(40, n) for n in hidden]
    if first_writer is not None:
        initial.append(seed(10, first_writer, status=draw(statuses)))
    for node in names:
        for hg in draw(st.sets(st.sampled_from((20, 30)))):
            initial.append(seed(hg, node, status=draw(statuses), weight=draw(st.integers(0, 9))))

    def desired(draw_: st.DrawFn) -> Membership:
        writer = draw_(st.sampled_from(visible))
        readers = draw_(st.sets(st.sampled_from(visible)))
        broken = draw_(st.sets(st.sampled_from([n for n in visible if n != writer])))
        return m([writer], readers, broken - readers, hidden)

    states = [desired(draw) for _ in range(draw(st.integers(1, 5)))]
    return names, initial, states


async def run_scenario(
    proxysql: RealProxySQL,
    names: Sequence[str],
    initial: Sequence[SeedRow],
    states: Sequence[Membership],
) -> None:
    nodes = [n for n in NODES if n.name in names]
    async with tapped(proxysql, [*initial, *UNMANAGED]) as admin:
        router = make_router(admin, nodes)
        before = await untouched_rows(admin, nodes)
        for desired in states:
            await router.apply(desired)
            assert await router.read() == desired
            assert await router.apply(desired) is False
        assert await two_writer_snapshots(admin, nodes) == []
        assert await untouched_rows(admin, nodes) == before


@settings(max_examples=30, deadline=None)
@given(scenario=scenarios())
def test_any_sequence_of_states_never_shows_two_writers(
    real_proxysql: RealProxySQL,
    scenario: tuple[tuple[str, ...], list[SeedRow], list[Membership]],
) -> None:
    names, initial, states = scenario
    asyncio.run(run_scenario(real_proxysql, names, initial, states))
