"""The ProxySQL admin double, driven by a real aiomysql client as the controller drives it."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomysql
import pymysql
import pytest

from tests.proxysql_double import (
    PROXYSQL_VERSION,
    ProxySQLAdminDouble,
    ReplicationHostgroupRow,
    ServerRow,
    ThreadedProxySQLDouble,
    normalize,
    protocol,
    proxysql_config,
    start_proxysql_admin,
)

SEED = (
    ServerRow(10, "db1", 3306),
    ServerRow(20, "db2", 3306),
    ServerRow(20, "db3", 3306),
)
SERVER_COLUMNS = "hostgroup_id, hostname, port, status"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
async def proxysql(tmp_path: Path) -> AsyncIterator[ProxySQLAdminDouble]:
    double = ProxySQLAdminDouble(datadir=tmp_path / "proxysql", seed_servers=SEED)
    await double.start()
    yield double
    await double.stop()


async def connect(admin: ProxySQLAdminDouble, password: str | None = None) -> aiomysql.Connection:
    return await aiomysql.connect(
        host=admin.host,
        port=admin.port,
        user=admin.user,
        password=admin.password if password is None else password,
    )


async def query(conn: aiomysql.Connection, sql: str) -> list[tuple[str | None, ...]]:
    async with conn.cursor() as cur:
        await cur.execute(sql)
        return list(await cur.fetchall())


async def admin_error(conn: aiomysql.Connection, sql: str) -> tuple[int, str]:
    with pytest.raises(aiomysql.OperationalError) as info:
        await query(conn, sql)
    code, message = info.value.args
    return code, message


async def servers(conn: aiomysql.Connection, table: str) -> list[tuple[str | None, ...]]:
    return await query(conn, f"SELECT {SERVER_COLUMNS} FROM {table} ORDER BY 1, 2, 3")


async def test_connects_and_answers_version(proxysql: ProxySQLAdminDouble) -> None:
    conn = await connect(proxysql)
    try:
        assert await query(conn, "SELECT @@version") == [(PROXYSQL_VERSION,)]
        assert PROXYSQL_VERSION.startswith("2.7.1-")
        assert await query(conn, "SELECT 1") == [("1",)]
        await conn.ping()
    finally:
        conn.close()


async def test_wrong_password_is_error_1045(proxysql: ProxySQLAdminDouble) -> None:
    with pytest.raises(aiomysql.OperationalError) as info:
        await connect(proxysql, password="wrong")
    assert info.value.args[0] == 1045
    assert "Access denied for user 'admin'" in info.value.args[1]


async def test_seed_is_loaded_to_runtime_at_first_start(proxysql: ProxySQLAdminDouble) -> None:
    expected = [("10", "db1", "3306", "ONLINE"), ("20", "db2", "3306", "ONLINE"),
                ("20", "db3", "3306", "ONLINE")]  # fmt: skip
    conn = await connect(proxysql)
    try:
        assert await servers(conn, "runtime_mysql_servers") == expected
        assert await servers(conn, "mysql_servers") == expected
        assert await servers(conn, "disk.mysql_servers") == expected
    finally:
        conn.close()


async def test_values_come_back_as_strings_like_proxysql(proxysql: ProxySQLAdminDouble) -> None:
    conn = await connect(proxysql)
    try:
        rows = await query(conn, "SELECT hostgroup_id, port, weight FROM runtime_mysql_servers")
        assert {type(v) for row in rows for v in row} == {str}
        assert await query(conn, "SELECT NULL") == [(None,)]
    finally:
        conn.close()


async def test_writes_reach_runtime_only_on_load(proxysql: ProxySQLAdminDouble) -> None:
    conn = await connect(proxysql)
    try:
        before = await servers(conn, "runtime_mysql_servers")
        await query(conn, "UPDATE mysql_servers SET hostgroup_id=30 WHERE hostname='db1'")
        await query(conn, "INSERT INTO mysql_servers (hostgroup_id, hostname) VALUES (10, 'db2')")
        assert await servers(conn, "runtime_mysql_servers") == before
        assert proxysql.runtime_snapshot() == [(int(g), h, int(p), st) for g, h, p, st in before]

        await query(conn, "LOAD MYSQL SERVERS TO RUNTIME")
        memory = await servers(conn, "mysql_servers")
        assert await servers(conn, "runtime_mysql_servers") == memory
        assert ("10", "db2", "3306", "ONLINE") in memory
        assert ("30", "db1", "3306", "ONLINE") in memory
    finally:
        conn.close()


async def test_load_answers_ok_with_zero_rows(proxysql: ProxySQLAdminDouble) -> None:
    conn = await connect(proxysql)
    try:
        async with conn.cursor() as cur:
            assert await cur.execute("LOAD MYSQL SERVERS TO RUNTIME") == 0
            assert await cur.execute("SAVE MYSQL SERVERS TO DISK") == 0
            assert await cur.execute("DELETE FROM mysql_servers WHERE hostgroup_id=20") == 2
    finally:
        conn.close()


@pytest.mark.parametrize(
    "load",
    [
        "LOAD MYSQL SERVERS TO RUN",
        "LOAD MYSQL SERVERS FROM MEMORY",
        "load mysql servers from mem;",
        "  LOAD   MYSQL\nSERVERS TO RUNTIME ;; ",
    ],
)
async def test_load_spellings(proxysql: ProxySQLAdminDouble, load: str) -> None:
    conn = await connect(proxysql)
    try:
        await query(conn, "DELETE FROM mysql_servers WHERE hostgroup_id=20")
        await query(conn, load)
        assert proxysql.runtime_snapshot() == [(10, "db1", 3306, "ONLINE")]
    finally:
        conn.close()


async def test_status_is_upper_cased_in_runtime(proxysql: ProxySQLAdminDouble) -> None:
    conn = await connect(proxysql)
    try:
        await query(conn, "UPDATE mysql_servers SET status='offline_soft' WHERE hostname='db3'")
        await query(conn, "LOAD MYSQL SERVERS TO RUNTIME")
        assert (20, "db3", 3306, "OFFLINE_SOFT") in proxysql.runtime_snapshot()
    finally:
        conn.close()


async def test_hostgroups_30_and_40_are_plain_hostgroups(proxysql: ProxySQLAdminDouble) -> None:
    conn = await connect(proxysql)
    try:
        await query(conn, "INSERT INTO mysql_servers (hostgroup_id, hostname) VALUES (30, 'db2')")
        await query(conn, "INSERT INTO mysql_servers (hostgroup_id, hostname) VALUES (40, 'db3')")
        await query(conn, "LOAD MYSQL SERVERS TO RUNTIME")
        runtime = proxysql.runtime_snapshot()
        assert (30, "db2", 3306, "ONLINE") in runtime
        assert (40, "db3", 3306, "ONLINE") in runtime
        assert (20, "db2", 3306, "ONLINE") in runtime  # same server in two hostgroups
    finally:
        conn.close()


async def test_save_to_disk_survives_a_crash(proxysql: ProxySQLAdminDouble) -> None:
    conn = await connect(proxysql)
    await query(conn, "DELETE FROM mysql_servers WHERE hostname='db3'")
    await query(conn, "LOAD MYSQL SERVERS TO RUNTIME")
    await query(conn, "SAVE MYSQL SERVERS TO DISK")
    await query(conn, "INSERT INTO mysql_servers (hostgroup_id, hostname) VALUES (30, 'unsaved')")
    await query(conn, "LOAD MYSQL SERVERS TO RUNTIME")  # loaded but never saved
    conn.close()

    await proxysql.stop()
    await proxysql.start()

    expected = [("10", "db1", "3306", "ONLINE"), ("20", "db2", "3306", "ONLINE")]
    conn = await connect(proxysql)
    try:
        assert await servers(conn, "mysql_servers") == expected
        assert await servers(conn, "runtime_mysql_servers") == expected
    finally:
        conn.close()


async def test_restart_brings_back_stale_disk_rows(proxysql: ProxySQLAdminDouble) -> None:
    await proxysql.stop()
    proxysql.set_disk_rows([ServerRow(10, "db1"), ServerRow(10, "db2")])
    await proxysql.start()
    assert proxysql.runtime_snapshot() == [(10, "db1", 3306, "ONLINE"), (10, "db2", 3306, "ONLINE")]


async def test_initial_start_ignores_disk(proxysql: ProxySQLAdminDouble) -> None:
    await proxysql.stop()
    proxysql.set_disk_rows([ServerRow(10, "stale")])
    await proxysql.start(initial=True)
    assert [row[1] for row in proxysql.runtime_snapshot()] == ["db1", "db2", "db3"]
    assert (proxysql.datadir / "proxysql.db.bak").exists()


async def test_load_from_disk_replaces_memory_not_runtime(proxysql: ProxySQLAdminDouble) -> None:
    conn = await connect(proxysql)
    try:
        await query(conn, "DELETE FROM mysql_servers")
        await query(conn, "INSERT INTO mysql_servers (hostgroup_id, hostname) VALUES (10, 'x')")
        runtime = proxysql.runtime_snapshot()
        await query(conn, "LOAD MYSQL SERVERS FROM DISK")
        assert [r[1] for r in await servers(conn, "mysql_servers")] == ["db1", "db2", "db3"]
        assert proxysql.runtime_snapshot() == runtime
    finally:
        conn.close()


async def test_save_from_runtime_copies_runtime_to_memory(proxysql: ProxySQLAdminDouble) -> None:
    assert proxysql.set_runtime_status("db2", 3306, "SHUNNED") == 1  # as the monitor would
    conn = await connect(proxysql)
    try:
        await query(conn, "DELETE FROM mysql_servers")
        await query(conn, "SAVE MYSQL SERVERS FROM RUNTIME")
        assert ("20", "db2", "3306", "SHUNNED") in await servers(conn, "mysql_servers")
        assert len(await servers(conn, "mysql_servers")) == 3
    finally:
        conn.close()


async def test_writes_to_runtime_tables_do_not_change_runtime(
    proxysql: ProxySQLAdminDouble,
) -> None:
    conn = await connect(proxysql)
    try:
        await query(conn, "DELETE FROM runtime_mysql_servers")
        assert len(await servers(conn, "runtime_mysql_servers")) == 3
        assert len(proxysql.runtime_rows()) == 3
    finally:
        conn.close()


async def test_replication_hostgroups_move_with_mysql_servers(tmp_path: Path) -> None:
    double = ProxySQLAdminDouble(
        datadir=tmp_path, seed_replication_hostgroups=[ReplicationHostgroupRow(10, 20)]
    )
    await double.start()
    conn = await connect(double)
    try:
        rhg = "SELECT writer_hostgroup, reader_hostgroup, check_type FROM {}"
        assert await query(conn, rhg.format("runtime_mysql_replication_hostgroups")) == [
            ("10", "20", "read_only")
        ]
        await query(conn, "DELETE FROM mysql_replication_hostgroups")
        assert len(await query(conn, rhg.format("runtime_mysql_replication_hostgroups"))) == 1
        await query(conn, "LOAD MYSQL SERVERS TO RUNTIME")
        assert await query(conn, rhg.format("runtime_mysql_replication_hostgroups")) == []
        await query(conn, "SAVE MYSQL SERVERS TO DISK")
        assert await query(conn, rhg.format("disk.mysql_replication_hostgroups")) == []
        code, message = await admin_error(
            conn, "INSERT INTO mysql_replication_hostgroups VALUES (30, 30, 'read_only', '')"
        )
        assert (code, message) == (
            1045,
            "ProxySQL Admin Error: CHECK constraint failed: "
            "reader_hostgroup<>writer_hostgroup AND reader_hostgroup>=0",
        )
    finally:
        conn.close()
        await double.stop()


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "INSERT INTO mysql_servers (hostgroup_id, hostname) VALUES (-1, 'db9')",
            "ProxySQL Admin Error: CHECK constraint failed: hostgroup_id>=0",
        ),
        (
            "INSERT INTO mysql_servers (hostgroup_id, hostname, status) "
            "VALUES (20, 'db9', 'BROKEN')",
            "ProxySQL Admin Error: CHECK constraint failed: "
            "UPPER(status) IN ('ONLINE','SHUNNED','OFFLINE_SOFT', 'OFFLINE_HARD')",
        ),
        (
            "INSERT INTO mysql_servers (hostgroup_id, hostname, port) VALUES (20, 'db2', 3306)",
            "ProxySQL Admin Error: UNIQUE constraint failed: mysql_servers.hostgroup_id, "
            "mysql_servers.hostname, mysql_servers.port",
        ),
        (
            "UPDATE mysql_servers SET hostname='db2' WHERE hostname='db3'",
            "ProxySQL Admin Error: UNIQUE constraint failed: mysql_servers.hostgroup_id, "
            "mysql_servers.hostname, mysql_servers.port",
        ),
        ("FOO BAR", 'ProxySQL Admin Error: near "FOO": syntax error'),
        ("SELECT * FROM mysql_serverz", "ProxySQL Admin Error: no such table: mysql_serverz"),
        ("LOAD MYSQL SERVERS TO DISK", 'ProxySQL Admin Error: near "LOAD": syntax error'),
        ("   ;  ", "Empty query"),
    ],
)
async def test_errors_are_1045_with_proxysql_text(
    proxysql: ProxySQLAdminDouble, sql: str, message: str
) -> None:
    conn = await connect(proxysql)
    try:
        memory = await servers(conn, "mysql_servers")
        assert await admin_error(conn, sql) == (1045, message)
        assert await servers(conn, "mysql_servers") == memory
        assert await query(conn, "SELECT 1") == [("1",)]  # the session survives the error
    finally:
        conn.close()


async def test_error_packet_carries_sqlstate_28000(proxysql: ProxySQLAdminDouble) -> None:
    """pymysql drops the SQLSTATE, so speak the protocol by hand to see the raw ERR packet."""
    reader, writer = await asyncio.open_connection(proxysql.host, proxysql.port)

    async def packet() -> bytes:
        header = await reader.readexactly(4)
        return await reader.readexactly(int.from_bytes(header[:3], "little"))

    try:
        handshake = await packet()
        version_end = handshake.index(b"\x00", 1)
        # salt part 1 follows version + thread id; part 2 precedes NUL + "mysql_native_password\0"
        salt = handshake[version_end + 5 : version_end + 13] + handshake[-35:-23]
        scramble = protocol.native_password_scramble("admin", salt)
        caps = protocol.CLIENT_PROTOCOL_41 | protocol.CLIENT_SECURE_CONNECTION
        response = (
            struct.pack("<IIB23s", caps, 1 << 24, 33, b"")
            + b"admin\x00" + bytes([len(scramble)]) + scramble
        )  # fmt: skip
        writer.write(protocol.frame(response, 1))
        assert (await packet())[0] == 0x00  # OK: authenticated
        writer.write(protocol.frame(b"\x03FOO", 0))
        err = await packet()
        assert err[0] == 0xFF
        assert struct.unpack_from("<H", err, 1)[0] == 1045
        assert err[3:9] == b"#28000"
        assert err[9:] == b'ProxySQL Admin Error: near "FOO": syntax error'
    finally:
        writer.close()


async def test_modules_not_emulated_fail_loudly(proxysql: ProxySQLAdminDouble) -> None:
    conn = await connect(proxysql)
    try:
        code, message = await admin_error(conn, "LOAD MYSQL USERS TO RUNTIME")
        assert code == 1045
        assert "not emulated" in message
    finally:
        conn.close()


async def test_session_statements_are_accepted(proxysql: ProxySQLAdminDouble) -> None:
    conn = await connect(proxysql)
    try:
        for sql in ("BEGIN", "SET NAMES utf8mb4", "SET autocommit=1", "USE main", "COMMIT"):
            assert await query(conn, sql) == []
        await conn.select_db("main")
        assert await query(conn, "select @@version_comment limit 1") == [
            ("(ProxySQL Admin Module)",)
        ]
    finally:
        conn.close()


async def test_mysql_variables_reach_runtime_only_on_load(proxysql: ProxySQLAdminDouble) -> None:
    name = "mysql-monitor_ping_interval"
    where = f"WHERE variable_name='{name}'"
    conn = await connect(proxysql)
    try:
        await query(conn, f"UPDATE global_variables SET variable_value='2000' {where}")
        runtime = f"SELECT variable_value FROM runtime_global_variables {where}"
        assert await query(conn, runtime) == [("8000",)]
        await query(conn, "LOAD MYSQL VARIABLES TO RUNTIME")
        assert await query(conn, runtime) == [("2000",)]
        assert proxysql.runtime_variables()[name] == "2000"
        await query(conn, f"SET {name}=3000")  # ProxySQL turns SET into UPDATE global_variables
        memory = f"SELECT variable_value FROM global_variables {where}"
        assert await query(conn, memory) == [("3000",)]
        await query(conn, "SAVE MYSQL VARIABLES TO DISK")
        disk = f"SELECT variable_value FROM disk.global_variables {where}"
        assert await query(conn, disk) == [("3000",)]
    finally:
        conn.close()


async def test_delay_slows_every_statement(proxysql: ProxySQLAdminDouble) -> None:
    conn = await connect(proxysql)
    try:
        proxysql.delay = 0.3
        started = time.monotonic()
        await query(conn, "SELECT 1")
        assert time.monotonic() - started >= 0.3
        proxysql.delay = 0.0
        started = time.monotonic()
        await query(conn, "SELECT 1")
        assert time.monotonic() - started < 0.3
    finally:
        conn.close()


async def test_statement_abandoned_during_delay_is_still_applied(
    proxysql: ProxySQLAdminDouble,
) -> None:
    conn = await connect(proxysql)
    proxysql.delay = 0.5
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await query(conn, "DELETE FROM mysql_servers WHERE hostgroup_id=20")
    conn.close()
    await asyncio.sleep(0.6)
    assert proxysql.statements[-1] == "DELETE FROM mysql_servers WHERE hostgroup_id=20"
    proxysql.delay = 0.0
    conn = await connect(proxysql)
    try:
        assert await servers(conn, "mysql_servers") == [("10", "db1", "3306", "ONLINE")]
    finally:
        conn.close()


async def test_stop_drops_connected_clients(proxysql: ProxySQLAdminDouble) -> None:
    conn = await connect(proxysql)
    assert await query(conn, "SELECT 1") == [("1",)]
    await proxysql.stop()
    with pytest.raises(aiomysql.OperationalError):
        await query(conn, "SELECT 1")
    conn.close()
    with pytest.raises(aiomysql.OperationalError) as info:
        await connect(proxysql)
    assert info.value.args[0] == 2003  # connection refused


async def test_runtime_history_records_every_statement(proxysql: ProxySQLAdminDouble) -> None:
    conn = await connect(proxysql)
    try:
        first = len(proxysql.statements)  # aiomysql sends SET AUTOCOMMIT = 0 on connect
        await query(conn, "UPDATE mysql_servers SET hostgroup_id=30 WHERE hostname='db1'")
        await query(conn, "LOAD MYSQL SERVERS TO RUNTIME")
        await admin_error(conn, "FOO")
        await query(conn, "SELECT 1")
    finally:
        conn.close()
    assert proxysql.statements[:first] == ["SET AUTOCOMMIT = 0"]
    assert proxysql.statements[first:] == [
        "UPDATE mysql_servers SET hostgroup_id=30 WHERE hostname='db1'",
        "LOAD MYSQL SERVERS TO RUNTIME",
        "FOO",
        "SELECT 1",
    ]
    assert len(proxysql.runtime_history) == len(proxysql.statements)
    seeded = [(10, "db1", 3306, "ONLINE"), (20, "db2", 3306, "ONLINE"), (20, "db3", 3306, "ONLINE")]
    moved = [(20, "db2", 3306, "ONLINE"), (20, "db3", 3306, "ONLINE"), (30, "db1", 3306, "ONLINE")]
    assert proxysql.runtime_history[first:] == [seeded, moved, moved, moved]


async def test_delete_with_where_leaves_other_hostgroups(proxysql: ProxySQLAdminDouble) -> None:
    conn = await connect(proxysql)
    try:
        await query(conn, "INSERT INTO mysql_servers (hostgroup_id, hostname) VALUES (30, 'db3')")
        await query(conn, "DELETE FROM mysql_servers WHERE hostgroup_id=20 AND hostname='db3'")
        await query(conn, "LOAD MYSQL SERVERS TO RUNTIME")
        assert proxysql.runtime_snapshot() == [
            (10, "db1", 3306, "ONLINE"),
            (20, "db2", 3306, "ONLINE"),
            (30, "db3", 3306, "ONLINE"),
        ]
    finally:
        conn.close()


async def test_insert_or_replace_and_or_ignore(proxysql: ProxySQLAdminDouble) -> None:
    conn = await connect(proxysql)
    try:
        await query(
            conn,
            "INSERT OR IGNORE INTO mysql_servers (hostgroup_id, hostname, weight) "
            "VALUES (20, 'db2', 5)",
        )
        await query(
            conn,
            "REPLACE INTO mysql_servers (hostgroup_id, hostname, weight) VALUES (20, 'db3', 7)",
        )
        rows = await query(conn, "SELECT hostname, weight FROM mysql_servers WHERE hostgroup_id=20")
        assert sorted(rows) == [("db2", "1"), ("db3", "7")]
    finally:
        conn.close()


def test_threaded_double_serves_a_blocking_client(tmp_path: Path) -> None:
    with ThreadedProxySQLDouble(datadir=tmp_path, seed_servers=SEED) as proxysql:
        conn = pymysql.connect(host=proxysql.host, port=proxysql.port, user="admin",
                               password="admin")  # fmt: skip
        with conn.cursor() as cur:
            cur.execute("DELETE FROM mysql_servers WHERE hostgroup_id=20")
            cur.execute("LOAD MYSQL SERVERS TO RUN")
        conn.close()
        assert proxysql.call(lambda d: d.runtime_snapshot()) == [(10, "db1", 3306, "ONLINE")]


async def test_module_entry_point_runs_the_double(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.proxysql_double", "--datadir", str(tmp_path),
        "--server", "10:db1:3306",
        cwd=REPO, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            line = (await process.stdout.readline()).decode().split()
        assert line[0] == "ready"
        conn = await aiomysql.connect(host=line[1], port=int(line[2]), user="admin",
                                      password="admin")  # fmt: skip
        try:
            assert await servers(conn, "runtime_mysql_servers") == [("10", "db1", "3306", "ONLINE")]
        finally:
            conn.close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0


async def test_start_proxysql_admin_falls_back_to_the_double(tmp_path: Path) -> None:
    admin = await start_proxysql_admin(tmp_path, seed_servers=SEED, use_real=False)
    try:
        assert isinstance(admin, ProxySQLAdminDouble)
        conn = await aiomysql.connect(host=admin.host, port=admin.port, user=admin.user,
                                      password=admin.password)  # fmt: skip
        try:
            assert len(await servers(conn, "runtime_mysql_servers")) == 3
        finally:
            conn.close()
    finally:
        await admin.stop()


def test_proxysql_config_for_the_real_binary(tmp_path: Path) -> None:
    text = proxysql_config(
        datadir=tmp_path, host="127.0.0.1", admin_port=16032, mysql_port=16033, user="admin",
        password="secret", servers=[ServerRow(10, "db1", 3307)],
        replication_hostgroups=[ReplicationHostgroupRow(10, 20)],
    )  # fmt: skip
    assert 'admin_credentials="admin:secret"' in text
    assert 'mysql_ifaces="127.0.0.1:16032"' in text
    assert 'address="db1", port=3307, hostgroup=10' in text
    assert "writer_hostgroup=10, reader_hostgroup=20" in text


def test_normalize_is_proxysqls_query_no_space() -> None:
    assert normalize("  load\tmysql   servers\nto runtime ; ;") == "load mysql servers to runtime"
    assert normalize(";") == ""
