"""ProxySQL router: hostgroup membership over the admin interface (MySQL protocol, port 6032).

Model (docs/proxysql.md has the why). The controller owns the rows of the managed nodes
(matched by exact hostname and port) in four hostgroups: writer, reader, broken and hidden
(10/20/30/40 by default). Rows of other servers and of other hostgroups are never read into
the membership and never written: every DELETE and UPDATE names hostgroup_id, hostname and
port. Hidden (40) rows belong to the operator: they are never written either, and a desired
state that would change who is hidden is refused.

- ``read()`` is what ProxySQL really does, from ``runtime_mysql_servers``: ``writers`` and
  ``readers`` are managed nodes with an ONLINE or SHUNNED row in the writer / reader hostgroup;
  ``broken`` and ``hidden`` are managed nodes with a row (any status) in the broken / hidden
  hostgroup. SHUNNED is ProxySQL's own health opinion, not a routing change: it sends traffic
  to a shunned server again by itself as soon as the server answers, so a shunned writer is
  still a writer. OFFLINE_SOFT (drained) and OFFLINE_HARD (removed, last connections closing)
  rows take no new traffic and read back as nothing (not "broken": that is hostgroup 30 only).
- ``apply()`` compares the desired state with the configuration (``mysql_servers``), the
  runtime and the disk copy. Equal everywhere: nothing is sent. Otherwise it writes the rows
  that differ, ``LOAD MYSQL SERVERS TO RUNTIME``, ``SAVE MYSQL SERVERS TO DISK``, reads the
  runtime back and retries (bounded) until it matches.
- ``drain(node)`` sets the writer row OFFLINE_SOFT (no new transaction starts there, running
  ones finish) and waits until ``stats_mysql_connection_pool`` shows none of its connections in
  use, or a deadline.
- Never two writers: writes to ``mysql_servers`` become visible only at LOAD, so the rule is
  about what each LOAD publishes. Rows leaving the writer hostgroup are deleted and loaded
  first; only then is the new writer inserted and loaded. Right before every LOAD the
  configuration is checked again to hold at most one managed writer.

The admin port is SQLite behind the MySQL protocol: every value comes back as a string, and
string literals are SQLite literals (``'it''s'``). aiomysql's ``%s`` parameters escape with
backslashes (``'it\\'s'``), which SQLite does not understand, so statements are rendered here
with ``sql_literal`` and sent without parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import pymysql

from hacontrol.mysqlconn import (
    BoundedConnection,
    ColumnCache,
    Endpoint,
    connect,
    describe_error,
    endpoint_for,
    execute,
    fetch_text,
)
from hacontrol.mysqlwire import MalformedAnswer
from hacontrol.routing import (
    Drained,
    Lines,
    Membership,
    Role,
    RouterBusy,
    RouterError,
    StdlibLines,
    desired_state_problem,
)
from hacontrol.settings import NodeSettings, ProxySQLSettings, RouterSettings, TlsSettings
from hacontrol.settings_clusters import admin_key

log = logging.getLogger(__name__)


T = TypeVar("T")

DEFAULT_ATTEMPTS = 3
DEFAULT_TIMEOUT = 2.0
LIVENESS_CHECK_MAX = 0.5
"""The most a kept admin connection's check (``SELECT 1`` before each call) may take."""
ONLINE = "ONLINE"
SHUNNED = "SHUNNED"
OFFLINE_SOFT = "OFFLINE_SOFT"
OFFLINE_HARD = "OFFLINE_HARD"
ROUTING = frozenset({ONLINE, SHUNNED})
"""Statuses of a writer/reader row that route. SHUNNED is ProxySQL's own passing opinion of the
server's health: it tries the server again by itself (after mysql-shun_recovery_time_sec, on the
next connection attempt) and routes to it as soon as it answers."""
LOAD_TO_RUNTIME = "LOAD MYSQL SERVERS TO RUNTIME"
SAVE_TO_DISK = "SAVE MYSQL SERVERS TO DISK"

CONFIG_TABLE = "mysql_servers"
RUNTIME_TABLE = "runtime_mysql_servers"
DISK_TABLE = "disk.mysql_servers"

ROUTED = (Role.WRITER, Role.READER)
"""Roles whose row counts only with a ROUTING status: ProxySQL sends no new traffic to an
OFFLINE_SOFT or OFFLINE_HARD row."""

TEMPLATE_ORDER = (Role.READER, Role.WRITER, Role.BROKEN, Role.HIDDEN)
"""Where a new row copies its column values from: the first existing row of the same server."""


# --- values -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerRow:
    """One row of ``mysql_servers`` (same columns in ``runtime_`` and ``disk.``), typed.

    Defaults are ProxySQL 2.7.1's column defaults.
    """

    hostgroup_id: int
    hostname: str
    port: int = 3306
    gtid_port: int = 0
    status: str = ONLINE
    weight: int = 1
    compression: int = 0
    max_connections: int = 1000
    max_replication_lag: int = 0
    use_ssl: int = 0
    max_latency_ms: int = 0
    comment: str = ""

    @classmethod
    def from_admin(cls, row: Mapping[str, Any]) -> ServerRow:
        """From an admin result row, where every column is a string. Raises RouterError."""
        values: dict[str, Any] = {}
        try:
            for f in fields(cls):
                raw = row[f.name]
                if f.name in ("hostname", "comment"):
                    values[f.name] = "" if raw is None else str(raw)
                elif f.name == "status":
                    values[f.name] = str(raw).upper()
                else:
                    values[f.name] = int(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise RouterError(
                f"unexpected mysql_servers row from ProxySQL {row!r}: {exc}"
            ) from None
        return cls(**values)


SERVER_COLUMNS = tuple(f.name for f in fields(ServerRow))


@dataclass(frozen=True)
class ReplicationHostgroup:
    """One row of ``mysql_replication_hostgroups``."""

    writer_hostgroup: int
    reader_hostgroup: int
    check_type: str = "read_only"
    comment: str = ""

    @classmethod
    def from_admin(cls, row: Mapping[str, Any]) -> ReplicationHostgroup:
        try:
            return cls(
                writer_hostgroup=int(row["writer_hostgroup"]),
                reader_hostgroup=int(row["reader_hostgroup"]),
                check_type=str(row["check_type"]),
                comment=str(row["comment"] or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RouterError(
                f"unexpected mysql_replication_hostgroups row from ProxySQL {row!r}: {exc}"
            ) from None


@dataclass(frozen=True)
class Hostgroups:
    writer: int = 10
    reader: int = 20
    broken: int = 30
    hidden: int = 40

    @classmethod
    def from_settings(cls, settings: ProxySQLSettings) -> Hostgroups:
        return cls(
            settings.writer_hostgroup,
            settings.reader_hostgroup,
            settings.broken_hostgroup,
            settings.hidden_hostgroup,
        )

    def of(self, role: Role) -> int:
        return {
            Role.WRITER: self.writer,
            Role.READER: self.reader,
            Role.BROKEN: self.broken,
            Role.HIDDEN: self.hidden,
        }[role]

    def role(self, hostgroup_id: int) -> Role | None:
        return next((role for role in Role if self.of(role) == hostgroup_id), None)

    def ids(self) -> tuple[int, ...]:
        return tuple(self.of(role) for role in Role)


Key = tuple[Role, str]
"""(role, node name): one managed row."""


@dataclass(frozen=True)
class Layout:
    """The managed hostgroups and nodes: which rows of ProxySQL are the controller's."""

    hostgroups: Hostgroups
    nodes: tuple[tuple[str, str, int], ...]
    """(name, hostname, port) per managed node; hostname is matched exactly."""

    @classmethod
    def of(cls, hostgroups: Hostgroups, nodes: Iterable[NodeSettings]) -> Layout:
        return cls(hostgroups, tuple((n.name, n.host, n.port) for n in nodes))

    def names(self) -> frozenset[str]:
        return frozenset(name for name, _, _ in self.nodes)

    def address(self, name: str) -> tuple[str, int]:
        for node, host, port in self.nodes:
            if node == name:
                return host, port
        raise KeyError(name)

    def node_at(self, hostname: str, port: int) -> str | None:
        return next((n for n, h, p in self.nodes if h == hostname and p == port), None)

    def managed(self, rows: Iterable[ServerRow]) -> dict[Key, ServerRow]:
        """The managed rows by (role, node); rows of other servers or hostgroups are dropped."""
        out: dict[Key, ServerRow] = {}
        for row in rows:
            role = self.hostgroups.role(row.hostgroup_id)
            node = self.node_at(row.hostname, row.port)
            if role is not None and node is not None:
                out[(role, node)] = row
        return out


# --- pure: reading --------------------------------------------------------------------------------


def membership_of(rows: Iterable[ServerRow], layout: Layout) -> Membership:
    """What the rows route: ONLINE or SHUNNED writer/reader rows; any row in broken/hidden."""
    by_role: dict[Role, set[str]] = {role: set() for role in Role}
    for (role, node), row in layout.managed(rows).items():
        if role not in ROUTED or row.status in ROUTING:
            by_role[role].add(node)
    return Membership.of(
        writers=by_role[Role.WRITER],
        readers=by_role[Role.READER],
        broken=by_role[Role.BROKEN],
        hidden=by_role[Role.HIDDEN],
    )


def wanted_keys(desired: Membership) -> frozenset[Key]:
    return frozenset(
        (role, node)
        for role, members in (
            (Role.WRITER, desired.writers),
            (Role.READER, desired.readers),
            (Role.BROKEN, desired.broken),
            (Role.HIDDEN, desired.hidden),
        )
        for node in members
    )


def differences(rows: Iterable[ServerRow], desired: Membership, layout: Layout) -> tuple[str, ...]:
    """How the managed rows differ from ``desired``; empty when they match exactly.

    Matching means: exactly the wanted (hostgroup, node) rows, and writer/reader rows routing
    (ONLINE, or SHUNNED by ProxySQL's health checks). An unwanted writer/reader row that is
    OFFLINE_HARD does not count: that is how ProxySQL shows a removed server until its last
    connection closes, and it takes no traffic.
    """
    have = layout.managed(rows)
    want = wanted_keys(desired)
    hg = layout.hostgroups.of
    out = [
        f"{node} missing from {role} hostgroup {hg(role)}"
        for role, node in sorted(want - have.keys())
    ]
    out += [
        f"{node} still in {role} hostgroup {hg(role)}"
        for role, node in sorted(have.keys() - want)
        if not (role in ROUTED and have[(role, node)].status == OFFLINE_HARD)
    ]
    out += [
        f"{node} is {have[(role, node)].status} in {role} hostgroup {hg(role)}"
        for role, node in sorted(want & have.keys())
        if role in ROUTED and have[(role, node)].status not in ROUTING
    ]
    return tuple(out)


def hidden_problem(
    desired: Membership,
    config: Iterable[ServerRow],
    runtime: Iterable[ServerRow],
    layout: Layout,
) -> str | None:
    """Why ``desired`` would change who is hidden, or None. Hostgroup 40 is the operator's."""
    in_config = membership_of(config, layout).hidden
    in_runtime = membership_of(runtime, layout).hidden
    if desired.hidden == in_config == in_runtime:
        return None
    hg = layout.hostgroups.hidden
    text = (
        f"it would change the hidden nodes (hostgroup {hg} belongs to the operator): desired "
        f"{sorted(desired.hidden)}, mysql_servers has {sorted(in_config)}, "
        f"runtime_mysql_servers has {sorted(in_runtime)}"
    )
    if in_config != in_runtime:
        text += f"; an operator change to hostgroup {hg} is waiting for {LOAD_TO_RUNTIME}"
    return text


# --- pure: statements -----------------------------------------------------------------------------


def sql_literal(value: int | str) -> str:
    """A SQLite literal (the admin port runs SQLite SQL): ints as digits, text in single quotes
    with quotes doubled. Backslashes are plain characters in SQLite."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"not an int or str: {value!r}")
    if isinstance(value, int):
        return str(value)
    if "\x00" in value:
        raise ValueError(f"NUL character in SQL text: {value!r}")
    return "'" + value.replace("'", "''") + "'"


def _where(row: ServerRow) -> str:
    return (
        f"WHERE hostgroup_id = {sql_literal(row.hostgroup_id)} "
        f"AND hostname = {sql_literal(row.hostname)} AND port = {sql_literal(row.port)}"
    )


def insert_sql(row: ServerRow) -> str:
    values = ", ".join(sql_literal(getattr(row, column)) for column in SERVER_COLUMNS)
    return f"INSERT INTO mysql_servers ({', '.join(SERVER_COLUMNS)}) VALUES ({values})"


def delete_sql(row: ServerRow) -> str:
    return f"DELETE FROM mysql_servers {_where(row)}"


def set_online_sql(row: ServerRow) -> str:
    return f"UPDATE mysql_servers SET status = {sql_literal(ONLINE)} {_where(row)}"


_PAIR_COLUMNS = "writer_hostgroup, reader_hostgroup, check_type, comment"
REPLICATION_HOSTGROUPS_SQL = (
    f"SELECT 'runtime' AS source, {_PAIR_COLUMNS} FROM runtime_mysql_replication_hostgroups "
    f"UNION ALL SELECT 'config' AS source, {_PAIR_COLUMNS} FROM mysql_replication_hostgroups"
)
"""The replication hostgroup pairs active in runtime and configured, told apart by ``source``."""


def select_servers_sql(table: str, hostgroup_ids: Iterable[int]) -> str:
    ids = ", ".join(sql_literal(i) for i in hostgroup_ids)
    return (
        f"SELECT {', '.join(SERVER_COLUMNS)} FROM {table} WHERE hostgroup_id IN ({ids}) "
        "ORDER BY hostgroup_id, hostname, port"
    )


def new_row(role: Role, node: str, existing: Mapping[Key, ServerRow], layout: Layout) -> ServerRow:
    """A row for ``node`` in ``role``'s hostgroup, ONLINE.

    Copies the column values (weight, max_connections, use_ssl, ...) of the server's first
    existing row in the reader, writer, broken or hidden hostgroup, with an empty comment and,
    in the writer hostgroup, no ``max_replication_lag`` (a lag limit on the primary would let
    ProxySQL shun it). Without such a row: ProxySQL's column defaults.
    """
    hostgroup_id = layout.hostgroups.of(role)
    template = next((existing[(r, node)] for r in TEMPLATE_ORDER if (r, node) in existing), None)
    if template is None:
        host, port = layout.address(node)
        return ServerRow(hostgroup_id, host, port)
    lag = 0 if role is Role.WRITER else template.max_replication_lag
    return replace(
        template, hostgroup_id=hostgroup_id, status=ONLINE, comment="", max_replication_lag=lag
    )


def _converge(
    role: Role, members: frozenset[str], existing: Mapping[Key, ServerRow], layout: Layout
) -> tuple[list[str], list[str]]:
    """(additions, removals) that make ``role``'s hostgroup hold exactly ``members``."""
    adds: list[str] = []
    for node in sorted(members):
        row = existing.get((role, node))
        if row is None:
            adds.append(insert_sql(new_row(role, node, existing, layout)))
        elif role in ROUTED and row.status != ONLINE:
            adds.append(set_online_sql(row))
    removals = [
        delete_sql(row)
        for (r, node), row in sorted(existing.items())
        if r is role and node not in members
    ]
    return adds, removals


def plan_statements(
    desired: Membership,
    config: Iterable[ServerRow],
    runtime: Iterable[ServerRow],
    disk: Iterable[ServerRow],
    layout: Layout,
    *,
    hidden: bool = False,
) -> tuple[str, ...]:
    """The admin statements that make config, runtime and disk hold ``desired``, in order.

    Empty when all three already do. Hidden rows are written only with ``hidden`` (an
    operator's maintenance command); otherwise ``hidden_problem`` refuses first.
    When a writer row must be added and another managed node is still a writer (in the
    configuration, or in the runtime), the old writer is removed and LOADed first, so that no
    LOAD ever publishes two writers.
    """
    runtime = list(runtime)
    existing = layout.managed(config)
    writer_adds, demotions = _converge(Role.WRITER, desired.writers, existing, layout)
    reader_adds, reader_removals = _converge(Role.READER, desired.readers, existing, layout)
    broken_adds, broken_removals = _converge(Role.BROKEN, desired.broken, existing, layout)
    rest = [*writer_adds, *reader_adds, *broken_adds, *reader_removals, *broken_removals]
    if hidden:  # an operator's maintenance command, through the controller: hostgroup 40 too
        hidden_adds, hidden_removals = _converge(Role.HIDDEN, desired.hidden, existing, layout)
        rest += [*hidden_adds, *hidden_removals]
    if demotions or rest:
        stale_writer = any(  # still a writer, or draining: in-flight writes may land there
            role is Role.WRITER and node not in desired.writers and row.status != OFFLINE_HARD
            for (role, node), row in layout.managed(runtime).items()
        )
        if writer_adds and (demotions or stale_writer):
            return (*demotions, LOAD_TO_RUNTIME, *rest, LOAD_TO_RUNTIME, SAVE_TO_DISK)
        return (*demotions, *rest, LOAD_TO_RUNTIME, SAVE_TO_DISK)
    if differences(runtime, desired, layout):
        return (LOAD_TO_RUNTIME, SAVE_TO_DISK)
    if differences(disk, desired, layout):
        return (SAVE_TO_DISK,)
    return ()


def set_status_sql(row: ServerRow, status: str) -> str:
    return f"UPDATE mysql_servers SET status = {sql_literal(status)} {_where(row)}"


def plan_drain(
    node: str, config: Iterable[ServerRow], runtime: Iterable[ServerRow], layout: Layout
) -> tuple[str, ...]:
    """The statements that set ``node``'s writer row OFFLINE_SOFT in memory and runtime.

    Nothing else changes: its reader row keeps serving reads, no row is added or removed, and
    nothing is saved to disk (a drain is a moment of a switchover; a ProxySQL restarted
    meanwhile comes back with the last saved membership, which the next apply corrects).
    Raises RouterError when the node has no writer row in the configuration.
    """
    key = (Role.WRITER, node)
    row = layout.managed(config).get(key)
    if row is None:
        raise RouterError(
            f"cannot drain {node}: it has no row in writer hostgroup {layout.hostgroups.writer}"
        )
    live = layout.managed(runtime).get(key)
    if row.status != OFFLINE_SOFT:
        return (set_status_sql(row, OFFLINE_SOFT), LOAD_TO_RUNTIME)
    if live is None or live.status != OFFLINE_SOFT:
        return (LOAD_TO_RUNTIME,)
    return ()


def connections_in_use_sql(hostgroup_id: int, hostname: str, port: int) -> str:
    return (
        "SELECT ConnUsed FROM stats_mysql_connection_pool "
        f"WHERE hostgroup = {sql_literal(hostgroup_id)} AND srv_host = {sql_literal(hostname)} "
        f"AND srv_port = {sql_literal(port)}"
    )


def extra_writers(config: Iterable[ServerRow], layout: Layout) -> list[str]:
    """Managed nodes with a row in the writer hostgroup, when there is more than one."""
    writers = sorted(node for role, node in layout.managed(config) if role is Role.WRITER)
    return writers if len(writers) > 1 else []


# --- pure: conflicts ------------------------------------------------------------------------------


PEERS_TABLE = "runtime_proxysql_servers"
CLUSTER_SYNC_VARIABLE = "admin-cluster_mysql_servers_diffs_before_sync"


def cluster_sync_warning(peers: Sequence[str], diffs_before_sync: int) -> str | None:
    """ProxySQL Cluster copying ``mysql_servers`` from its peers, or None.

    With peers in ``proxysql_servers`` and ``admin-cluster_mysql_servers_diffs_before_sync``
    above 0, a ProxySQL takes the servers of whichever peer has the newest epoch (ProxySQL
    issue 5540): the rows one sidecar wrote would overwrite the others'. In a fleet every
    sidecar routes its own ProxySQL, so the sync must be off (0)."""
    if not peers or diffs_before_sync <= 0:
        return None
    return (
        f"ProxySQL Cluster syncs mysql_servers from its peers ({', '.join(sorted(peers))} in "
        f"proxysql_servers, {CLUSTER_SYNC_VARIABLE} = {diffs_before_sync}): a peer's newer "
        "rows would overwrite the ones this instance's hacontrol writes, while each sidecar "
        f"routes its own ProxySQL. Turn the sync of mysql_servers off: SET "
        f"{CLUSTER_SYNC_VARIABLE} = 0; LOAD ADMIN VARIABLES TO RUNTIME; SAVE ADMIN VARIABLES "
        "TO DISK (or empty proxysql_servers)"
    )


def conflict_warnings(
    runtime_pairs: Iterable[ReplicationHostgroup],
    config_pairs: Iterable[ReplicationHostgroup],
    runtime_rows: Iterable[ServerRow],
    layout: Layout,
) -> list[str]:
    """Everything in ProxySQL that would route against the controller, one line each.

    - a ``mysql_replication_hostgroups`` pair touching a managed hostgroup: ProxySQL's monitor
      would move servers between writer and reader hostgroups by their read_only flag;
    - a server that is not a managed node in the writer hostgroup: a second writer.
    """
    managed = set(layout.hostgroups.ids())
    runtime_pairs, config_pairs = list(runtime_pairs), list(config_pairs)
    warnings = []
    for pair in sorted({*runtime_pairs, *config_pairs}, key=lambda p: p.writer_hostgroup):
        overlap = sorted({pair.writer_hostgroup, pair.reader_hostgroup} & managed)
        if not overlap:
            continue
        if pair not in runtime_pairs:
            where = (
                "configured but not loaded (hacontrol's next LOAD MYSQL SERVERS TO RUNTIME "
                "would activate it)"
            )
        elif pair not in config_pairs:
            where = "active in runtime (deleted from the configuration, not loaded yet)"
        else:
            where = "active"
        warnings.append(
            f"mysql_replication_hostgroups writer_hostgroup={pair.writer_hostgroup} "
            f"reader_hostgroup={pair.reader_hostgroup} (check_type {pair.check_type!r}, "
            f"comment {pair.comment!r}) is {where} over hacontrol's hostgroup(s) {overlap}: "
            f"ProxySQL's monitor moves servers between them by {pair.check_type} and fights "
            "hacontrol. Remove it: DELETE FROM mysql_replication_hostgroups WHERE "
            f"writer_hostgroup={pair.writer_hostgroup}; {LOAD_TO_RUNTIME}; {SAVE_TO_DISK}"
        )
    writer_hg = layout.hostgroups.writer
    for row in runtime_rows:
        if row.hostgroup_id == writer_hg and layout.node_at(row.hostname, row.port) is None:
            warnings.append(
                f"server {row.hostname}:{row.port} ({row.status}) is in writer hostgroup "
                f"{writer_hg} but is not a managed node: ProxySQL sends writes to it too. "
                "Move it to another hostgroup, or add it to the nodes setting"
            )
    return warnings


# --- I/O ----------------------------------------------------------------------------------------


ALIVE_SQL = "SELECT 1"
"""The kept admin connection's liveness check."""


class _SessionClosed(Exception):
    """The kept connection was closed (``AdminLink.close``) under the call using it."""


class _AdminSession:
    """The kept admin connection of one ``AdminLink`` (opened again after any failure);
    remembers the step in progress. Used only by the call holding the link's lock."""

    def __init__(self) -> None:
        self._conn: BoundedConnection | None = None
        self._columns: dict[str, ColumnCache] = {}
        self._timeout = DEFAULT_TIMEOUT
        self.reused = False
        self.current = "start"
        self.statements = 0
        """Statements begun since ``open``."""

    @property
    def connection(self) -> BoundedConnection | None:
        return self._conn

    async def open(self, endpoint: Endpoint, timeout: float) -> None:
        self._timeout = timeout
        self.statements = 0
        self.reused = self._conn is not None and not self._conn.closed
        if not self.reused:
            self._columns.clear()
            self.current = "connect"
            self._conn = await connect(endpoint, timeout)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    async def check_alive(self, timeout: float, lines: Lines) -> None:
        """A kept connection answers ``SELECT 1`` within min(timeout/4, LIVENESS_CHECK_MAX) s,
        or is closed (the call then connects anew, with its full time): a flow that went
        silently dead (packets dropped, no reset) would otherwise hang the call, a failover's
        required RouteFence included, for its whole timeout."""
        conn = self._conn
        if conn is None or conn.closed:
            return
        bound = min(timeout / 4, LIVENESS_CHECK_MAX)
        self.current = "the check of the kept connection"
        columns = self._columns.setdefault(ALIVE_SQL, ColumnCache(conn.encoding))
        try:  # in one pass over the wire bytes, like the probe's reads (no cursor)
            await fetch_text(conn, ALIVE_SQL, columns, timeout=bound)
        except (TimeoutError, pymysql.err.MySQLError, OSError, EOFError, MalformedAnswer) as exc:
            lines.emit(
                "router_admin_reconnect",
                None,
                "warning",
                reason="the kept admin connection failed its check: connecting anew",
                error=describe_error(exc),
                bound_seconds=bound,
            )
            self.close()
        except BaseException:
            self.close()
            raise

    def _open_conn(self, sql: str) -> BoundedConnection:
        if self._conn is None:
            raise _SessionClosed
        self.current = repr(sql if len(sql) <= 120 else sql[:120] + "...")
        self.statements += 1
        return self._conn

    async def query(self, sql: str) -> list[dict[str, Any]]:
        """A statement (writes, and reads that are not repeated every interval)."""
        conn = self._open_conn(sql)
        return await execute(conn, sql, timeout=self._timeout)

    async def read(self, sql: str) -> list[dict[str, Any]]:
        """A read repeated every interval, its answer parsed in one pass (``fetch_text``)."""
        conn = self._open_conn(sql)
        columns = self._columns.setdefault(sql, ColumnCache(conn.encoding))
        return (await fetch_text(conn, sql, columns, timeout=self._timeout))[0]

    async def servers(self, table: str, hostgroup_ids: Iterable[int]) -> list[ServerRow]:
        rows = await self.read(select_servers_sql(table, hostgroup_ids))
        return [ServerRow.from_admin(row) for row in rows]


@dataclass(frozen=True)
class SharedRead:
    """One probe read of every router's rows on a link (runtime servers, replication
    hostgroup pairs), served to the probes of every cluster there for ``share_age`` seconds."""

    at: float
    ids: frozenset[int]
    """The hostgroups read."""
    rows: Mapping[int, tuple[ServerRow, ...]]
    """By hostgroup id."""
    pairs: tuple[tuple[ReplicationHostgroup, ...], tuple[ReplicationHostgroup, ...]]

    @classmethod
    def of(
        cls,
        at: float,
        ids: Iterable[int],
        rows: Iterable[ServerRow],
        pairs: tuple[list[ReplicationHostgroup], list[ReplicationHostgroup]],
    ) -> SharedRead:
        by_hostgroup: dict[int, list[ServerRow]] = {}
        for row in rows:
            by_hostgroup.setdefault(row.hostgroup_id, []).append(row)
        grouped = {hg: tuple(found) for hg, found in by_hostgroup.items()}
        return cls(at, frozenset(ids), grouped, (tuple(pairs[0]), tuple(pairs[1])))

    def serves(self, hostgroup_ids: Iterable[int], now: float, age: float) -> bool:
        """Whether it holds these hostgroups and is at most ``age`` seconds old."""
        return now - self.at <= age and self.ids.issuperset(hostgroup_ids)

    def rows_of(self, hostgroup_ids: Iterable[int]) -> list[ServerRow]:
        return [row for hg in hostgroup_ids for row in self.rows.get(hg, ())]


class AdminLink:
    """One ProxySQL admin interface (host:port) and everything that goes through it: ONE kept
    connection and ONE lock, shared by the routers of every cluster routed by that ProxySQL.

    Why one lock for whole calls: ``LOAD MYSQL SERVERS TO RUNTIME`` publishes the whole
    ``mysql_servers`` table and ``SAVE ... TO DISK`` saves all of it, every hostgroup, so a
    LOAD sent by one cluster in the middle of another cluster's apply would publish that
    cluster's half-written rows (a writer deleted, its successor not yet inserted; or the new
    writer inserted before the old one's removal was LOADed alone). Each call (an apply from
    its first read to its SAVE and read-back, the start of a drain, a probe, a read) therefore
    runs whole under the lock, and every router's statements name its own hostgroups.
    ``layouts``: the managed rows of every router on this link; the check right before each
    LOAD covers all of them (no LOAD ever publishes two writers of any of these clusters).
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.lock = asyncio.Lock()
        self.session = _AdminSession()
        self.layouts: list[Layout] = []
        self.owners: dict[int, str] = {}
        """Each layout's cluster, for the messages, by its writer hostgroup."""
        self._by_cluster: dict[str, Layout] = {}
        """The layout of each named cluster (its latest router's)."""
        self.calls = 0
        """Calls holding or waiting for the lock."""
        self.holder: tuple[str, float] | None = None
        """The call holding the lock (whose, what) and since when, for RouterBusy."""
        self.shared_read: SharedRead | None = None
        """The last probe read, while several routers share the link; forgotten by every
        apply and drain (so no probe is served a read from before a change)."""

    def hostgroup_ids(self) -> tuple[int, ...]:
        return tuple(sorted({i for layout in self.layouts for i in layout.hostgroups.ids()}))

    def register(self, layout: Layout, cluster: str | None = None) -> None:
        """A router's managed rows on this admin (of ``cluster``, for the messages);
        RouterError when its hostgroups overlap another router's here (its statements would
        touch the other cluster's rows). The same ``cluster`` again (its fresh router after a
        crash) takes its own entry's place: a cluster's rows stay on the link, and under the
        check before every LOAD, for the life of the process (refused, crashed, restarting).
        """
        before = self._by_cluster.get(cluster) if cluster is not None else None
        kept = [other for other in self.layouts if other is not before]
        mine = set(layout.hostgroups.ids())
        for other in kept:
            if shared := sorted(mine & set(other.hostgroups.ids())):
                raise RouterError(
                    f"{self.where}: hostgroup(s) {shared} managed for two clusters (nodes "
                    f"{sorted(layout.names())} and {sorted(other.names())}); each cluster "
                    "needs hostgroups of its own"
                )
        if before is not None:
            self.owners.pop(before.hostgroups.writer, None)
            self.shared_read = None
        self.layouts = [*kept, layout]
        if cluster is not None:
            self._by_cluster[cluster] = layout
        self.owners[layout.hostgroups.writer] = (
            f"cluster {cluster}" if cluster else f"the cluster of nodes {sorted(layout.names())}"
        )

    @property
    def where(self) -> str:
        return f"ProxySQL admin {self.endpoint.host}:{self.endpoint.port}"

    async def call(
        self,
        what: str,
        body: Callable[[_AdminSession], Awaitable[T]],
        timeout: float,
        *,
        busy_after: float | None = None,
        by: str | None = None,
        lines: Lines | None = None,
    ) -> T:
        """``body`` on the kept connection, holding the lock, within ``timeout`` (connecting
        included); any failure is a RouterError.

        The wait for the lock is bounded apart: a call's hold for each call holding or waiting
        for it at entry, and one more (each holds it for the check of the kept connection and
        its own ``timeout`` at most, the same unless clusters set another one). A healthy but
        busy admin (many clusters failing over at once) then fails no call, and a hung one fails
        each in bounded time. The kept connection is checked first (``check_alive``: a silently
        dead one is replaced before the call's time starts); one that fails at the call's first
        statement anyway (ProxySQL restarted meanwhile: nothing was done) is replaced at once,
        once.

        ``busy_after``: a read that would rather be skipped than wait long (the router
        probe): past that wait for the lock, RouterBusy naming what holds it (``by``: whose
        call this is, for that message). ``lines``: the caller's log (its cluster named)."""
        lines = lines if lines is not None else StdlibLines(log)
        ahead = self.calls
        self.calls += 1
        wait = (timeout + min(timeout / 4, LIVENESS_CHECK_MAX)) * (ahead + 1)
        try:
            if busy_after is None:
                await self._acquire(what, ahead, wait, busy=False)
            else:
                await self._acquire(what, ahead, busy_after, busy=True, lines=lines)
            self.holder = (f"{by}'s {what}" if by else what, time.monotonic())
            try:
                await self.session.check_alive(timeout, lines)
                async with asyncio.timeout(timeout):
                    return await self._locked(body, timeout)
            finally:
                self.holder = None
                self.lock.release()
        except TimeoutError:
            at = self.session.current
            raise RouterError(f"{self.where}: {what} timed out after {timeout} s at {at}") from None
        except (pymysql.err.MySQLError, OSError, EOFError) as exc:
            raise RouterError(
                f"{self.where}: {what} failed at {self.session.current}: {describe_error(exc)}"
            ) from None
        except _SessionClosed:
            raise RouterError(
                f"{self.where}: {what} failed after {self.session.current}: the admin "
                "connection was closed (shutting down)"
            ) from None
        finally:
            self.calls -= 1

    async def _acquire(
        self, what: str, ahead: int, wait: float, *, busy: bool, lines: Lines | None = None
    ) -> None:
        """The lock within ``wait`` s; past it RouterBusy (``busy``) or RouterError."""
        try:
            async with asyncio.timeout(wait):
                await self.lock.acquire()
            return
        except TimeoutError:
            pass
        if not busy:
            raise RouterError(
                f"{self.where}: {what} timed out after {wait:g} s waiting "
                f"for {ahead} other call(s) on this admin"
            )
        holder, since = self.holder or ("another call", time.monotonic())
        reason = (
            f"{self.where}: {what} skipped: the admin is busy with {holder} (for "
            f"{time.monotonic() - since:.2f} s; {ahead} call(s) ahead, waited {wait:g} s)"
        )
        if lines is not None:
            lines.emit("router_busy", None, "debug", reason=reason)
        raise RouterBusy(reason)

    async def _locked(self, body: Callable[[_AdminSession], Awaitable[T]], timeout: float) -> T:
        session = self.session
        try:
            await session.open(self.endpoint, timeout)
            try:
                return await body(session)
            except (pymysql.err.MySQLError, OSError, EOFError):
                if not session.reused or session.statements > 1:
                    raise
            session.close()
            await session.open(self.endpoint, timeout)
            return await body(session)
        except RouterError:
            raise  # a refusal: the connection is fine
        except BaseException:  # failed, timed out or cancelled mid-statement: never reused
            session.close()
            raise

    async def close(self, wait: float = 0.2) -> None:
        """Close the kept connection, after the call in progress (waited for ``wait`` s; past
        that, closed under it: its next statement fails with a RouterError)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                async with self.lock:
                    self.session.close()
                    return
        self.session.close()


class AdminLinks:
    """The process's AdminLinks, one per ProxySQL admin endpoint (host:port, one spelling per
    address: ``admin_key``, the one check-config uses): the routers of clusters
    routed by the same ProxySQL get the same link. Two clusters naming the same endpoint with
    other credentials or TLS settings are refused (RouterError): two connections would mean
    two locks. (``check-config`` refuses both first; a host name is not resolved.)"""

    def __init__(self) -> None:
        self._links: dict[tuple[str, int], tuple[AdminLink, TlsSettings]] = {}

    def get(self, settings: ProxySQLSettings) -> AdminLink:
        endpoint = _endpoint_of(settings)
        key = admin_key(settings.host, settings.port)
        if key not in self._links:
            self._links[key] = (AdminLink(endpoint), settings.tls)
        link, tls = self._links[key]
        credentials = (link.endpoint.user, link.endpoint.password)
        if credentials != (endpoint.user, endpoint.password) or tls != settings.tls:
            raise RouterError(
                f"{link.where} is named by several clusters with other user, password or TLS "
                "settings: one admin interface is driven over one connection, give them the "
                "same [router.proxysql] user, password and tls"
            )
        return link

    def __len__(self) -> int:
        return len(self._links)

    async def close(self) -> None:
        for link, _ in self._links.values():
            await link.close()


def _endpoint_of(settings: ProxySQLSettings) -> Endpoint:
    password = settings.password.get_secret_value() if settings.password else ""
    return endpoint_for(settings.host, settings.port, settings.user, password, settings.tls)


class ProxySQLRouter:
    """The Router over ProxySQL's admin interface. See the module doc and docs/proxysql.md.

    Every public call runs whole on the ``link`` (``AdminLink``: the admin's one kept
    connection, under its one lock; the routers of other clusters on the same ProxySQL share
    it, see ``AdminLinks``; without ``link``, one of its own) and is bounded, waiting for the
    lock and connecting included, by ``settings.timeout``; any failure is a RouterError within
    that time. Every statement that changes a row names this router's hostgroups and nodes.
    ``statements_sent`` lists every write statement sent (LOAD/SAVE included), in order.
    ``router`` settings are accepted for the common constructor shape; the desired state
    already says whether the primary is also a reader (``primary_is_reader``), and it is
    applied as given.
    """

    kind = "proxysql"

    def __init__(
        self,
        settings: ProxySQLSettings,
        nodes: Sequence[NodeSettings],
        router: RouterSettings | None = None,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        retry_delay: float = 0.05,
        link: AdminLink | None = None,
        share_age: float = 0.0,
        cluster: str | None = None,
        busy_after: float | None = None,
        lines: Lines | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.settings = settings
        self.layout = Layout.of(Hostgroups.from_settings(settings), nodes)
        self.router_settings = router
        self.statements_sent: list[str] = []
        self._owns_link = link is None
        self.link = link if link is not None else AdminLink(_endpoint_of(settings))
        self.link.register(self.layout, cluster)
        self.share_age = share_age
        """Seconds a probe read of the whole link may be served to this router's probe when
        several routers share the link (0: never): one read per interval, not one per cluster
        (a read of ``runtime_mysql_servers`` costs ProxySQL more the more rows it holds)."""
        self._attempts = attempts
        self._retry_delay = retry_delay
        self.cluster = cluster
        self.lines: Lines = lines if lines is not None else StdlibLines(log)
        """This module's lines: the cluster's JsonLog in a running controller."""
        self.busy_after = busy_after
        """Seconds the probe waits for the link behind other calls before it is skipped
        (RouterBusy: the admin is busy, not failing); None: it waits like any call."""

    # --- Router ---

    async def read(self) -> Membership:
        rows = await self._call("read", self._read_runtime)
        return membership_of(rows, self.layout)

    async def apply(
        self,
        desired: Membership,
        *,
        allow_no_writer: bool = False,
        allow_hidden_change: bool = False,
    ) -> bool:
        if problem := desired_state_problem(desired, allow_no_writer=allow_no_writer):
            raise RouterError(f"refusing to apply ProxySQL membership: {problem}")
        if unknown := desired.nodes() - self.layout.names():
            raise RouterError(
                f"refusing to apply ProxySQL membership: unmanaged node(s) {sorted(unknown)}"
            )
        return await self._call(
            "apply", lambda session: self._apply(session, desired, allow_hidden_change)
        )

    async def close(self) -> None:
        """The kept admin connection, when the link is this router's own (a shared link is
        closed by its owner, ``AdminLinks.close``). On a shared one its rows stay registered:
        the other clusters' check before each LOAD keeps covering them (a cluster refused at
        start-up or crashed is exactly the one an operator may be editing by hand); a fresh
        router of the same cluster takes their place (``AdminLink.register``)."""
        if self._owns_link:
            await self.link.close()

    async def drain(self, node: str, *, timeout: float, poll: float = 0.02) -> Drained:
        """Set ``node``'s writer row OFFLINE_SOFT and wait until none of its writer connections
        is in use (``stats_mysql_connection_pool.ConnUsed`` 0) or ``timeout`` seconds passed.

        OFFLINE_SOFT: a transaction running there finishes (its connection is closed when it
        returns to the pool); a new statement for the writer hostgroup finds no server and is
        held by ProxySQL (``mysql-connect_timeout_server_max``) until a writer is back: a pause
        for the client, not an error. A session that disabled multiplexing (user variables,
        ``LOCK TABLES``, ``GET_LOCK`` ...) keeps its connection while idle and holds the drain
        until the deadline. See docs/proxysql.md.
        """
        if node not in self.layout.names():
            raise RouterError(f"cannot drain {node}: not a managed node")
        started = time.monotonic()
        await self._call("drain", lambda session: self._start_drain(session, node))
        host, port = self.layout.address(node)
        sql = connections_in_use_sql(self.layout.hostgroups.writer, host, port)
        while True:
            rows = await self._call("drain wait", lambda session: session.query(sql))
            in_use = sum(int(row["ConnUsed"]) for row in rows)
            elapsed = time.monotonic() - started
            if in_use == 0 or elapsed >= timeout:
                self.lines.emit(
                    "router_drained", node, "info", seconds=round(elapsed, 3), in_use=in_use
                )
                return Drained(node, in_use == 0, in_use, round(elapsed, 3))
            await asyncio.sleep(min(poll, timeout - elapsed))

    # --- conflicts ---

    async def conflicts(self) -> list[str]:
        """One warning per ProxySQL setting that would route against the controller."""
        return await self._call("conflicts", self._conflicts)

    async def probe(self) -> tuple[Membership, list[str]]:
        """``read`` and ``conflicts`` together (the router probe's call, every interval): the
        writer rows the conflicts need come from the same read. With several routers on the
        link, one read of all their rows serves every probe for ``share_age`` seconds."""
        return await self.link.call(
            "probe",
            self._probe,
            self.settings.timeout,
            busy_after=self.busy_after,
            by=self._by,
            lines=self.lines,
        )

    async def check_startup(self) -> None:
        """Refuse to start (RouterError) when ProxySQL would fight the controller. An admin
        that does not answer now (down, timed out, refused) is no reason to refuse: a warning
        here; the router probe reports it as a problem and routing is repaired when it
        answers (conflicts included: ``apply`` checks the replication hostgroups again)."""
        try:
            warnings = await self.conflicts()
        except RouterError as exc:
            self.lines.emit("router_startup_check_skipped", None, "warning", reason=str(exc))
            return
        if warnings:
            raise RouterError(
                f"ProxySQL at {self.link.endpoint.host}:{self.link.endpoint.port} conflicts "
                "with hacontrol; "
                "refusing to start until fixed:\n- " + "\n- ".join(warnings)
            )

    # --- internals ---

    async def _read_runtime(self, session: _AdminSession) -> list[ServerRow]:
        return await session.servers(RUNTIME_TABLE, self.layout.hostgroups.ids())

    async def _apply(
        self, session: _AdminSession, desired: Membership, allow_hidden_change: bool = False
    ) -> bool:
        self.link.shared_read = None  # from here on, a probe reads again
        ids = self.layout.hostgroups.ids()
        if pairs := await self._pair_conflicts(session):
            raise RouterError(
                "refusing to apply ProxySQL membership while ProxySQL's monitor routes the same "
                "hostgroups by read_only (hacontrol would fight it): " + "; ".join(pairs)
            )
        sent = False
        for attempt in range(1, self._attempts + 1):
            config = await session.servers(CONFIG_TABLE, ids)
            runtime = await session.servers(RUNTIME_TABLE, ids)
            if not allow_hidden_change and (
                problem := hidden_problem(desired, config, runtime, self.layout)
            ):
                raise RouterError(f"refusing to apply ProxySQL membership: {problem}")
            disk = await session.servers(DISK_TABLE, ids)
            statements = plan_statements(
                desired, config, runtime, disk, self.layout, hidden=allow_hidden_change
            )
            if not statements:
                return sent
            for sql in statements:
                if sql == LOAD_TO_RUNTIME:
                    await self._check_before_load(session)
                self.statements_sent.append(sql)
                await session.query(sql)
                sent = True
                self.lines.emit("router_statement", None, "info", sql=sql)
            difference = differences(await self._read_runtime(session), desired, self.layout)
            if not difference:
                return True
            self.lines.emit(
                "router_mismatch",
                None,
                "warning",
                reason="ProxySQL's runtime does not match the desired membership",
                attempt=attempt,
                attempts=self._attempts,
                differences=list(difference),
            )
            if attempt < self._attempts:
                await asyncio.sleep(self._retry_delay)
        raise RouterError(
            f"ProxySQL did not confirm the membership after {self._attempts} attempts: "
            + "; ".join(difference)
        )

    async def _start_drain(self, session: _AdminSession, node: str) -> None:
        self.link.shared_read = None  # from here on, a probe reads again
        ids = (self.layout.hostgroups.writer,)
        config = await session.servers(CONFIG_TABLE, ids)
        runtime = await session.servers(RUNTIME_TABLE, ids)
        for sql in plan_drain(node, config, runtime, self.layout):
            if sql == LOAD_TO_RUNTIME:
                await self._check_before_load(session)
            self.statements_sent.append(sql)
            await session.query(sql)
            self.lines.emit("router_statement", None, "info", sql=sql)

    async def _check_before_load(self, session: _AdminSession) -> None:
        """The last guard: never LOAD a configuration with two managed writers (someone else
        may have written mysql_servers meanwhile), of this cluster or of any other cluster
        routed through the same admin (a LOAD publishes their rows too)."""
        layouts = self.link.layouts
        ids = sorted({layout.hostgroups.writer for layout in layouts})
        config = await session.servers(CONFIG_TABLE, ids)
        for layout in layouts:
            if writers := extra_writers(config, layout):
                writer = layout.hostgroups.writer
                whose = "" if layout is self.layout else f" of {self.link.owners[writer]}"
                why = (
                    "; another cluster on this admin: a LOAD would publish its rows too, so "
                    "this cluster's change waits until that is fixed"
                    if whose
                    else ""
                )
                raise RouterError(
                    f"refusing to {LOAD_TO_RUNTIME}: mysql_servers holds {len(writers)} "
                    f"writers {writers} in hostgroup {writer}{whose} (changed by "
                    f"someone else meanwhile?){why}"
                )

    async def _replication_hostgroups(
        self, session: _AdminSession
    ) -> tuple[list[ReplicationHostgroup], list[ReplicationHostgroup]]:
        """(active in runtime, configured) mysql_replication_hostgroups rows."""
        rows = await session.read(REPLICATION_HOSTGROUPS_SQL)  # both tables, one round trip
        found: tuple[list[ReplicationHostgroup], list[ReplicationHostgroup]] = ([], [])
        for row in rows:
            found[0 if row.get("source") == "runtime" else 1].append(
                ReplicationHostgroup.from_admin(row)
            )
        return found

    async def _probe(self, session: _AdminSession) -> tuple[Membership, list[str]]:
        link, ids = self.link, self.layout.hostgroups.ids()
        sharing = self.share_age > 0 and len(link.layouts) > 1
        read = link.shared_read if sharing else None
        if read is None or not read.serves(ids, time.monotonic(), self.share_age):
            at = time.monotonic()
            read_ids = link.hostgroup_ids() if sharing else ids
            rows = await session.servers(RUNTIME_TABLE, read_ids)
            pairs = await self._replication_hostgroups(session)
            read = SharedRead.of(at, read_ids, rows, pairs)
            link.shared_read = read if sharing else None
        runtime_pairs, config_pairs = read.pairs
        writer_rows = read.rows_of((self.layout.hostgroups.writer,))
        warnings = conflict_warnings(runtime_pairs, config_pairs, writer_rows, self.layout)
        return membership_of(read.rows_of(ids), self.layout), warnings

    async def _pair_conflicts(self, session: _AdminSession) -> list[str]:
        runtime_pairs, config_pairs = await self._replication_hostgroups(session)
        return conflict_warnings(runtime_pairs, config_pairs, (), self.layout)

    async def _conflicts(self, session: _AdminSession) -> list[str]:
        runtime_pairs, config_pairs = await self._replication_hostgroups(session)
        writer_rows = await session.servers(RUNTIME_TABLE, (self.layout.hostgroups.writer,))
        warnings = conflict_warnings(runtime_pairs, config_pairs, writer_rows, self.layout)
        peers = await session.query(f"SELECT hostname, port FROM {PEERS_TABLE}")
        rows = await session.query(
            "SELECT variable_value FROM runtime_global_variables "
            f"WHERE variable_name = {sql_literal(CLUSTER_SYNC_VARIABLE)}"
        )
        diffs = int(rows[0]["variable_value"]) if rows else 0
        addresses = [f"{p['hostname']}:{p['port']}" for p in peers]
        if warning := cluster_sync_warning(addresses, diffs):
            warnings.append(warning)
        return warnings

    @property
    def _by(self) -> str:
        return f"cluster {self.cluster}" if self.cluster else "a cluster"

    async def _call(self, what: str, body: Callable[[_AdminSession], Awaitable[T]]) -> T:
        return await self.link.call(
            what, body, self.settings.timeout, by=self._by, lines=self.lines
        )
