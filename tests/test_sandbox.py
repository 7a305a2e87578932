"""The sandbox: real mariadbd nodes behind a real router (ProxySQL when on PATH, else HAProxy)
on 127.0.0.1. What is specific to ProxySQL's traffic port is in tests/test_proxysql_live.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiomysql
import pymysql
import pytest

from hacontrol.sandbox import (
    GRANTS,
    PortBusyError,
    RouterInfo,
    Sandbox,
    SandboxError,
    SandboxSpec,
    find_free_base_port,
    procs,
    render,
)
from hacontrol.sandbox.tls import SandboxTls
from tests.factories import fake_nodes, fake_router, two_clusters
from tests.support import eventually

ER_OPTION_PREVENTS_STATEMENT = 1290
ER_TABLEACCESS_DENIED = 1142
ER_SPECIFIC_ACCESS_DENIED = 1227


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hacontrol.sandbox", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )


async def fetch(conn: aiomysql.Connection, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    async with conn.cursor() as cur:
        await cur.execute(sql, args)
        return list(await cur.fetchall())


async def fetch_dicts(conn: aiomysql.Connection, sql: str) -> list[dict[str, Any]]:
    async with conn.cursor(aiomysql.DictCursor) as cur:
        await cur.execute(sql)
        return list(await cur.fetchall())


async def root_conn(sb: Sandbox, name: str) -> aiomysql.Connection:
    """root exists only as root@localhost: over the node's unix socket."""
    node = sb.status().node(name)
    return await aiomysql.connect(
        unix_socket=node.socket, user="root", password=sb.password("root"), autocommit=True
    )


def exists(path: str | Path) -> bool:
    return Path(path).exists()


def unique_id() -> int:
    return time.time_ns()


# ---- pure parts -------------------------------------------------------------------------------


def test_node_config_is_production_like() -> None:
    primary, replica, _ = fake_nodes()
    replica_cnf = render.node_cnf(replica, primary=False, run_as_root=False)
    primary_cnf = render.node_cnf(primary, primary=True, run_as_root=True)
    for needed in (
        "server_id = 2",
        "log_bin = mysql-bin",
        "gtid_strict_mode = ON",
        "log_slave_updates = ON",
        "read_only = ON",
        "rpl_semi_sync_slave_enabled = ON",
        "rpl_semi_sync_master_wait_point = AFTER_SYNC",
        "report_port = 30001",
    ):
        assert needed in replica_cnf.splitlines()
    assert "read_only = OFF" in primary_cnf.splitlines()
    assert "rpl_semi_sync_master_enabled = ON" in primary_cnf.splitlines()
    assert "user = root" in primary_cnf.splitlines()
    assert "user = root" not in replica_cnf.splitlines()


def test_tls_renders_the_servers_the_users_the_channel_and_the_settings() -> None:
    """`sandbox up --tls`: the nodes serve the sandbox's certificate, the server requires TLS
    of the controller's user (with a certificate) and of the replication user, replicas
    attach over TLS with the source verified, ProxySQL offers TLS, the settings ask for it."""
    tls = SandboxTls(Path("/sb/tls"))
    primary, replica, _ = fake_nodes()
    cnf = render.node_cnf(replica, primary=False, run_as_root=False, tls=tls).splitlines()
    assert {"ssl_ca = /sb/tls/ca.pem", "ssl_cert = /sb/tls/server.pem"} <= set(cnf)
    assert "ssl_key = /sb/tls/server-key.pem" in cnf
    users = render.setup_primary_sql({r: "pw" for r in render.USERS}, "root-pw", tls=True)
    assert "CREATE USER 'hacontrol'@'%' IDENTIFIED BY 'pw' REQUIRE X509" in users
    assert "CREATE USER 'repl'@'%' IDENTIFIED BY 'pw' REQUIRE SSL" in users
    assert "CREATE USER 'app'@'%' IDENTIFIED BY 'pw'" in users  # application traffic as is
    assert render.change_master_sql(primary, "pw", tls).endswith(
        ", MASTER_SSL=1, MASTER_SSL_CA='/sb/tls/ca.pem', MASTER_SSL_VERIFY_SERVER_CERT=1"
    )
    assert "MASTER_SSL" not in render.change_master_sql(primary, "pw")
    router = replace(fake_router(), kind="proxysql", admin="127.0.0.1:30005")
    proxysql = render.proxysql_cnf(
        fake_nodes(), router, datadir="/d", admin_password="a", app_password="b",
        monitor_password="c", tls=True,
    )  # fmt: skip
    assert "    have_ssl=true" in proxysql.splitlines()
    doc = tomllib.loads(
        render.settings_toml(
            fake_nodes(),
            router,
            controller_password_file="/c",
            replication_password_file="/r",
            api_port=30006,
            tls=tls,
        )
    )
    assert doc["mysql"]["tls"] == {
        "mode": "verify_identity",
        "ca": "/sb/tls/ca.pem",
        "cert": "/sb/tls/hacontrol.pem",
        "key": "/sb/tls/hacontrol-key.pem",
    }
    assert doc["mysql"]["replication_tls"] == {
        "enabled": True,
        "ca": "/sb/tls/ca.pem",
        "verify_server_cert": True,
    }
    assert doc["router"]["proxysql"]["tls"] == {"mode": "verify_identity", "ca": "/sb/tls/ca.pem"}
    assert doc["api"]["tls_cert"] == "/sb/tls/api.pem" and doc["api"]["tls_ca"] == "/sb/tls/ca.pem"


def test_haproxy_config_enables_only_the_primary_as_writer() -> None:
    cfg = render.haproxy_cfg(fake_nodes(), fake_router()).splitlines()
    writer = cfg[cfg.index("backend writer") : cfg.index("backend readers")]
    readers = cfg[cfg.index("backend readers") :]
    assert "    server node1 127.0.0.1:30000" in writer
    assert "    server node2 127.0.0.1:30001 disabled" in writer
    assert "    server node3 127.0.0.1:30002 disabled" in writer
    assert [line for line in readers if "server" in line and "disabled" in line] == []
    assert "    retries 0" in cfg
    assert "    stats socket /sb/haproxy.sock mode 600 level admin" in cfg


def test_settings_toml_has_the_controller_schema() -> None:
    text = render.settings_toml(
        fake_nodes(),
        fake_router(),
        controller_password_file="/s/hacontrol.password",
        replication_password_file="/s/repl.password",
    )
    doc = tomllib.loads(text)
    assert doc["cluster"] == {"name": "sandbox"}
    assert [n["name"] for n in doc["nodes"]] == ["node1", "node2", "node3"]
    assert doc["nodes"][1] == {
        "name": "node2",
        "host": "127.0.0.1",
        "port": 30001,
        "priority": 0,
        "no_promote": False,
    }
    assert doc["mysql"] == {
        "user": "hacontrol",
        "password_file": "/s/hacontrol.password",
        "replication_user": "repl",
        "replication_password_file": "/s/repl.password",
    }
    assert doc["router"] == {
        "kind": "haproxy",
        "primary_is_reader": True,
        "haproxy": {
            "socket": "/sb/haproxy.sock",
            "writer_backend": "writer",
            "reader_backend": "readers",
        },
    }
    assert doc["probes"] == {"interval": 1.0, "timeout": 0.5, "failure_threshold": 3}
    assert doc["failover"] == {"max_lag": 10.0, "recovery_block": 3600.0, "io_stall": 1.5}
    assert doc["smtp"] == {"host": ""}
    # The fleet's lease, timed for the sandbox: W shorter than io_stall (docs/fleet.md).
    assert doc["lease"]["wait_timeout"] < doc["failover"]["io_stall"]
    assert "controller" not in doc  # no journal given, no instance id: the defaults


def test_the_settings_of_a_controller_the_sandbox_starts_name_it_and_its_journal() -> None:
    text = render.settings_toml(
        fake_nodes(),
        fake_router(),
        controller_password_file="/s/hacontrol.password",
        replication_password_file="/s/repl.password",
        journal="/sb/controllers/c2/journal.jsonl",
        instance_id="c2",
    )
    assert tomllib.loads(text)["controller"] == {
        "journal": "/sb/controllers/c2/journal.jsonl",
        "instance_id": "c2",
    }


def test_a_fleets_ports_are_per_router_after_the_nodes() -> None:
    spec = SandboxSpec(dir=Path("/sb"), base_port=30000, routers=3, controllers=2)
    assert spec.port_count == 3 + 4 * 3
    assert [spec.router_port(1, w) for w in range(4)] == [30007, 30008, 30009, 30010]
    assert (spec.writer_port, spec.api_port) == (30003, 30006)  # the first router's
    names = [name for _, name in spec.ports()]
    assert "router 3 admin port" in names and "controller API port 2" in names
    assert len({port for port, _ in spec.ports()}) == spec.port_count
    with pytest.raises(SandboxError, match="--controllers must be between 0 and --routers"):
        SandboxSpec(dir=Path("/sb"), routers=2, controllers=3)


def test_proxysql_config_is_what_an_operator_writes() -> None:
    router = RouterInfo("proxysql", "127.0.0.1", 30003, 30004, "127.0.0.1:30005", 30005, None, "/c")
    cnf = render.proxysql_cnf(
        fake_nodes(),
        router,
        datadir="/sb/router",
        admin_password="adm'pw",
        app_password="app-pw",
        monitor_password="mon-pw",
    )
    lines = [line.strip() for line in cnf.splitlines()]
    assert 'admin_credentials="admin:adm\'pw"' in lines
    assert 'mysql_ifaces="127.0.0.1:30005"' in lines  # loopback only
    assert 'interfaces="127.0.0.1:30003;127.0.0.1:30004"' in lines
    assert 'monitor_username="monitor"' in lines and 'monitor_password="mon-pw"' in lines
    for key in ("connect_retries_on_failure", "query_retries_on_failure"):
        assert f"{key}={render.PROXYSQL_MYSQL_VARIABLES[key]}" in lines
    assert "query_retries_on_failure=0" in lines  # a write is never sent twice
    assert "replication_hostgroups" not in cnf  # ProxySQL's read_only monitor would fight us
    servers = [line for line in lines if line.startswith("{ address=")]
    assert servers == [
        '{ address="127.0.0.1", port=30000, hostgroup=10 },',
        '{ address="127.0.0.1", port=30000, hostgroup=20 },',
        '{ address="127.0.0.1", port=30001, hostgroup=20 },',
        '{ address="127.0.0.1", port=30002, hostgroup=20 }',
    ]
    assert (
        '{ username="app", password="app-pw", default_hostgroup=10, transaction_persistent=1 }'
        in lines
    )
    rules = [line for line in lines if line.startswith("{ rule_id=")]
    assert [r.split(",")[0] for r in rules] == ["{ rule_id=1", "{ rule_id=2", "{ rule_id=3"]
    assert "proxy_port=30004, destination_hostgroup=20" in rules[0]  # the reader port
    assert 'match_digest="^SELECT.*FOR UPDATE", destination_hostgroup=10' in rules[1]
    assert 'match_digest="^SELECT", destination_hostgroup=20, retries=1' in rules[2]


def test_settings_toml_for_proxysql_names_the_admin_interface() -> None:
    router = RouterInfo("proxysql", "127.0.0.1", 30003, 30003, "127.0.0.1:30005", 30005, None, "/c")
    doc = tomllib.loads(
        render.settings_toml(
            fake_nodes(),
            router,
            controller_password_file="/s/h",
            replication_password_file="/s/r",
            proxysql_password_file="/s/p",
        )
    )
    assert doc["router"]["kind"] == "proxysql"
    assert doc["router"]["proxysql"] == {
        "host": "127.0.0.1",
        "port": 30005,
        "user": "admin",
        "password_file": "/s/p",
        "writer_hostgroup": 10,
        "reader_hostgroup": 20,
        "broken_hostgroup": 30,
        "hidden_hostgroup": 40,
    }


def test_free_base_port_has_consecutive_bindable_ports() -> None:
    base = find_free_base_port(6)
    assert all(procs.port_is_free(base + i) for i in range(6))


def test_busy_port_is_detected() -> None:
    base = find_free_base_port(2)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", base + 1))
        listener.listen()
        assert not procs.port_is_free(base + 1)
        with pytest.raises(PortBusyError) as err:
            procs.check_ports([(base, "a"), (base + 1, "mariadbd node2")])
        assert err.value.port == base + 1
        assert f"port {base + 1}" in str(err.value) and "node2" in str(err.value)


def test_a_spawned_process_is_running_as_soon_as_spawn_returns(tmp_path: Path) -> None:
    # Right after posix_spawn the child's /proc/<pid>/cmdline may not show the new program
    # yet (about half the time here): spawn waits for it, or a starting node reads as dead.
    marker = str(tmp_path / "marker")
    for _ in range(50):
        pid = procs.spawn(["/bin/sh", "-c", "sleep 30", marker], tmp_path / "log")
        try:
            assert procs.process_state(pid, marker) == "running"
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_process_state_ignores_a_pid_running_something_else() -> None:
    assert procs.process_state(os.getpid(), "/no/such/my.cnf") == "dead"
    assert procs.process_state(None, "x") == "dead"
    assert procs.process_state(os.getpid(), "python") == "running"


# ---- the running sandbox (shared, read-only use) ----------------------------------------------


@pytest.mark.integration
def test_up_is_fast(sandbox: Sandbox) -> None:
    info = sandbox.status()
    assert info.up_seconds is not None
    assert info.up_seconds < 15.0, f"sandbox up took {info.up_seconds} s"
    print(f"\nsandbox up for 3 nodes took {info.up_seconds:.2f} s")


@pytest.mark.integration
async def test_insert_through_writer_lands_on_primary_and_replicates_within_a_second(
    sandbox: Sandbox,
) -> None:
    row_id = unique_id()
    writer = await sandbox.connect("writer", "app", db="app")
    try:
        # Inside a transaction: ProxySQL's read/write split sends a lone SELECT to a reader.
        await fetch(writer, "START TRANSACTION")
        [(server_id,)] = await fetch(writer, "SELECT @@server_id")
        await fetch(writer, "COMMIT")
        assert server_id == sandbox.status().primary.server_id
        await fetch(writer, "INSERT INTO writes (id, node) VALUES (%s, @@server_id)", (row_id,))
        committed = time.monotonic()
    finally:
        writer.close()
    replicas = [n.name for n in sandbox.status().nodes if n.role == "replica"]
    conns = [await sandbox.connect(name, "app", db="app") for name in replicas]
    try:
        pending = set(range(len(conns)))
        while pending and time.monotonic() - committed < 1.0:
            for i in list(pending):
                rows = await fetch(conns[i], "SELECT node FROM writes WHERE id = %s", (row_id,))
                if rows:
                    assert rows == [(1,)]
                    pending.discard(i)
            await asyncio.sleep(0.005)
        elapsed = time.monotonic() - committed
    finally:
        for conn in conns:
            conn.close()
    assert not pending, f"row missing on {[replicas[i] for i in pending]} after {elapsed:.3f} s"
    assert elapsed < 1.0


@pytest.mark.integration
async def test_reader_port_reaches_every_node(sandbox: Sandbox) -> None:
    # HAProxy goes round robin; ProxySQL picks at random by weight: ask until all answered.
    seen = set()
    for _ in range(60):
        if seen == {1, 2, 3}:
            break
        conn = await sandbox.connect("reader", "app")
        try:
            [(server_id,)] = await fetch(conn, "SELECT @@server_id")
            seen.add(server_id)
        finally:
            conn.close()
    assert seen == {1, 2, 3}


@pytest.mark.integration
async def test_app_write_on_a_replica_fails_read_only(sandbox: Sandbox) -> None:
    conn = await sandbox.connect("node2", "app", db="app")
    try:
        with pytest.raises(pymysql.err.OperationalError) as err:
            await fetch(conn, "INSERT INTO writes (id, node) VALUES (%s, 2)", (unique_id(),))
        assert err.value.args[0] == ER_OPTION_PREVENTS_STATEMENT
        with pytest.raises(pymysql.err.OperationalError) as err:
            await fetch(conn, "SET GLOBAL read_only = OFF")
        assert err.value.args[0] == ER_SPECIFIC_ACCESS_DENIED
    finally:
        conn.close()


@pytest.mark.integration
async def test_replication_is_semi_sync_gtid_with_heartbeat(sandbox: Sandbox) -> None:
    primary = await sandbox.connect("node1", "controller")
    replica = await sandbox.connect("node2", "controller")
    try:
        status = dict(await fetch(primary, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_%'"))
        assert status["Rpl_semi_sync_master_status"] == "ON"
        assert status["Rpl_semi_sync_master_clients"] == "2"
        variables = dict(await fetch(primary, "SHOW GLOBAL VARIABLES LIKE 'rpl_semi_sync_%'"))
        assert variables["rpl_semi_sync_master_wait_point"] == "AFTER_SYNC"
        [(read_only, strict, slave_updates)] = await fetch(
            replica, "SELECT @@read_only, @@gtid_strict_mode, @@log_slave_updates"
        )
        assert (read_only, strict, slave_updates) == (1, 1, 1)
        [slave] = await fetch_dicts(replica, "SHOW ALL SLAVES STATUS")
        assert slave["Using_Gtid"] == "Slave_Pos"
        assert slave["Slave_IO_Running"] == slave["Slave_SQL_Running"] == "Yes"
        assert slave["Connect_Retry"] == 1
        assert int(slave["Master_Port"]) == sandbox.status().node("node1").port
        heartbeat = dict(await fetch(replica, "SHOW GLOBAL STATUS LIKE 'Slave_heartbeat_period'"))
        assert float(heartbeat["Slave_heartbeat_period"]) == render.HEARTBEAT_PERIOD
    finally:
        primary.close()
        replica.close()


@pytest.mark.integration
async def test_users_are_least_privilege_and_no_anonymous_user(sandbox: Sandbox) -> None:
    for name in ("node1", "node3"):
        conn = await root_conn(sandbox, name)
        try:
            users = set(await fetch(conn, "SELECT user, host FROM mysql.user"))
            grants = await fetch(conn, "SHOW GRANTS FOR 'hacontrol'@'%'")
        finally:
            conn.close()
        assert users == {
            ("app", "%"),
            ("hacontrol", "%"),
            ("monitor", "%"),
            ("repl", "%"),
            ("root", "localhost"),
            ("mariadb.sys", "localhost"),
        }
        granted = grants[0][0].split(" ON ")[0].removeprefix("GRANT ")
        expected = GRANTS[0].split(" ON ")[0].removeprefix("GRANT ")
        assert set(granted.split(", ")) == set(expected.split(", "))
        conn = await root_conn(sandbox, name)
        try:
            monitor = [g for (g,) in await fetch(conn, "SHOW GRANTS FOR 'monitor'@'%'")]
        finally:
            conn.close()
        assert len(monitor) == 1  # ProxySQL's monitor: SLAVE MONITOR on *.*, nothing else
        assert monitor[0].startswith("GRANT SLAVE MONITOR ON *.* TO `monitor`@`%`")


@pytest.mark.integration
async def test_controller_can_probe_repoint_and_fence_but_not_read_data(
    sandbox: Sandbox,
) -> None:
    ctl = await sandbox.connect("node2", "controller")
    victim = await sandbox.connect("node2", "app")
    try:
        assert await fetch(ctl, "SHOW ALL SLAVES STATUS")
        await fetch(ctl, "SELECT @@gtid_current_pos, @@gtid_slave_pos, @@gtid_binlog_pos")
        assert await fetch(ctl, "SHOW GLOBAL STATUS LIKE 'Slave_received_heartbeats'")
        assert await fetch(ctl, "SHOW MASTER STATUS")
        assert await fetch(ctl, "SHOW BINARY LOGS")
        users = {row[1] for row in await fetch(ctl, "SHOW FULL PROCESSLIST")}
        assert {"app", "system user"} <= users
        await fetch(ctl, "STOP SLAVE")
        await fetch(ctl, "START SLAVE")
        await fetch(ctl, "SET GLOBAL read_only = OFF")
        await fetch(ctl, "SET GLOBAL read_only = ON")
        await fetch(ctl, "SET GLOBAL rpl_semi_sync_slave_enabled = ON")
        await fetch(ctl, "SET GLOBAL rpl_semi_sync_master_timeout = %s", (2000,))
        await fetch(ctl, "KILL CONNECTION %s", (victim.server_thread_id[0],))
        with pytest.raises(pymysql.err.OperationalError):
            await fetch(victim, "SELECT 1")
        with pytest.raises(pymysql.err.OperationalError) as err:
            await fetch(ctl, "SELECT COUNT(*) FROM app.writes")
        assert err.value.args[0] == ER_TABLEACCESS_DENIED
        [(read_only,)] = await fetch(ctl, "SELECT @@read_only")
        assert read_only == 1
        [slave] = await fetch_dicts(ctl, "SHOW ALL SLAVES STATUS")
        assert slave["Slave_SQL_Running"] == "Yes"
    finally:
        ctl.close()
        victim.close()


@pytest.mark.integration
def test_generated_settings_point_at_the_sandbox(sandbox: Sandbox) -> None:
    info = sandbox.status()
    doc = tomllib.loads(Path(info.settings).read_text())
    assert doc["cluster"]["name"] == "sandbox"
    assert [(n["name"], n["host"], n["port"]) for n in doc["nodes"]] == [
        (n.name, n.host, n.port) for n in info.nodes
    ]
    assert set(doc["nodes"][0]) == {"name", "host", "port", "priority", "no_promote"}
    assert doc["mysql"]["user"] == "hacontrol"
    assert doc["mysql"]["replication_user"] == "repl"
    for key, role in (
        ("password_file", "controller"),
        ("replication_password_file", "replication"),
    ):
        path = Path(doc["mysql"][key])
        assert path.is_absolute()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().strip() == sandbox.password(role)
    assert doc["router"]["kind"] == info.router.kind
    assert doc["router"]["primary_is_reader"] is True
    if info.router.kind == "haproxy":
        assert doc["router"]["haproxy"] == {
            "socket": info.router.admin,
            "writer_backend": "writer",
            "reader_backend": "readers",
        }
        assert Path(info.router.admin).is_socket()
    else:
        proxysql = doc["router"]["proxysql"]
        assert (proxysql["host"], proxysql["port"]) == ("127.0.0.1", info.router.admin_port)
        assert proxysql["user"] == "admin"
        secret = Path(proxysql["password_file"])
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert len(secret.read_text().strip()) >= 20 and secret.read_text().endswith("\n")
    assert set(doc) == {
        "cluster",
        "nodes",
        "mysql",
        "router",
        "probes",
        "failover",
        "smtp",
        "api",
        "lease",
        "controller",
        "rebuild",
    }
    rebuild = doc["rebuild"]
    assert rebuild["datadirs"] == {n.name: n.datadir for n in info.nodes}
    assert rebuild["stop_target"][-4:] == ["--node", "{target}", "--dir", str(sandbox.dir)]
    assert Path(rebuild["backup_password_file"]).read_text().strip() == sandbox.password("root")
    assert doc["api"]["port"] == info.nodes[-1].port + 4  # after the router's three ports
    token = Path(doc["api"]["token_file"])
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text().strip()
    assert doc["controller"]["journal"] == str(sandbox.dir / "state" / "journal.jsonl")


@pytest.mark.integration
def test_cli_status_json_has_the_documented_shape(sandbox: Sandbox) -> None:
    result = cli("status", "--dir", sandbox.status().dir, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["settings"] == sandbox.status().settings
    assert [{k: n[k] for k in ("name", "host", "port", "pid", "role")} for n in doc["nodes"]] == [
        {"name": n.name, "host": n.host, "port": n.port, "pid": n.pid, "role": n.role}
        for n in sandbox.status().nodes
    ]
    assert all(sandbox.node_pid(n["name"]) == n["pid"] for n in doc["nodes"])
    assert [n["live_role"] for n in doc["nodes"]] == ["primary", "replica", "replica"]
    router = sandbox.status().router
    assert {
        k: doc["router"][k] for k in ("kind", "host", "writer_port", "reader_port", "admin")
    } == {
        "kind": router.kind,
        "host": "127.0.0.1",
        "writer_port": router.writer_port,
        "reader_port": router.reader_port,
        "admin": router.admin,
    }
    assert doc["users"]["app"] == {
        "user": "app",
        "password": sandbox.password("app"),
        "password_file": sandbox.status().users["app"].password_file,
    }
    assert doc["users"]["controller"]["user"] == "hacontrol"
    assert doc["users"]["replication"]["user"] == "repl"


@pytest.mark.integration
def test_cli_status_table_is_readable(sandbox: Sandbox) -> None:
    result = cli("status", "--dir", sandbox.status().dir)
    assert result.returncode == 0, result.stderr
    for node in sandbox.status().nodes:
        assert f"{node.name}  127.0.0.1:{node.port}" in result.stdout
    assert f"writer 127.0.0.1:{sandbox.status().router.writer_port}" in result.stdout


@pytest.mark.integration
def test_up_twice_says_already_running_and_changes_nothing(sandbox: Sandbox) -> None:
    info = sandbox.status()
    state = (Path(info.dir) / "sandbox.json").read_bytes()
    result = cli("up", "--dir", info.dir, "--base-port", str(info.nodes[0].port))
    assert result.returncode == 0, result.stderr
    assert "already running" in result.stdout
    assert (Path(info.dir) / "sandbox.json").read_bytes() == state
    assert [sandbox.node_pid(n.name) for n in info.nodes] == [n.pid for n in info.nodes]
    assert sandbox.router_pid() == info.router.pid


def squat_reader_port() -> tuple[int, socket.socket]:
    """A free base port and a listener on its reader port (base + 4 in a 3-node sandbox).
    Another process may take the port between the search and the bind: search again."""
    for _ in range(20):
        base = find_free_base_port(6)
        squatter = socket.socket()
        try:
            squatter.bind(("127.0.0.1", base + 4))
        except OSError:
            squatter.close()
            continue
        squatter.listen()
        return base, squatter
    raise AssertionError("no free port range to squat in 20 tries")


@pytest.mark.integration
async def test_busy_port_fails_before_starting_anything(tmp_path: Path) -> None:
    base, squatter = squat_reader_port()
    with squatter:
        target = tmp_path / "sb"
        with pytest.raises(PortBusyError) as err:
            await Sandbox(SandboxSpec(dir=target, base_port=base)).up()
        assert err.value.port == base + 4
        assert not exists(target)
        result = cli("up", "--dir", str(target), "--base-port", str(base))
    assert result.returncode == 1
    assert f"port {base + 4}" in result.stderr
    assert "reader" in result.stderr
    assert not exists(target)


# ---- destructive tests (own sandbox) ------------------------------------------------------------


@pytest.mark.integration
async def test_nodes_restart_under_cpu_load(fresh_sandbox: Sandbox) -> None:
    # The drill's restore once read a node as dead at start ("mariadbd node1 exited at start")
    # on a machine busy with a compile: restart a replica again and again with every core busy.
    sb = fresh_sandbox
    burners = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", "while True: pass")
        for _ in range(2 * (os.cpu_count() or 1))
    ]
    try:
        for _ in range(5):
            assert sb.kill_node("node3", signal.SIGKILL)
            await eventually(lambda: sb.node_pid("node3") is None, 10, "node3 dead")
            pid = await sb.start_node("node3")
            assert sb.node_pid("node3") == pid
            assert sb.process_states()["node3"] == "running"
            assert (await sb.live_roles())["node3"] == "replica"
    finally:
        for burner in burners:
            burner.kill()
            await burner.wait()


@pytest.mark.integration
async def test_killed_and_frozen_nodes_restart_and_rejoin(fresh_sandbox: Sandbox) -> None:
    sb = fresh_sandbox
    old_pid = sb.node_pid("node2")
    assert sb.kill_node("node2", signal.SIGKILL)

    async def node2_gone() -> bool:
        return sb.node_pid("node2") is None

    await eventually(node2_gone, 5, "node2 dead")
    row_id = unique_id()
    writer = await sb.connect("writer", "app", db="app")
    try:  # the primary keeps taking writes with one replica gone (node3 acknowledges)
        await fetch(writer, "INSERT INTO writes (id, node) VALUES (%s, 1)", (row_id,))
    finally:
        writer.close()
    new_pid = await sb.start_node("node2")
    assert new_pid != old_pid and sb.node_pid("node2") == new_pid
    assert sb.status().node("node2").pid == new_pid

    async def node2_has_row() -> bool:
        conn = await sb.connect("node2", "app", db="app")
        try:
            return bool(await fetch(conn, "SELECT 1 FROM writes WHERE id = %s", (row_id,)))
        finally:
            conn.close()

    await eventually(node2_has_row, 5, "restarted node2 caught up")

    assert sb.kill_node("node3", signal.SIGSTOP)
    assert sb.process_states()["node3"] == "stopped"
    assert (await sb.live_roles(timeout=0.5))["node3"] == "unreachable"
    assert sb.kill_node("node3", signal.SIGCONT)
    assert sb.process_states()["node3"] == "running"
    assert (await sb.live_roles())["node3"] == "replica"

    # A killed primary restarts on the same port and the replicas reconnect by themselves.
    assert sb.kill_node("node1", signal.SIGKILL)
    await sb.start_node("node1")

    async def replicas_connected() -> bool:
        conn = await sb.connect("node1", "controller")
        try:
            status = dict(
                await fetch(conn, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_clients'")
            )
            return status["Rpl_semi_sync_master_clients"] == "2"
        finally:
            conn.close()

    started = time.monotonic()
    await eventually(replicas_connected, 10, "replicas reconnected to the restarted primary")
    took = time.monotonic() - started
    print(f"\nreplicas reconnected {took:.2f} s after the primary restarted")


@pytest.mark.integration
async def test_down_stops_everything_and_removes_the_directory(fresh_sandbox: Sandbox) -> None:
    sb = fresh_sandbox
    info = sb.status()
    pids = {n.name: n.pid for n in info.nodes} | {"router": info.router.pid}
    markers = {n.name: n.config for n in info.nodes} | {"router": info.router.config}
    sb.kill_node("node3", signal.SIGKILL)  # already dead before down
    sb.kill_node("node2", signal.SIGSTOP)  # frozen: must be killed too
    started = time.monotonic()
    assert await sb.down()
    took = time.monotonic() - started
    for name, pid in pids.items():
        assert procs.process_state(pid, markers[name]) == "dead", name
    assert not exists(info.dir)
    assert took < 8.0
    assert not await sb.down()  # nothing left: a second down is a no-op


@pytest.mark.integration
async def test_up_over_a_dead_sandbox_starts_afresh(fresh_sandbox: Sandbox) -> None:
    sb = fresh_sandbox
    old = sb.status()
    old_app_password = sb.password("app")
    for node in old.nodes:
        assert sb.kill_node(node.name, signal.SIGKILL)
    os.kill(old.router.pid, signal.SIGKILL)
    assert procs.wait_state(old.router.pid, old.router.config, "dead", timeout=2)
    assert not sb.is_running()
    new = await sb.up()
    assert [n.pid for n in new.nodes] != [n.pid for n in old.nodes]
    assert all(sb.node_pid(n.name) == n.pid for n in new.nodes)
    assert sb.password("app") != old_app_password  # new secrets per sandbox
    writer = await sb.connect("writer", "app", db="app")
    try:
        assert await fetch(writer, "SELECT COUNT(*) FROM writes") == [(0,)]
    finally:
        writer.close()


@pytest.mark.integration
async def test_a_fleet_sandbox_starts_routers_and_controllers_and_stops_them(
    tmp_path: Path,
) -> None:
    """``--routers 2 --controllers 2``: two routers, each with its own controller (its own
    API, journal and log); one of them leads and both routers route to the primary."""
    from tests.sandbox_fixtures import skip_without_servers

    skip_without_servers()
    spec = SandboxSpec(
        dir=tmp_path / "sb", base_port=find_free_base_port(3 + 8), routers=2, controllers=2
    )
    sb = Sandbox(spec)
    try:
        info = await sb.up()
        assert [c.name for c in info.controllers] == ["c1", "c2"]
        assert {c.router for c in info.controllers} == {0, 1}
        states = sb.process_states()
        assert {states[n] for n in ("router", "router2", "c1", "c2")} == {"running"}

        def fleet(c) -> dict:
            url = f"http://127.0.0.1:{c.api_port}/status"
            with urllib.request.urlopen(url, timeout=2) as answer:
                return json.loads(answer.read())["fleet"]

        async def one_leader_routing_node1() -> bool:
            views = [await asyncio.to_thread(fleet, c) for c in info.controllers]
            return sum(v["leader"] for v in views) == 1 and all(
                v["router_agrees"] and v["published_primary"] == "node1" for v in views
            )

        await eventually(one_leader_routing_node1, 20, "one leader publishing node1")
        assert {fleet(c)["instance"] for c in info.controllers} == {"c1", "c2"}
        log = await asyncio.to_thread(Path(info.controllers[1].log).read_text)
        assert log.count('"event":"started"') == 1
        assert sb.kill_controller("c2")
        assert sb.process_states()["c2"] == "dead"
        await sb.start_controller("c2")
        assert sb.process_states()["c2"] == "running"
    finally:
        pids = [(c.pid, c.settings) for c in sb.status().controllers]
        await sb.down()
    assert all(procs.process_state(pid, marker) == "dead" for pid, marker in pids)
    assert not exists(str(tmp_path / "sb"))


# ---- several clusters behind one router (--clusters N) -----------------------------------------


def test_several_clusters_have_their_nodes_then_the_router_then_their_own_ports() -> None:
    spec = SandboxSpec(dir=Path("/sb"), base_port=30000, clusters=3, nodes=2)
    assert [spec.node_name(i) for i in spec.cluster_nodes(1)] == ["node3", "node4"]
    assert [spec.cluster_name(k) for k in range(3)] == ["c1", "c2", "c3"]
    assert SandboxSpec(dir=Path("/sb")).cluster_name(0) == "sandbox"  # one cluster: as always
    assert spec.router_port(0, 0) == 30006  # after the six nodes
    assert [spec.cluster_port(k, 0) for k in range(3)] == [30006, 30010, 30012]
    assert len({port for port, _ in spec.ports()}) == spec.port_count == 6 + 4 + 2 * 2
    assert render.hostgroups(1) == {"writer": 110, "reader": 120, "broken": 130, "hidden": 140}
    with pytest.raises(SandboxError, match="--clusters must be between 1 and 4, got 5"):
        SandboxSpec(dir=Path("/sb"), clusters=5)
    with pytest.raises(SandboxError, match="--clusters with --routers, --tls is not offered"):
        SandboxSpec(dir=Path("/sb"), clusters=2, routers=2, tls=True)


def test_proxysql_routes_each_clusters_user_to_its_own_hostgroups() -> None:
    nodes, router, clusters = two_clusters()
    cnf = render.proxysql_cnf(
        nodes,
        router,
        datadir="/sb/router",
        admin_password="adm",
        app_password="unused",
        monitor_password="mon",
        clusters=clusters,
        app_passwords={"app_c1": "pw1", "app_c2": "pw2"},
    )
    lines = [line.strip().rstrip(",") for line in cnf.splitlines()]
    servers = [line for line in lines if line.startswith("{ address=")]
    assert servers == [
        f'{{ address="127.0.0.1", port={port}, hostgroup={hg} }}'
        for port, hg in [(30000, 10), (30000, 20), (30001, 20), (30002, 20),
                         (30003, 110), (30003, 120), (30004, 120), (30005, 120)]
    ]  # fmt: skip
    users = [line for line in lines if line.startswith("{ username=")]
    assert users == [
        '{ username="app_c1", password="pw1", default_hostgroup=10, transaction_persistent=1 }',
        '{ username="app_c2", password="pw2", default_hostgroup=110, transaction_persistent=1 }',
    ]
    rules = [line for line in lines if line.startswith("{ rule_id=")]
    assert [r.split(",")[0] for r in rules] == [f"{{ rule_id={i}" for i in (11, 12, 13, 21, 22, 23)]
    assert all('username="app_c2"' in r for r in rules[3:])  # every rule names its user
    assert "proxy_port=30007, destination_hostgroup=120" in rules[3]
    assert 'match_digest="^SELECT.*FOR UPDATE", destination_hostgroup=110' in rules[4]
    assert 'match_digest="^SELECT", destination_hostgroup=120, retries=1' in rules[5]


def test_haproxy_has_a_backend_pair_per_cluster_on_its_own_ports() -> None:
    nodes, router, clusters = two_clusters("haproxy")
    cfg = render.haproxy_cfg(nodes, router, clusters)
    blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in cfg.split("\n\n") if b.strip()}
    writer_front = ["    bind 127.0.0.1:30010", "    default_backend writer_c2"]
    assert blocks["frontend writer_front_c2"] == writer_front
    assert blocks["frontend readers_front_c1"][0] == "    bind 127.0.0.1:30007"
    assert blocks["backend writer_c2"][1:] == [
        "    server node4 127.0.0.1:30003",
        "    server node5 127.0.0.1:30004 disabled",
        "    server node6 127.0.0.1:30005 disabled",
    ]
    readers = [line.split()[1] for line in blocks["backend readers_c1"][1:]]
    assert readers == ["node1", "node2", "node3"]
    assert cfg.count("stats socket /sb/haproxy.sock") == 1  # one runtime socket for all


@pytest.mark.parametrize("kind", ["proxysql", "haproxy"])
def test_the_settings_of_several_clusters_are_in_the_clusters_form(
    kind: str, tmp_path: Path
) -> None:
    from hacontrol.settings import load_settings

    nodes, router, clusters = two_clusters(kind)
    secrets = {}
    for name in ("h", "r", "p", "root"):
        secrets[name] = tmp_path / name
        secrets[name].write_text(f"{name}-secret\n")
    text = render.settings_toml(
        nodes,
        router,
        controller_password_file=str(secrets["h"]),
        replication_password_file=str(secrets["r"]),
        proxysql_password_file=str(secrets["p"]),
        journal=str(tmp_path / "state" / "journal.jsonl"),
        rebuild=render.RebuildAccess("/sb", str(secrets["root"]), "/py"),
        clusters=clusters,
    )
    (tmp_path / "settings.toml").write_text(text)
    loaded = load_settings(tmp_path / "settings.toml")  # as `hacontrol run` reads it
    assert loaded.form == "clusters" and loaded.names == ("c1", "c2")
    c2 = loaded.pick("c2")
    assert [n.name for n in c2.nodes] == ["node4", "node5", "node6"]
    assert c2.controller.journal == tmp_path / "state" / "journal.c2.jsonl"
    assert c2.rebuild.datadirs == {f"node{i}": f"/sb/node{i}/data" for i in (4, 5, 6)}
    if kind == "proxysql":
        assert c2.router.proxysql.writer_hostgroup == 110
        assert loaded.pick("c1").router.proxysql.hidden_hostgroup == 40
    else:
        assert c2.router.haproxy.writer_backend == "writer_c2"
    doc = tomllib.loads(text)
    assert "cluster" not in doc and "nodes" not in doc  # one form only
    assert [c["name"] for c in doc["clusters"]] == ["c1", "c2"]
    assert [n["name"] for n in doc["clusters"][1]["nodes"]] == ["node4", "node5", "node6"]
    assert doc["clusters"][1]["rebuild"]["datadirs"]["node4"] == "/sb/node4/data"
    assert "datadirs" not in doc["rebuild"] and doc["rebuild"]["stop_target"]
    if kind == "proxysql":
        assert "writer_hostgroup" not in doc["router"]["proxysql"]  # each cluster names its own
        assert doc["router"]["proxysql"]["port"] == 30008  # the one admin, shared
    else:
        assert "writer_backend" not in doc["router"]["haproxy"]


@pytest.mark.integration
async def test_two_clusters_behind_one_router_each_get_their_own_writes(tmp_path: Path) -> None:
    """``--clusters 2``: one router process; each cluster's application user (ProxySQL) or
    ports (HAProxy) reach its own primary, and its writes replicate inside it only."""
    from tests.sandbox_fixtures import running_sandbox

    with running_sandbox(tmp_path / "sb", clusters=2) as sb:
        info = sb.status()
        assert [c.name for c in info.clusters] == ["c1", "c2"]
        assert [n.name for n in info.nodes_of("c2")] == ["node4", "node5", "node6"]
        assert len(info.routers) == 1
        marker = unique_id()
        for k, cluster in enumerate(("c1", "c2")):
            conn = await sb.connect("writer", "app", cluster=cluster)
            try:  # @@server_id: the node that ran the write (row-based: replicated as such)
                await fetch(conn, "INSERT INTO app.writes (id, node) VALUES (%s, @@server_id)",
                            (marker + k,))  # fmt: skip
            finally:
                conn.close()

        async def seen(node: str) -> set[tuple[int, int]]:
            conn = await root_conn(sb, node)
            try:
                rows = await fetch(conn, "SELECT id, node FROM app.writes WHERE id >= %s", marker)
                return {(int(i), int(n)) for i, n in rows}
            finally:
                conn.close()

        for node, expected in (("node3", {(marker, 1)}), ("node6", {(marker + 1, 4)})):

            async def replicated(node: str = node, expected: set = expected) -> bool:
                return await seen(node) == expected

            await eventually(replicated, 10, f"only its own cluster's write on {node}")
        document = json.loads(cli("status", "--json", "--dir", info.dir).stdout)
        assert [c["app"]["user"] for c in document["clusters"]] == ["app_c1", "app_c2"]
        checked = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "hacontrol", "check-config", "--config", info.settings],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stderr
        assert sorted(json.loads(checked.stdout)["clusters"]) == ["c1", "c2"]
        table = cli("status", "--dir", info.dir).stdout
        assert "cluster c2: node4, node5, node6" in table
