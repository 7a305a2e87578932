"""Pure text builders for the sandbox: my.cnf, haproxy.cfg, proxysql.cnf, settings.toml, SQL.

No I/O here; `cluster.py` writes and runs what these return.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hacontrol.sandbox.model import HOSTGROUP_STRIDE, ClusterInfo, NodeInfo, RouterInfo
from hacontrol.sandbox.tls import SandboxTls

# Replication timing, chosen so a failover test sees a dead source within a few seconds:
# a killed source closes its TCP connection and replicas notice at once; a frozen or partitioned
# one is noticed when no event or heartbeat arrived for SLAVE_NET_TIMEOUT seconds.
HEARTBEAT_PERIOD = 0.5
SLAVE_NET_TIMEOUT = 1
# Semi-sync that never falls back to asynchronous replication: a commit waits for a replica's
# acknowledgement for up to 49.7 days (the largest 32-bit value, accepted by every MariaDB and
# MySQL), and with rpl_semi_sync_master_wait_no_slave=ON it waits even when no replica is
# connected. So a primary cut off from every replica acknowledges no write at all (a client
# connected straight to it waits, and gets an error when the old primary is fenced), and a
# failover can never lose an acknowledged write. The cost: a primary whose replicas are all
# down stops taking writes (docs/partitions.md).
SEMI_SYNC_TIMEOUT_MS = 4294967295

# The InnoDB sizing must be the same for the template (mariadb-install-db) and for the nodes.
INNODB_OPTIONS = {
    "innodb_buffer_pool_size": "64M",
    "innodb_log_file_size": "16M",
}

# Least privilege for the controller, each one verified on MariaDB 10.11 by running the statement
# as that user with the privilege removed:
#   SLAVE MONITOR             SHOW [ALL] SLAVE[S] STATUS
#   BINLOG MONITOR            SHOW MASTER STATUS, SHOW BINARY LOGS
#   REPLICATION SLAVE ADMIN   STOP/START SLAVE, CHANGE MASTER, SET GLOBAL gtid_slave_pos,
#                             rpl_semi_sync_slave_*, slave_net_timeout
#   RELOAD                    RESET SLAVE ALL (10.11 refuses it with REPLICATION SLAVE ADMIN alone)
#   REPLICATION MASTER ADMIN  SET GLOBAL rpl_semi_sync_master_*, SHOW SLAVE HOSTS
#   READ_ONLY ADMIN           SET GLOBAL read_only (it also lets the controller write on a
#                             read-only node; the controller never does)
#   CONNECTION ADMIN          KILL other users' connections (fencing)
#   PROCESS                   see other users' threads in the processlist
# Needs no privilege: SELECT @@gtid_*, SHOW GLOBAL STATUS/VARIABLES, MASTER_GTID_WAIT().
CONTROLLER_PRIVILEGES = (
    "PROCESS, RELOAD, SLAVE MONITOR, BINLOG MONITOR, REPLICATION SLAVE ADMIN, "
    "REPLICATION MASTER ADMIN, READ_ONLY ADMIN, CONNECTION ADMIN"
)
REPLICATION_PRIVILEGES = "REPLICATION SLAVE"
APP_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER"
# ProxySQL's monitor: its connect and ping checks need only a login; SLAVE MONITOR lets its
# replication lag check (SHOW SLAVE STATUS, only for rows with max_replication_lag > 0) work,
# as ProxySQL's documentation asks (REPLICATION CLIENT before MariaDB 10.5). Nothing else.
MONITOR_PRIVILEGES = "SLAVE MONITOR"
APP_DATABASE = "app"


def grants(app_user: str = "app") -> tuple[str, ...]:
    """Every grant of the sandbox's users; ``app_user``: the cluster's application user."""
    return (
        f"GRANT {CONTROLLER_PRIVILEGES} ON *.* TO 'hacontrol'@'%'",
        f"GRANT {REPLICATION_PRIVILEGES} ON *.* TO 'repl'@'%'",
        f"GRANT {APP_PRIVILEGES} ON `{APP_DATABASE}`.* TO {sql_string(app_user)}@'%'",
        f"GRANT {MONITOR_PRIVILEGES} ON *.* TO 'monitor'@'%'",
    )


USERS = {"controller": "hacontrol", "replication": "repl", "app": "app", "monitor": "monitor"}

APP_TABLE = (
    "CREATE TABLE app.writes (id BIGINT PRIMARY KEY, node INT, "
    "ts TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB"
)


def sql_string(value: str) -> str:
    """Quote a value as an SQL string literal (passwords are generated, this is belt and braces)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


GRANTS = grants()


def app_user(cluster: str, clusters: int) -> str:
    """The application user of a cluster: "app" alone, "app_c2" among several (ProxySQL routes
    each cluster's traffic by its user: docs/proxysql.md)."""
    return "app" if clusters == 1 else f"app_{cluster}"


def hostgroups(index: int) -> dict[str, int]:
    """Cluster ``index``'s hostgroups: 10/20/30/40, 110/120/130/140 ..."""
    return {k: v + HOSTGROUP_STRIDE * index for k, v in PROXYSQL_HOSTGROUPS.items()}


def node_cnf(
    node: NodeInfo,
    *,
    primary: bool,
    run_as_root: bool,
    has_replicas: bool = True,
    tls: SandboxTls | None = None,
) -> str:
    """The node's my.cnf: the whole configuration, like a production server's config file.

    A one-node sandbox keeps semi-sync off on its primary: with no replica to acknowledge,
    every commit would wait for the semi-sync timeout.
    """
    options = [
        *_server_files(node),
        *_replication_options(node, primary=primary, has_replicas=has_replicas),
        *_sandbox_durability(),
    ]
    if run_as_root:
        options.insert(0, ("user", "root"))  # mariadbd refuses to run as root without it
    if tls is not None:
        options += [
            ("ssl_ca", tls.ca),
            ("ssl_cert", tls.cert("server")),
            ("ssl_key", tls.key("server")),
        ]
    role = "primary" if primary else "replica"
    lines = [f"# hacontrol sandbox {node.name}: {role} when the sandbox was created", "[mysqld]"]
    lines += [f"{key} = {value}" for key, value in options]
    return "\n".join(lines) + "\n"


def _server_files(node: NodeInfo) -> list[tuple[str, object]]:
    """Where the node keeps its files and listens."""
    return [
        ("datadir", node.datadir),
        ("socket", node.socket),
        ("pid-file", f"{node.node_dir}/mysqld.pid"),
        ("log-error", f"{node.node_dir}/error.log"),
        # A tmpdir of its own: at start a server deletes every '#sql*' file in its tmpdir, so
        # with a shared /tmp any server starting on the machine deleted the internal temporary
        # tables of queries running on the others (error 6, "Error on delete of
        # '/tmp/#sql-temptable-...'", seen failing a fence in the chaos drill).
        ("tmpdir", f"{node.node_dir}/tmp"),
        ("port", node.port),
        ("bind-address", node.host),
        ("skip-name-resolve", "ON"),
    ]


def _replication_options(
    node: NodeInfo, *, primary: bool, has_replicas: bool
) -> list[tuple[str, object]]:
    """Binary log, GTID, read_only and semi-sync as the node's role at creation wants them."""
    return [
        ("server_id", node.server_id),
        ("gtid_domain_id", 0),
        ("log_bin", "mysql-bin"),
        ("relay_log", "relay-bin"),
        ("binlog_format", "ROW"),
        ("log_slave_updates", "ON"),
        ("gtid_strict_mode", "ON"),
        ("read_only", "OFF" if primary else "ON"),
        ("rpl_semi_sync_master_enabled", "ON" if primary and has_replicas else "OFF"),
        ("rpl_semi_sync_slave_enabled", "ON"),
        ("rpl_semi_sync_master_wait_point", "AFTER_SYNC"),
        ("rpl_semi_sync_master_timeout", SEMI_SYNC_TIMEOUT_MS),
        ("rpl_semi_sync_master_wait_no_slave", "ON"),
        ("slave_net_timeout", SLAVE_NET_TIMEOUT),
        ("report_host", node.host),
        ("report_port", node.port),
    ]


def _sandbox_durability() -> list[tuple[str, object]]:
    """Durable against a killed process (what the tests do), not against a host crash:
    commits reach the OS at once, fsync is left to the OS. Keeps the 2-core machine fast."""
    return [
        ("sync_binlog", 0),
        ("innodb_flush_log_at_trx_commit", 2),
        ("performance_schema", "OFF"),
        ("max_connections", 200),
        *INNODB_OPTIONS.items(),
    ]


def template_cnf(datadir: str, *, run_as_root: bool) -> str:
    lines = ["[mysqld]", f"datadir = {datadir}", "skip-networking", "performance_schema = OFF"]
    lines.append(f"tmpdir = {os.path.dirname(datadir)}")  # its own, like the nodes' (node_cnf)
    lines += [f"{key} = {value}" for key, value in INNODB_OPTIONS.items()]
    if run_as_root:
        lines.insert(1, "user = root")
    return "\n".join(lines) + "\n"


def setup_primary_sql(
    passwords: dict[str, str], root_password: str, *, tls: bool = False, app: str = "app"
) -> list[str]:
    """Run on the primary with the binary log on, before replicas attach, so all of it replicates.

    mariadb-install-db leaves root@<hostname>, root@127.0.0.1 and root@::1 with no password and,
    depending on options, anonymous ''@localhost / ''@<hostname> users that shadow real users;
    the caller drops those first (their host names are only known at run time).

    ``tls``: the controller's user must present a certificate the CA signed (REQUIRE X509) and
    the replication user must use TLS (REQUIRE SSL): the server itself refuses them in clear.
    ``app``: the application user's name (one per cluster among several; ``passwords["app"]``).
    """
    pw = {role: sql_string(p) for role, p in passwords.items()}
    controller, replication = (" REQUIRE X509", " REQUIRE SSL") if tls else ("", "")
    return [
        f"ALTER USER 'root'@'localhost' IDENTIFIED BY {sql_string(root_password)}",
        f"CREATE USER 'hacontrol'@'%' IDENTIFIED BY {pw['controller']}{controller}",
        f"CREATE USER 'repl'@'%' IDENTIFIED BY {pw['replication']}{replication}",
        f"CREATE USER {sql_string(app)}@'%' IDENTIFIED BY {pw['app']}",
        f"CREATE USER 'monitor'@'%' IDENTIFIED BY {pw['monitor']}",
        *grants(app),
        f"CREATE DATABASE `{APP_DATABASE}`",
        APP_TABLE,
    ]


def change_master_sql(primary: NodeInfo, repl_password: str, tls: SandboxTls | None = None) -> str:
    ssl = (
        f", MASTER_SSL=1, MASTER_SSL_CA={sql_string(str(tls.ca))}, MASTER_SSL_VERIFY_SERVER_CERT=1"
        if tls is not None
        else ""
    )
    return (
        f"CHANGE MASTER TO MASTER_HOST={sql_string(primary.host)}, MASTER_PORT={primary.port}, "
        f"MASTER_USER='repl', MASTER_PASSWORD={sql_string(repl_password)}, "
        f"MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, "
        f"MASTER_HEARTBEAT_PERIOD={HEARTBEAT_PERIOD}{ssl}"
    )


def haproxy_cfg(
    nodes: tuple[NodeInfo, ...], router: RouterInfo, clusters: tuple[ClusterInfo, ...] = ()
) -> str:
    """HAProxy in front of the nodes. The controller owns server state; HAProxy checks nothing.

    Timeouts: a connection to a dead backend is refused at once on loopback, but HAProxy
    retries it `retries` times with a turn-around wait of min(timeout connect, 1 s) between
    tries, so the defaults (3 retries) made a client wait 3 s for an error during a failover.
    With `retries 0` the client gets its error at once and reconnects, landing on the new
    writer as soon as the controller switched it. `timeout connect 1s` bounds a connect to a
    partitioned host. Client/server timeouts are long because database sessions idle.

    ``clusters`` (several): a writer/reader backend pair per cluster, each behind frontends on
    the cluster's own ports, over the one runtime socket.
    """
    head = [
        "# hacontrol sandbox router; server names are the node names of settings.toml",
        "global",
        "    maxconn 2000",
        f"    stats socket {router.admin} mode 600 level admin",
        f"    stats socket ipv4@{router.host}:{router.admin_port} level admin",
        "    stats timeout 1m",
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 1s",
        "    timeout client 1h",
        "    timeout server 1h",
        "    timeout queue 1s",
        "    retries 0",
        "",
    ]
    if not clusters:
        pair = _haproxy_pair(nodes, router, ("writer", "readers"), "", router.writer_port,
                             router.reader_port)  # fmt: skip
        return "\n".join(head + pair)
    for cluster in clusters:
        members = tuple(n for n in nodes if n.name in cluster.nodes)
        head += _haproxy_pair(
            members,
            router,
            (cluster.writer_backend, cluster.reader_backend),
            f"_{cluster.name}",
            cluster.writer_port,
            cluster.reader_port,
        )
    return "\n".join(head)


def _haproxy_pair(
    nodes: tuple[NodeInfo, ...],
    router: RouterInfo,
    backends: tuple[str, str],
    suffix: str,
    writer_port: int,
    reader_port: int,
) -> list[str]:
    """One cluster's frontends and its writer/reader backends (the writer: the primary only)."""
    primary = next(n for n in nodes if n.role == "primary")
    writer = [
        f"    server {n.name} {n.host}:{n.port}" + ("" if n is primary else " disabled")
        for n in nodes
    ]
    readers = [f"    server {n.name} {n.host}:{n.port}" for n in nodes]
    writer_socket = [f"    bind unix@{path} mode 666" for path in [router.writer_socket] if path]
    reader_socket = [f"    bind unix@{path} mode 666" for path in [router.reader_socket] if path]
    return [
        f"frontend writer_front{suffix}",
        f"    bind {router.host}:{writer_port}",
        *writer_socket,
        f"    default_backend {backends[0]}",
        "",
        f"frontend readers_front{suffix}",
        f"    bind {router.host}:{reader_port}",
        *reader_socket,
        f"    default_backend {backends[1]}",
        "",
        f"backend {backends[0]}",
        "    balance first",
        *writer,
        "",
        f"backend {backends[1]}",
        "    balance roundrobin",
        *readers,
        "",
    ]


# ---- ProxySQL (the router when a `proxysql` binary is on PATH; docs/proxysql.md) ----------------
PROXYSQL_HOSTGROUPS = {"writer": 10, "reader": 20, "broken": 30, "hidden": 40}

# ProxySQL's MySQL variables as the sandbox sets them, each with why (docs/proxysql.md, "Settings
# that shape a failover"). Values are milliseconds where the name says timeout/interval/delay.
PROXYSQL_MYSQL_VARIABLES: dict[str, int | str] = {
    "threads": 2,  # the sandbox machine has 2 cores
    # A client's statement that finds no usable writer (the dead one shunned, or the writer
    # hostgroup empty during the controller's two-step change) is held and retried, not
    # refused, for up to connect_timeout_server_max: that is what makes a failover a pause.
    "connect_retries_on_failure": 10,
    "connect_retries_delay": 1,
    "connect_timeout_server": 1000,  # one connect attempt (a frozen node accepts TCP, then nothing)
    "connect_timeout_server_max": 10000,  # must exceed detection + promotion + route
    # Never re-send a statement whose connection broke: a write may have committed on the old
    # primary (its client never got the OK); re-running it on the new one applies it twice or
    # fails with a duplicate key. The reader rules below allow one retry: SELECTs are safe.
    "query_retries_on_failure": 0,
    "shun_on_failures": 5,  # connect errors in one second before ProxySQL shuns a backend
    "shun_recovery_time_sec": 10,
    # The monitor pings every backend; one that misses 3 pings is shunned and its connections
    # killed. 1 s keeps that inside the failover budget on loopback.
    "monitor_ping_interval": 1000,
    "monitor_ping_timeout": 500,
    "monitor_ping_max_failures": 3,
    "monitor_connect_interval": 10000,
}


def proxysql_rule_lines(reader_port: int) -> list[str]:
    """The classic read/write split, plus a reader port whose statements all go to readers.

    The reader rules may retry a SELECT once on another connection; writes are never retried.
    """
    writer, reader = PROXYSQL_HOSTGROUPS["writer"], PROXYSQL_HOSTGROUPS["reader"]
    return [
        f"    {{ rule_id=1, active=1, proxy_port={reader_port}, "
        f"destination_hostgroup={reader}, retries=1, apply=1 }},",
        f'    {{ rule_id=2, active=1, match_digest="^SELECT.*FOR UPDATE", '
        f"destination_hostgroup={writer}, apply=1 }},",
        f'    {{ rule_id=3, active=1, match_digest="^SELECT", '
        f"destination_hostgroup={reader}, retries=1, apply=1 }}",
    ]


def proxysql_cluster_rule_lines(reader_port: int, clusters: tuple[ClusterInfo, ...]) -> list[str]:
    """The same split per cluster, each rule limited to the cluster's application user: rules
    10k+1..10k+3 for cluster k (1-based). What no rule matches goes to the user's
    default_hostgroup, its own cluster's writer: a statement never lands on another cluster."""
    lines = []
    for k, cluster in enumerate(clusters, start=1):
        writer, reader = cluster.hostgroups["writer"], cluster.hostgroups["reader"]
        user = f"username={json.dumps(cluster.app.user)}"
        lines += [
            f"    {{ rule_id={10 * k + 1}, active=1, {user}, proxy_port={reader_port}, "
            f"destination_hostgroup={reader}, retries=1, apply=1 }},",
            f'    {{ rule_id={10 * k + 2}, active=1, {user}, match_digest="^SELECT.*FOR UPDATE", '
            f"destination_hostgroup={writer}, apply=1 }},",
            f'    {{ rule_id={10 * k + 3}, active=1, {user}, match_digest="^SELECT", '
            f"destination_hostgroup={reader}, retries=1, apply=1 }},",
        ]
    lines[-1] = lines[-1].rstrip(",")
    return lines


@dataclass(frozen=True)
class ProxySQLRows:
    """What proxysql.cnf routes: its mysql_servers, mysql_users and mysql_query_rules lines."""

    servers: list[str]
    users: list[str]
    rules: list[str]

    @classmethod
    def of(
        cls,
        nodes: tuple[NodeInfo, ...],
        router: RouterInfo,
        app_passwords: dict[str, str],
        clusters: tuple[ClusterInfo, ...] = (),
    ) -> ProxySQLRows:
        """One cluster (``clusters`` empty): hostgroups 10/20 and the user "app"; several:
        each cluster's nodes in its own hostgroups and one user per cluster whose
        default_hostgroup is its writer."""
        if not clusters:
            servers = _proxysql_servers(nodes, PROXYSQL_HOSTGROUPS)
            users = [_proxysql_user(USERS["app"], app_passwords, PROXYSQL_HOSTGROUPS["writer"])]
            return cls(servers, users, proxysql_rule_lines(router.reader_port))
        servers, users = [], []
        for cluster in clusters:
            members = tuple(n for n in nodes if n.name in cluster.nodes)
            servers += _proxysql_servers(members, cluster.hostgroups)
            users.append(
                _proxysql_user(cluster.app.user, app_passwords, cluster.hostgroups["writer"])
            )
        return cls(servers, users, proxysql_cluster_rule_lines(router.reader_port, clusters))


def _proxysql_servers(nodes: tuple[NodeInfo, ...], groups: dict[str, int]) -> list[str]:
    primary = next(n for n in nodes if n.role == "primary")
    rows = [(primary, groups["writer"])] + [(n, groups["reader"]) for n in nodes]
    return [f'    {{ address="{n.host}", port={n.port}, hostgroup={hg} }}' for n, hg in rows]


def _proxysql_user(user: str, passwords: dict[str, str], writer: int) -> str:
    return (
        f"    {{ username={json.dumps(user)}, password={json.dumps(passwords[user])}, "
        f"default_hostgroup={writer}, transaction_persistent=1 }}"
    )


def proxysql_cnf(
    nodes: tuple[NodeInfo, ...],
    router: RouterInfo,
    *,
    datadir: str,
    admin_password: str,
    app_password: str,
    monitor_password: str,
    tls: bool = False,
    clusters: tuple[ClusterInfo, ...] = (),
    app_passwords: dict[str, str] | None = None,
) -> str:
    """proxysql.cnf as an operator writes it: admin on loopback with a generated password, the
    application user, the read/write split, the monitor user, NO mysql_replication_hostgroups
    (ProxySQL's read_only monitor would move servers and fight the controller). ``tls``:
    ``have_ssl``, under which ProxySQL 2.7 offers TLS on its admin port too (with the
    certificate in its datadir). ``clusters`` (several): each its hostgroups and its own
    application user (``app_passwords``: user -> password; ``ProxySQLRows``).

    Read on the first start only (the datadir has no proxysql.db yet); afterwards ProxySQL
    starts from what was last SAVEd TO DISK, as in production.
    """
    passwords = app_passwords or {USERS["app"]: app_password}
    rows = ProxySQLRows.of(nodes, router, passwords, clusters)
    variables = {
        **PROXYSQL_MYSQL_VARIABLES,
        "interfaces": _proxysql_interfaces(router),
        "monitor_username": USERS["monitor"],
        "monitor_password": monitor_password,
        **({"have_ssl": True} if tls else {}),
    }
    return "\n".join(
        [
            "# hacontrol sandbox: ProxySQL in front of the nodes (docs/proxysql.md)",
            f"datadir={json.dumps(datadir)}",
            *_proxysql_admin_section(router, admin_password),
            *_libconfig_group("mysql_variables", "{", "}", _libconfig_settings(variables)),
            *_libconfig_group("mysql_servers", "(", ")", [",\n".join(rows.servers)]),
            *_libconfig_group("mysql_users", "(", ")", [",\n".join(rows.users)]),
            *_libconfig_group("mysql_query_rules", "(", ")", rows.rules),
            "",
        ]
    )


def _proxysql_interfaces(router: RouterInfo) -> str:
    """Where the application connects: the writer and reader ports (and with --netns the
    writer's socket, for clients outside the sandbox's network)."""
    interfaces = f"{router.host}:{router.writer_port};{router.host}:{router.reader_port}"
    if router.writer_socket:
        interfaces += f";{router.writer_socket}"
    return interfaces


def _proxysql_admin_section(router: RouterInfo, admin_password: str) -> list[str]:
    admin = f"{router.host}:{router.admin_port}"
    if router.admin_socket:
        admin += f";{router.admin_socket}"
    return _libconfig_group(
        "admin_variables",
        "{",
        "}",
        _libconfig_settings(
            {"admin_credentials": admin_credentials(router, admin_password), "mysql_ifaces": admin}
        ),
    )


def _libconfig_group(name: str, opening: str, closing: str, body: Iterable[str]) -> list[str]:
    """``name=`` and its body between ``{ }`` (settings) or ``( )`` (a list of rows)."""
    return [f"{name}=", opening, *body, closing]


def _libconfig_settings(values: dict[str, Any]) -> list[str]:
    return [f"    {key}={_libconfig(value)}" for key, value in values.items()]


# ProxySQL lets its "admin" user log in from localhost only. A controller on a host of its own
# (--netns) needs a second admin user, with the same password.
REMOTE_ADMIN = "hcadmin"


def proxysql_admin_user(router: RouterInfo) -> str:
    return REMOTE_ADMIN if router.admin_socket else "admin"


def admin_credentials(router: RouterInfo, password: str) -> str:
    users = ["admin", *([REMOTE_ADMIN] if router.admin_socket else [])]
    return ";".join(f"{user}:{password}" for user in users)


def _libconfig(value: int | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int) else json.dumps(value)


def settings_toml(
    nodes: tuple[NodeInfo, ...],
    router: RouterInfo,
    *,
    controller_password_file: str,
    replication_password_file: str,
    proxysql_password_file: str | None = None,
    api_port: int = 0,
    api_token_file: str | None = None,
    journal: str | None = None,
    tls: SandboxTls | None = None,
    instance_id: str | None = None,
    rebuild: RebuildAccess | None = None,
    clusters: tuple[ClusterInfo, ...] = (),
) -> str:
    """settings.toml for the controller, pointing at the sandbox (schema owned by settings.py);
    with ``tls``, TLS everywhere (``tls_sections``). ``clusters`` (several): the
    ``[[clusters]]`` form, the shared sections at the top level and per cluster its nodes,
    its hostgroups or backends and its datadirs (``cluster_entries``).

    The fleet's lease is timed for the sandbox's probes: W 1 s (shorter than ``io_stall``, so
    that a primary cut off from the leader has lost the old publication before a failover
    publishes another), K 0.25 s, V 0.7 s: a takeover within a second."""
    if clusters:
        lines = [f"# written by `hacontrol sandbox up --clusters {len(clusters)}`"]
    else:
        lines = ["# written by `hacontrol sandbox up`", "[cluster]", 'name = "sandbox"', ""]
        lines += _node_lines(nodes, "nodes")
    lines += [
        "[mysql]",
        'user = "hacontrol"',
        f"password_file = {json.dumps(controller_password_file)}",
        'replication_user = "repl"',
        f"replication_password_file = {json.dumps(replication_password_file)}",
        "",
        *_router_sections(router, proxysql_password_file, hostgroups=not clusters),
        *_timing_sections(),
        "[api]",
        'host = "127.0.0.1"',
        f"port = {api_port}",
        *([f"token_file = {json.dumps(api_token_file)}"] if api_token_file else []),
        *(_api_tls(tls) if tls else []),
        "",
    ]
    lines += _fleet_sections(journal, instance_id)
    lines += _rebuild_sections(nodes, rebuild, datadirs=not clusters)
    if tls:
        lines += tls_sections(tls, router.kind)
    if clusters:
        lines += cluster_entries(nodes, router.kind, clusters, rebuild is not None)
    return "\n".join(lines)


def _node_lines(nodes: tuple[NodeInfo, ...], table: str) -> list[str]:
    lines = []
    for node in nodes:
        lines += [
            f"[[{table}]]",
            f'name = "{node.name}"',
            f'host = "{node.host}"',
            f"port = {node.port}",
            "priority = 0",
            "no_promote = false",
            "",
        ]
    return lines


def _timing_sections() -> list[str]:
    return [
        "[probes]",
        "interval = 1.0",
        "timeout = 0.5  # loopback: a node that does not answer in 0.5 s is not well",
        "failure_threshold = 3",
        "",
        "[failover]",
        "max_lag = 10.0",
        "recovery_block = 3600.0",
        f"io_stall = 1.5  # > 2.5 x the replicas' heartbeat ({HEARTBEAT_PERIOD} s)",
        "",
        "[smtp]",
        'host = ""  # empty: mail disabled',
        "",
    ]


def cluster_entries(
    nodes: tuple[NodeInfo, ...],
    kind: str,
    clusters: tuple[ClusterInfo, ...],
    datadirs: bool,
) -> list[str]:
    """One ``[[clusters]]`` entry per cluster: its name, nodes, its own hostgroups (ProxySQL)
    or backends (HAProxy), and its nodes' datadirs for a rebuild."""
    lines = []
    for cluster in clusters:
        members = tuple(n for n in nodes if n.name in cluster.nodes)
        lines += ["[[clusters]]", f'name = "{cluster.name}"', ""]
        lines += _node_lines(members, "clusters.nodes")
        if kind == "haproxy":
            lines += [
                "[clusters.router.haproxy]",
                f'writer_backend = "{cluster.writer_backend}"',
                f'reader_backend = "{cluster.reader_backend}"',
            ]
        else:
            lines.append("[clusters.router.proxysql]")
            lines += [f"{name}_hostgroup = {hg}" for name, hg in cluster.hostgroups.items()]
        lines.append("")
        if datadirs:
            lines.append("[clusters.rebuild.datadirs]")
            lines += [f"{node.name} = {json.dumps(node.datadir)}" for node in members]
            lines.append("")
    return lines


def _router_sections(
    router: RouterInfo, proxysql_password_file: str | None, *, hostgroups: bool = True
) -> list[str]:
    """``[router]``; ``hostgroups`` (or HAProxy's backends) False: each cluster names its own."""
    lines = ["[router]", f'kind = "{router.kind}"', "primary_is_reader = true", ""]
    if router.kind == "haproxy":
        backends = ['writer_backend = "writer"', 'reader_backend = "readers"'] if hostgroups else []
        return [*lines, "[router.haproxy]", f"socket = {json.dumps(router.admin)}", *backends, ""]
    return [
        *lines,
        "[router.proxysql]",
        f'host = "{router.host}"',
        f"port = {router.admin_port}",
        f'user = "{proxysql_admin_user(router)}"',
        f"password_file = {json.dumps(proxysql_password_file or '')}",
        *(
            f"{name}_hostgroup = {hg}"
            for name, hg in (PROXYSQL_HOSTGROUPS.items() if hostgroups else ())
        ),
        "",
    ]


def _fleet_sections(journal: str | None, instance_id: str | None) -> list[str]:
    """The lease timed for the sandbox's probes (``settings_toml``) and this controller's own
    journal and name."""
    lines = [
        "[lease]",
        "wait_timeout = 1",
        "keepalive = 0.25",
        "validity = 0.7",
        "margin = 0.2",
        "backoff = 0.5",
        "",
    ]
    controller = []
    if journal:
        controller.append(f"journal = {json.dumps(journal)}")
    if instance_id:
        controller.append(f"instance_id = {json.dumps(instance_id)}")
    if controller:
        lines += ["[controller]", *controller, ""]
    return lines


@dataclass(frozen=True)
class RebuildAccess:
    """What the sandbox's ``[rebuild]`` section needs: the sandbox's directory (for ``hacontrol
    sandbox stop-node|start-node``), root's password file (mariadb-backup) and the Python that
    runs hacontrol."""

    directory: str
    root_password_file: str
    python: str


def _rebuild_sections(
    nodes: tuple[NodeInfo, ...], access: RebuildAccess | None, *, datadirs: bool = True
) -> list[str]:
    """``[rebuild]`` for the sandbox: mariadb-backup as root over each source's socket, the
    target stopped and started through ``hacontrol sandbox stop-node|start-node`` (so the
    sandbox keeps track of its processes). Every controller of a fleet gets it (the leader
    rebuilds)."""
    if access is None:
        return []
    base = str(Path(nodes[0].node_dir).parent)
    node_command = [access.python, "-m", "hacontrol", "sandbox"]
    tail = ["--node", "{target}", "--dir", access.directory]
    login = [f"--defaults-file={base}/{{source}}/my.cnf", "--user=root",
             f"--socket={base}/{{source}}/mysqld.sock"]  # fmt: skip
    return [
        "[rebuild]  # hacontrol rebuild NODE (docs/rebuild.md)",
        f"stop_target = {json.dumps([*node_command, 'stop-node', *tail])}",
        f"start_target = {json.dumps([*node_command, 'start-node', *tail])}",
        f"backup_options = {json.dumps(login)}",
        f"backup_password_file = {json.dumps(access.root_password_file)}",
        "",
        *(["[rebuild.datadirs]", *(f"{n.name} = {json.dumps(n.datadir)}" for n in nodes), ""]
          if datadirs else []),
    ]  # fmt: skip


def _api_tls(tls: SandboxTls) -> list[str]:
    return [
        f"tls_cert = {json.dumps(str(tls.cert('api')))}",
        f"tls_key = {json.dumps(str(tls.key('api')))}",
        f"tls_ca = {json.dumps(str(tls.ca))}",
    ]


def tls_sections(tls: SandboxTls, router_kind: str) -> list[str]:
    """The controller's TLS settings for a sandbox with TLS: verify_identity with the
    sandbox's CA and the controller's client certificate; replication over TLS with the
    source's certificate verified (the same paths: every node is on this host)."""
    ca = json.dumps(str(tls.ca))
    lines = [
        "[mysql.tls]",
        'mode = "verify_identity"',
        f"ca = {ca}",
        f"cert = {json.dumps(str(tls.cert('hacontrol')))}",
        f"key = {json.dumps(str(tls.key('hacontrol')))}",
        "",
        "[mysql.replication_tls]",
        "enabled = true",
        f"ca = {ca}",
        "verify_server_cert = true",
        "",
    ]
    if router_kind == "proxysql":
        lines += ["[router.proxysql.tls]", 'mode = "verify_identity"', f"ca = {ca}", ""]
    return lines
