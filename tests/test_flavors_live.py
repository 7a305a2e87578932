"""Flavors against a real MariaDB pair: status in one round trip, and the action SQL at work.

The throwaway primary + replica below is self-contained on purpose; the project's sandbox
fixtures can replace it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomysql
import pymysql
import pytest
from pymysql.constants import CLIENT
from pymysql.converters import escape_str

from hacontrol.flavors import (
    DETECT_SQL,
    Flavor,
    FlavorName,
    IoState,
    MariaDB,
    NodeStatus,
    Sql,
    detect,
    multi_statement,
)
from tests.support import eventually, free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("mariadbd") is None or shutil.which("mariadb-install-db") is None,
        reason="needs mariadbd and mariadb-install-db (Debian package mariadb-server)",
    ),
]

REPL_USER = "repl"
REPL_PASSWORD = "r'e\"p\\l"  # quotes and a backslash: must travel as a parameter


@dataclass(frozen=True)
class Server:
    port: int
    server_id: int


def start_mariadbd(datadir: Path, server_id: int) -> tuple[subprocess.Popen[bytes], Server]:
    port = free_port()
    command = [
        shutil.which("mariadbd") or "mariadbd",
        "--no-defaults",
        f"--datadir={datadir}",
        f"--tmpdir={datadir}",  # its own: a server starting deletes every '#sql*' file there
        f"--port={port}",
        "--bind-address=127.0.0.1",
        f"--socket={datadir}/s.sock",
        f"--pid-file={datadir}/mariadbd.pid",
        f"--log-error={datadir}/error.log",
        f"--server-id={server_id}",
        "--log-bin=binlog",
        "--log-slave-updates",
        "--innodb-buffer-pool-size=32M",
        "--skip-name-resolve",
    ]
    if os.geteuid() == 0:
        command.append("--user=root")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, Server(port, server_id)


def wait_ready(process: subprocess.Popen[bytes], server: Server, datadir: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            log = (datadir / "error.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"mariadbd exited with {process.returncode}:\n{log}")
        try:
            pymysql.connect(host="127.0.0.1", port=server.port, user="root").close()
            return
        except pymysql.err.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def admin(server: Server, *statements: str) -> None:
    conn = pymysql.connect(host="127.0.0.1", port=server.port, user="root", autocommit=True)
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    base = tmp_path_factory.mktemp("mariadb-pair")
    template = base / "template"
    subprocess.run(
        [
            "mariadb-install-db",
            f"--datadir={template}",
            f"--tmpdir={base}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            *(["--user=root"] if os.geteuid() == 0 else []),
        ],
        check=True,
        capture_output=True,
    )
    with contextlib.ExitStack() as cleanup:
        servers = []
        for server_id, name in ((1, "primary"), (2, "replica")):
            datadir = base / name
            shutil.copytree(template, datadir)
            process, server = start_mariadbd(datadir, server_id)
            cleanup.callback(stop, process)
            wait_ready(process, server, datadir)
            servers.append(server)
        primary, replica = servers
        # mariadb-install-db creates anonymous users; they would shadow repl@% from localhost.
        admin(
            primary,
            "DELETE FROM mysql.global_priv WHERE User = ''",
            "FLUSH PRIVILEGES",
            f"CREATE USER '{REPL_USER}'@'%' IDENTIFIED BY {escape_str(REPL_PASSWORD)}",
            f"GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'%'",
            "CREATE DATABASE app",
            "CREATE TABLE app.t (id INT PRIMARY KEY)",
        )
        admin(replica, "DELETE FROM mysql.global_priv WHERE User = ''", "FLUSH PRIVILEGES")
        yield primary, replica


async def connect(server: Server) -> aiomysql.Connection:
    return await aiomysql.connect(
        host="127.0.0.1",
        port=server.port,
        user="root",
        autocommit=True,
        client_flag=CLIENT.MULTI_STATEMENTS,
    )


async def flavor_of(server: Server) -> tuple[Flavor, str]:
    conn = await connect(server)
    try:
        async with conn.cursor(aiomysql.DictCursor) as cur:
            await cur.execute(DETECT_SQL)
            row = await cur.fetchone()
    finally:
        conn.close()
    return detect(row["version"], row["version_comment"]), row["version"]


async def status(server: Server) -> NodeStatus:
    """The whole node status in one query: one round trip, one result set per statement."""
    flavor, version = await flavor_of(server)
    conn = await connect(server)
    try:
        async with asyncio.timeout(5), conn.cursor(aiomysql.DictCursor) as cur:
            await cur.execute(multi_statement(flavor.status_sql()))
            results = [list(await cur.fetchall())]
            while await cur.nextset():
                results.append(list(await cur.fetchall()))
    finally:
        conn.close()
    return flavor.parse_status(version, results)


async def run(server: Server, *statements: Sql) -> list[dict[str, object]]:
    conn = await connect(server)
    try:
        async with asyncio.timeout(10), conn.cursor(aiomysql.DictCursor) as cur:
            for statement in statements:
                await cur.execute(statement.sql, statement.params or None)
            return list(await cur.fetchall())
    finally:
        conn.close()


async def status_when(
    server: Server, check: Callable[[NodeStatus], bool], timeout: float = 10.0
) -> NodeStatus:
    """The server's status, once ``check`` holds on it."""

    async def matching() -> NodeStatus | None:
        current = await status(server)
        return current if check(current) else None

    return await eventually(matching, timeout, "the server's status to match", poll=0.1)


async def point_replica(primary: Server, replica: Server, password: str = REPL_PASSWORD) -> None:
    flavor, _ = await flavor_of(replica)
    await run(replica, flavor.stop_replication_sql(), flavor.reset_replication_sql())
    await run(
        replica,
        flavor.change_source_sql(
            "127.0.0.1", primary.port, REPL_USER, password, connect_retry=1, heartbeat=0.5
        ),
        flavor.start_replication_sql(),
    )


async def test_detects_mariadb(pair: tuple[Server, Server]) -> None:
    flavor, version = await flavor_of(pair[0])
    assert isinstance(flavor, MariaDB)
    assert flavor.version >= (10, 0, 0)
    assert "MariaDB" in version


async def test_primary_status_in_one_round_trip(pair: tuple[Server, Server]) -> None:
    primary, _ = pair
    await run(primary, Sql("INSERT INTO app.t VALUES (1000 + @@server_id)"))
    node = await status(primary)
    assert node.flavor is FlavorName.MARIADB
    assert node.server_id == primary.server_id
    assert node.log_bin is True
    assert node.super_read_only is None
    assert node.gtid_binlog_pos.startswith("0-1-")
    assert node.gtid_executed == node.gtid_binlog_pos
    assert node.semi_sync.source_clients == 0


async def test_replica_follows_stops_and_restarts(pair: tuple[Server, Server]) -> None:
    primary, replica = pair
    flavor, _ = await flavor_of(replica)
    await point_replica(primary, replica)
    await run(primary, Sql("INSERT INTO app.t VALUES (1)"))
    target = (await status(primary)).gtid_binlog_pos

    node = await status_when(replica, lambda s: s.gtid_slave_pos == target)
    assert node.gtid_slave_pos == target
    (link,) = node.replication
    assert link.connection_name == ""
    assert (link.source_host, link.source_port) == ("127.0.0.1", primary.port)
    assert link.io_state is IoState.RUNNING and link.sql_running
    assert link.received_gtid == target
    assert link.source_server_id == primary.server_id
    assert link.using_gtid == "Slave_Pos"
    assert link.seconds_behind == 0
    assert await run(replica, Sql("SELECT id FROM app.t WHERE id = 1")) == [{"id": 1}]

    # An idle source sends heartbeats (0.5 s): the counter moves without any write (two of
    # them take about a second; the wait is generous for a loaded machine).
    before = link.heartbeats_received
    assert before is not None
    node = await status_when(
        replica, lambda s: (s.replication[0].heartbeats_received or 0) > before + 1, timeout=15
    )
    assert (node.replication[0].heartbeats_received or 0) > before + 1

    [row] = await run(replica, flavor.wait_for_gtid_sql(target, 5))
    assert flavor.wait_for_gtid_reached(row["result"]) is True

    await run(replica, flavor.stop_replication_sql())
    node = await status(replica)
    assert node.replication[0].io_state is IoState.STOPPED
    assert node.replication[0].sql_running is False
    assert node.replication[0].seconds_behind is None

    await run(primary, Sql("INSERT INTO app.t VALUES (2)"))
    later = (await status(primary)).gtid_binlog_pos
    [row] = await run(replica, flavor.wait_for_gtid_sql(later, 0.3))
    assert flavor.wait_for_gtid_reached(row["result"]) is False

    await run(replica, flavor.start_replication_sql())
    [row] = await run(replica, flavor.wait_for_gtid_sql(later, 10))
    assert flavor.wait_for_gtid_reached(row["result"]) is True
    assert (await status(replica)).gtid_slave_pos == later


async def test_reset_forgets_the_source(pair: tuple[Server, Server]) -> None:
    primary, replica = pair
    flavor, _ = await flavor_of(replica)
    await point_replica(primary, replica)
    assert len((await status(replica)).replication) == 1
    await run(replica, flavor.stop_replication_sql(), flavor.reset_replication_sql())
    assert (await status(replica)).replication == ()


async def test_wrong_password_is_an_io_error(pair: tuple[Server, Server]) -> None:
    primary, replica = pair
    await point_replica(primary, replica, password="wrong'password")
    node = await status_when(replica, lambda s: s.replication[0].last_io_errno != 0)
    (link,) = node.replication
    assert link.io_state is IoState.CONNECTING
    assert link.last_io_errno == 1045  # ER_ACCESS_DENIED_ERROR
    assert f"'{REPL_USER}'@'127.0.0.1'" in link.last_io_error
    assert link.seconds_behind is None
    # MariaDB keeps the last source's server id across RESET SLAVE ALL + CHANGE MASTER while the
    # new connection has never logged in: source_server_id is "last known", not "connected to".
    assert link.source_server_id in (None, primary.server_id)


async def test_read_only_toggles(pair: tuple[Server, Server]) -> None:
    _, replica = pair
    flavor, _ = await flavor_of(replica)
    await run(replica, *flavor.set_read_only_sql(True))
    assert (await status(replica)).read_only is True
    await run(replica, *flavor.set_read_only_sql(False))
    assert (await status(replica)).read_only is False


async def test_semi_sync_becomes_active(pair: tuple[Server, Server]) -> None:
    primary, replica = pair
    flavor, _ = await flavor_of(primary)
    await run(primary, *flavor.semi_sync_sql(source=True, replica=False))
    await run(replica, *flavor.semi_sync_sql(source=False, replica=True))
    await point_replica(primary, replica)  # the replica side takes effect on (re)connect
    try:
        node = await status_when(primary, lambda s: s.semi_sync.source_clients == 1)
        await run(primary, Sql("INSERT INTO app.t VALUES (3)"))
        node = await status_when(primary, lambda s: s.semi_sync.source_active)
        assert node.semi_sync.source_enabled and node.semi_sync.source_active
        assert node.semi_sync.source_clients == 1
        assert not node.semi_sync.replica_enabled
        replica_node = await status(replica)
        assert replica_node.semi_sync.replica_enabled
        assert replica_node.semi_sync.replica_active is True
        assert not replica_node.semi_sync.source_enabled
    finally:
        await run(primary, *flavor.semi_sync_sql(source=False, replica=False))
        await run(replica, *flavor.semi_sync_sql(source=False, replica=False))


async def test_a_replica_is_a_semi_sync_client_only_once_its_io_thread_reconnects(
    pair: tuple[Server, Server],
) -> None:
    primary, replica = pair
    flavor, _ = await flavor_of(primary)
    await run(primary, *flavor.semi_sync_sql(source=True, replica=False))
    await point_replica(primary, replica)  # asynchronous: its variable is OFF
    try:
        await status_when(replica, lambda s: s.replication[0].io_state is IoState.RUNNING)
        await run(replica, *flavor.semi_sync_sql(source=False, replica=True))
        late = await status(replica)
        assert late.semi_sync.replica_enabled and late.semi_sync.replica_active is False
        assert not late.semi_sync.replica_client
        assert (await status(primary)).semi_sync.source_clients == 0
        await run(replica, Sql("STOP SLAVE IO_THREAD"), Sql("START SLAVE IO_THREAD"))
        await status_when(primary, lambda s: s.semi_sync.source_clients == 1)
        linked = await status_when(replica, lambda s: s.semi_sync.replica_active is True)
        assert linked.semi_sync.replica_client
    finally:
        await run(primary, *flavor.semi_sync_sql(source=False, replica=False))
        await run(replica, *flavor.semi_sync_sql(source=False, replica=False))
