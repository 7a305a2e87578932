"""ProxySQL router: pure row/statement logic, then the router against the admin double.

The integration tests drive ``ProxySQLRouter`` over real MySQL-protocol connections to
``tests.proxysql_double.ProxySQLAdminDouble`` (see tests/README.md for what the double does
not emulate), started in the test's own event loop.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path

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
    conflict_warnings,
    delete_sql,
    differences,
    hidden_problem,
    insert_sql,
    membership_of,
    plan_statements,
    set_online_sql,
    sql_literal,
)
from hacontrol.routing import Membership, RouterError
from hacontrol.settings import NodeSettings, ProxySQLSettings, RouterSettings
from tests.proxysql_double import ProxySQLAdminDouble, ReplicationHostgroupRow
from tests.proxysql_double import ServerRow as SeedRow

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


def test_membership_reads_online_writers_and_readers_only() -> None:
    rows = [
        row(10, "node1"),
        row(20, "node1"),
        row(20, "node2", "SHUNNED"),  # the monitor cut it off: not a reader, not broken either
        row(20, "node3", "OFFLINE_SOFT"),
        row(30, "node4", "OFFLINE_HARD"),  # broken and hidden count with any status
        row(40, "node5", "SHUNNED"),
        ServerRow(10, "legacy", 3306),  # not a managed node
        ServerRow(20, "db2", 3307),  # managed host, other port
        ServerRow(50, "db3", 3306),  # not a managed hostgroup
        ServerRow(10, "DB2", 3306),  # hostnames match exactly
    ]
    assert membership_of(rows, LAYOUT) == m(["node1"], ["node1"], ["node4"], ["node5"])


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
    rows = [row(10, "node1"), row(20, "node2", "SHUNNED"), row(30, "node3")]
    assert differences(rows, m(["node2"], ["node2"]), LAYOUT) == (
        "node2 missing from writer hostgroup 10",
        "node3 still in broken hostgroup 30",
        "node1 still in writer hostgroup 10",
        "node2 is SHUNNED in reader hostgroup 20",
    )
    assert differences(rows, m(["node1"], [], ["node3"]), LAYOUT) == (
        "node2 still in reader hostgroup 20",
    )


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
    shunned = [row(10, "node1", "SHUNNED"), row(20, "node2")]
    assert plan_statements(desired, config, shunned, config, LAYOUT) == (
        LOAD_TO_RUNTIME,
        SAVE_TO_DISK,
    )
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


# --- against the admin double -------------------------------------------------------------------


def managed_address(hg: int, hostname: str, port: int, nodes: Sequence[NodeSettings]) -> bool:
    return hg in (10, 20, 30, 40) and any(n.host == hostname and n.port == port for n in nodes)


async def admin_rows(double: ProxySQLAdminDouble, table: str) -> list[tuple[str | None, ...]]:
    conn = await aiomysql.connect(
        host=double.host, port=double.port, user=double.user, password=double.password
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"SELECT * FROM {table} ORDER BY hostgroup_id, hostname, port")
            return list(await cur.fetchall())
    finally:
        conn.close()


async def untouched_rows(
    double: ProxySQLAdminDouble, nodes: Sequence[NodeSettings] = NODES
) -> dict[str, list[tuple[str | None, ...]]]:
    """Every row that is not the controller's, as the admin port sends it, in all three layers."""
    out = {}
    for table in ("mysql_servers", "runtime_mysql_servers", "disk.mysql_servers"):
        out[table] = [
            r
            for r in await admin_rows(double, table)
            if not managed_address(int(str(r[0])), str(r[1]), int(str(r[2])), nodes)
        ]
    return out


def two_writer_snapshots(
    double: ProxySQLAdminDouble, nodes: Sequence[NodeSettings] = NODES
) -> list[tuple[str, list]]:
    """(statement, snapshot) for every runtime snapshot with more than one managed writer."""
    bad = []
    for statement, snapshot in zip(double.statements, double.runtime_history, strict=True):
        writers = [
            (h, p)
            for hg, h, p, status in snapshot
            if hg == 10 and status == "ONLINE" and managed_address(hg, h, p, nodes)
        ]
        if len(writers) > 1:
            bad.append((statement, snapshot))
    return bad


def writes(statements: Iterable[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith(WRITES)]


def make_router(
    double: ProxySQLAdminDouble,
    nodes: Sequence[NodeSettings] = NODES,
    *,
    timeout: float = 2.0,
    **hostgroups: int,
) -> ProxySQLRouter:
    settings = ProxySQLSettings(
        host=double.host,
        port=double.port,
        user=double.user,
        password=double.password,
        timeout=timeout,
        **hostgroups,
    )
    return ProxySQLRouter(settings, nodes, RouterSettings(kind="proxysql"))


@pytest.fixture
async def proxysql(tmp_path: Path) -> AsyncIterator[ProxySQLAdminDouble]:
    double = ProxySQLAdminDouble(
        datadir=tmp_path / "proxysql",
        seed_servers=[
            seed(10, "node1"),
            seed(20, "node1"),
            seed(20, "node2", weight=5, max_connections=77, comment="keep me"),
            seed(20, "node3"),
            seed(40, "node5", comment="hidden by ops"),
            *UNMANAGED,
        ],
    )
    await double.start()
    yield double
    await double.stop()


async def test_apply_sets_exactly_the_managed_rows(proxysql: ProxySQLAdminDouble) -> None:
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
    hidden = (
        "40",
        "db\\5",
        "3306",
        "0",
        "ONLINE",
        "1",
        "0",
        "1000",
        "0",
        "0",
        "0",
        "hidden by ops",
    )
    assert hidden in config
    # The quoted hostname made it through unchanged, in every layer.
    for table in ("mysql_servers", "runtime_mysql_servers", "disk.mysql_servers"):
        assert ("20", "db'4") in [r[:2] for r in await admin_rows(proxysql, table)]
    assert await admin_rows(proxysql, "disk.mysql_servers") == config
    assert writes(proxysql.statements) == router.statements_sent

    mark = len(proxysql.statements)
    assert await router.apply(desired) is False
    assert proxysql.statements[mark:] and writes(proxysql.statements[mark:]) == []
    await router.close()


async def test_writer_moves_without_ever_two_writers(proxysql: ProxySQLAdminDouble) -> None:
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
    assert len(proxysql.runtime_history) == len(proxysql.statements) > 0
    assert two_writer_snapshots(proxysql) == []
    # The writer hostgroup was empty for a moment, never doubled.
    assert any(
        not [r for r in snap if r[0] == 10 and r[1] != "legacy"]
        for snap in proxysql.runtime_history
    )


async def test_primary_is_reader_is_the_callers_choice(proxysql: ProxySQLAdminDouble) -> None:
    router = make_router(proxysql)
    await router.apply(m(["node1"], ["node2", "node3"], hidden=["node5"]))
    runtime = proxysql.runtime_snapshot()
    assert (10, "db1", 3306, "ONLINE") in runtime and (20, "db1", 3306, "ONLINE") not in runtime
    await router.apply(m(["node1"], ["node1", "node2", "node3"], hidden=["node5"]))
    assert (20, "db1", 3306, "ONLINE") in proxysql.runtime_snapshot()


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
    proxysql: ProxySQLAdminDouble, desired: Membership, reason: str
) -> None:
    router = make_router(proxysql)
    before = list(proxysql.statements)
    with pytest.raises(RouterError, match="refusing to apply ProxySQL membership") as info:
        await router.apply(desired)
    assert reason in str(info.value)
    assert proxysql.statements == before and router.statements_sent == []


async def test_changing_who_is_hidden_is_refused(proxysql: ProxySQLAdminDouble) -> None:
    router = make_router(proxysql)
    runtime = proxysql.runtime_snapshot()
    for desired in (m(["node1"], ["node1", "node5"]), m(["node1"], hidden=["node5", "node4"])):
        mark = len(proxysql.statements)
        with pytest.raises(RouterError, match="would change the hidden nodes"):
            await router.apply(desired)
        assert writes(proxysql.statements[mark:]) == []  # it read, it wrote nothing
    assert proxysql.runtime_snapshot() == runtime and router.statements_sent == []


async def test_shunned_writer_reads_as_not_routing_and_apply_reloads(
    proxysql: ProxySQLAdminDouble,
) -> None:
    router = make_router(proxysql)
    desired = m(["node1"], ["node2", "node3"], hidden=["node5"])
    await router.apply(desired)
    assert proxysql.set_runtime_status("db1", 3306, "SHUNNED") == 2  # and its hostgroup 50 row
    assert await router.read() == m([], ["node2", "node3"], hidden=["node5"])
    mark = len(proxysql.statements)
    assert await router.apply(desired) is True
    assert writes(proxysql.statements[mark:]) == [LOAD_TO_RUNTIME, SAVE_TO_DISK]
    assert await router.read() == desired


class MonitorShunningDouble(ProxySQLAdminDouble):
    """Plays a ProxySQL monitor that cannot reach one backend: after every statement that
    backend is SHUNNED again (a real ProxySQL keeps a shunned server shunned across LOAD)."""

    def __init__(self, *, shunned: tuple[str, int], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.shunned = shunned

    def _execute(self, query: str):  # type: ignore[no-untyped-def]
        reply = super()._execute(query)
        self.set_runtime_status(*self.shunned, "SHUNNED")
        return reply


async def test_unconfirmed_runtime_is_retried_then_an_error(tmp_path: Path) -> None:
    double = MonitorShunningDouble(
        datadir=tmp_path / "proxysql", shunned=("db2", 3306), seed_servers=[seed(10, "node1")]
    )
    await double.start()
    try:
        router = make_router(double)
        with pytest.raises(RouterError) as info:
            await router.apply(m(["node2"], ["node1"]))
        assert str(info.value) == (
            "ProxySQL did not confirm the membership after 3 attempts: "
            "node2 is SHUNNED in writer hostgroup 10"
        )
        assert writes(double.statements).count(LOAD_TO_RUNTIME) == 4  # 2 + one per retry
        assert two_writer_snapshots(double) == []
    finally:
        await double.stop()


class RacingOperatorDouble(ProxySQLAdminDouble):
    """An operator writing mysql_servers on another admin session at the worst moment: right
    after the controller inserts the new writer, a second writer row appears."""

    def __init__(self, *, sneak_in: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.sneak_in = sneak_in

    def _execute(self, query: str):  # type: ignore[no-untyped-def]
        reply = super()._execute(query)
        if query.startswith("INSERT INTO mysql_servers") and "VALUES (10," in query:
            self._require_admin().execute(self.sneak_in)
        return reply


async def test_no_load_publishes_a_writer_row_someone_else_added(tmp_path: Path) -> None:
    double = RacingOperatorDouble(
        datadir=tmp_path / "proxysql",
        sneak_in="INSERT INTO mysql_servers (hostgroup_id, hostname) VALUES (10, 'db3')",
        seed_servers=[seed(10, "node1"), seed(20, "node2")],
    )
    await double.start()
    try:
        router = make_router(double)
        with pytest.raises(RouterError) as info:
            await router.apply(m(["node2"], ["node2"]))
        assert str(info.value) == (
            "refusing to LOAD MYSQL SERVERS TO RUNTIME: mysql_servers holds 2 writers "
            "['node2', 'node3'] in hostgroup 10 (changed by someone else meanwhile?)"
        )
        assert router.statements_sent[-1].startswith("INSERT")  # the second LOAD was not sent
        assert two_writer_snapshots(double) == []
        assert double.runtime_snapshot() == [(20, "db2", 3306, "ONLINE")]
    finally:
        await double.stop()


async def test_proxysql_stopped_during_apply_then_restarted_with_stale_disk(
    proxysql: ProxySQLAdminDouble,
) -> None:
    router = make_router(proxysql, timeout=2.0)
    desired = m(["node2"], ["node2", "node3"], ["node1"], ["node5"])
    proxysql.delay = 0.05
    apply = asyncio.create_task(router.apply(desired))
    async with asyncio.timeout(2):
        while not writes(proxysql.statements):  # noqa: ASYNC110 (the double has no event)
            await asyncio.sleep(0.005)  # the first write is the old writer's DELETE
    started = time.monotonic()
    await proxysql.stop()
    with pytest.raises(RouterError, match=r"ProxySQL admin 127\.0\.0\.1:\d+: apply failed at"):
        await apply
    assert time.monotonic() - started < 1.0

    # It comes back with what an older SAVE left on disk: node1 the writer, node2 broken.
    proxysql.delay = 0.0
    proxysql.set_disk_rows([seed(10, "node1"), seed(30, "node2"), seed(40, "node5"), *UNMANAGED])
    await proxysql.start()
    mark = len(proxysql.statements)
    assert await router.read() == m(["node1"], [], ["node2"], ["node5"])
    assert await router.apply(desired) is True
    assert await router.read() == desired
    assert two_writer_snapshots(proxysql) == []
    disk = [r[:3] for r in await admin_rows(proxysql, "disk.mysql_servers")]
    assert [r for r in disk if r[0] in ("10", "30")] == [
        ("10", "db2", "3306"),
        ("10", "legacy", "3306"),
        ("30", "db1", "3306"),
    ]
    assert ("20", "db2", "3306") in disk and ("20", "db3", "3306") in disk
    assert SAVE_TO_DISK in proxysql.statements[mark:]


async def test_slow_proxysql_fails_within_the_timeout(proxysql: ProxySQLAdminDouble) -> None:
    router = make_router(proxysql, timeout=0.4)
    proxysql.delay = 1.0
    for call in (
        router.read,
        lambda: router.apply(m(["node2"], hidden=["node5"])),
        router.conflicts,
    ):
        started = time.monotonic()
        with pytest.raises(RouterError, match=r"timed out after 0.4 s"):
            await call()
        assert time.monotonic() - started < 0.7
    proxysql.delay = 0.0
    await asyncio.sleep(1.1)  # let the abandoned statements finish (they were SELECTs)
    assert writes(proxysql.statements) == []


async def test_unreachable_or_refused_proxysql_is_a_router_error(
    proxysql: ProxySQLAdminDouble,
) -> None:
    router = make_router(proxysql)
    wrong = ProxySQLRouter(
        ProxySQLSettings(host=proxysql.host, port=proxysql.port, password="nope"), NODES
    )
    with pytest.raises(RouterError, match="read failed at connect: 1045: ProxySQL Error: Access"):
        await wrong.read()
    await proxysql.stop()
    with pytest.raises(RouterError, match="read failed at connect: 2003"):
        await router.read()
    with pytest.raises(RouterError, match="conflicts failed at connect"):
        await router.check_startup()


async def test_other_hostgroup_numbers_are_honoured(tmp_path: Path) -> None:
    double = ProxySQLAdminDouble(
        datadir=tmp_path / "p",
        seed_servers=[seed(11, "node1"), seed(10, "node2"), seed(44, "node3")],
    )
    await double.start()
    try:
        router = make_router(
            double,
            writer_hostgroup=11,
            reader_hostgroup=21,
            broken_hostgroup=31,
            hidden_hostgroup=44,
        )
        assert await router.read() == m(["node1"], hidden=["node3"])
        await router.apply(m(["node1"], ["node1", "node2"], hidden=["node3"]))
        assert sorted(double.runtime_snapshot()) == [
            (10, "db2", 3306, "ONLINE"),  # hostgroup 10 is not managed here
            (11, "db1", 3306, "ONLINE"),
            (21, "db1", 3306, "ONLINE"),
            (21, "db2", 3306, "ONLINE"),
            (44, "db3", 3306, "ONLINE"),
        ]
    finally:
        await double.stop()


@pytest.mark.parametrize(
    ("pair", "expected"),
    [((10, 20), ["writer_hostgroup=10 reader_hostgroup=20"]), ((50, 60), []), ((60, 30), ["[30]"])],
)
async def test_replication_hostgroups_over_managed_ones_block_startup(
    tmp_path: Path, pair: tuple[int, int], expected: list[str]
) -> None:
    double = ProxySQLAdminDouble(
        datadir=tmp_path / "p",
        seed_servers=[seed(10, "node1"), seed(50, "node2")],
        seed_replication_hostgroups=[ReplicationHostgroupRow(*pair)],
    )
    await double.start()
    try:
        router = make_router(double)
        warnings = await router.conflicts()
        assert len(warnings) == len(expected)
        for warning, text in zip(warnings, expected, strict=True):
            assert text in warning and "fights hacontrol" in warning
        if expected:
            with pytest.raises(RouterError, match="refusing to start until fixed") as info:
                await router.check_startup()
            assert expected[0] in str(info.value)
        else:
            await router.check_startup()
        assert writes(double.statements) == []
    finally:
        await double.stop()


async def test_unmanaged_writer_is_a_conflict(proxysql: ProxySQLAdminDouble) -> None:
    warnings = await make_router(proxysql).conflicts()
    assert warnings == [
        "server legacy:3306 (ONLINE) is in writer hostgroup 10 but is not a managed node: "
        "ProxySQL sends writes to it too. Move it to another hostgroup, or add it to the nodes "
        "setting"
    ]


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
    datadir: Path, names: Sequence[str], initial: Sequence[SeedRow], states: Sequence[Membership]
) -> None:
    nodes = [n for n in NODES if n.name in names]
    double = ProxySQLAdminDouble(datadir=datadir, seed_servers=[*initial, *UNMANAGED])
    await double.start()
    try:
        router = make_router(double, nodes)
        before = await untouched_rows(double, nodes)
        for desired in states:
            await router.apply(desired)
            assert await router.read() == desired
            assert await router.apply(desired) is False
        assert two_writer_snapshots(double, nodes) == []
        assert await untouched_rows(double, nodes) == before
    finally:
        await double.stop()


@settings(max_examples=30, deadline=None)
@given(scenarios())
def test_any_sequence_of_states_never_shows_two_writers(
    scenario: tuple[tuple[str, ...], list[SeedRow], list[Membership]],
) -> None:
    names, initial, states = scenario
    with tempfile.TemporaryDirectory() as datadir:
        asyncio.run(run_scenario(Path(datadir), names, initial, states))
