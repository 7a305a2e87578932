"""Values and parsing helpers shared by the server flavors.

A flavor holds SQL text and turns result rows into values; it never does I/O. Result rows come
from aiomysql's DictCursor, whose values are ``str``, ``int``, ``float``, ``bytes`` or ``None``
depending on the column type, so every helper here accepts all of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import NamedTuple, Protocol

Row = Mapping[str, object]
ResultSets = Sequence[Sequence[Row]]
Version = tuple[int, int, int]


class FlavorName(StrEnum):
    MARIADB = "mariadb"
    MYSQL = "mysql"


class IoState(StrEnum):
    """The replication IO (receiver) thread, as SHOW ... STATUS prints it."""

    RUNNING = "Yes"
    CONNECTING = "Connecting"
    PREPARING = "Preparing"  # MariaDB: the IO thread is starting (seen right after START SLAVE)
    STOPPED = "No"

    @classmethod
    def parse(cls, value: object, where: str) -> IoState:
        raw = text(value).strip()
        for state in cls:
            if raw.lower() == state.value.lower():
                return state
        raise ValueError(f"{where}: unknown IO thread state {raw!r}")


@dataclass(frozen=True)
class ReplicationStatus:
    """One replication connection of a replica (MariaDB connection / MySQL channel)."""

    connection_name: str
    source_host: str
    source_port: int
    io_state: IoState
    sql_running: bool
    last_io_errno: int
    last_io_error: str
    last_sql_errno: int
    last_sql_error: str
    seconds_behind: int | None  # NULL stays None: it is not a number to compare
    received_gtid: str  # MariaDB Gtid_IO_Pos, MySQL Retrieved_Gtid_Set; whitespace removed
    heartbeats_received: int | None
    using_gtid: str  # MariaDB Using_Gtid (No/Current_Pos/Slave_Pos); MySQL Auto_Position 1/0
    source_server_id: int | None  # None until the IO thread has talked to its source
    heartbeat_period: float | None = None
    """Seconds between the source's heartbeats (MariaDB Slave_heartbeat_period, default
    connection only); None when unknown. Needed to read "no progress" as "link lost"."""
    received_pos: tuple[str, int] | None = None
    """(source binlog file, position) the IO thread has read up to (Master_Log_File,
    Read_Master_Log_Pos): it moves with every event received, also inside one big
    transaction, when neither the received GTID (moved at the end of the event group) nor the
    heartbeats (sent only while the source is idle) do; None when the server does not say."""
    tls: str | None = None
    """The channel's TLS: "off", "on", "verified" (the source's certificate checked against
    its host), from Master_SSL_Allowed / Source_SSL_Allowed ("Ignored": the replica asked for
    TLS and the server has none: "off"); None when the server does not say."""


NEVER_FALLS_BACK = 86400.0
"""A semi-sync timeout of a day or more (seconds): the source never falls back in practice."""


@dataclass(frozen=True)
class SemiSync:
    source_enabled: bool
    source_clients: int | None  # None when the server does not report it (plugin not loaded)
    source_active: bool  # the source runs semi-synchronously right now (not fallen back)
    replica_enabled: bool
    source_timeout: float | None = None
    """Seconds a commit waits for a replica's acknowledgement before the source falls back to
    asynchronous replication (rpl_semi_sync_master_timeout / _source_timeout); None: not read."""
    source_wait_no_replica: bool | None = None
    """rpl_semi_sync_master_wait_no_slave / _source_wait_no_replica: OFF falls back as soon as
    no replica is connected, whatever the timeout; None: not read."""
    replica_active: bool | None = None
    """Rpl_semi_sync_slave_status / _replica_status: this replica's IO thread negotiated
    semi-sync with its source (the variable takes effect only at the IO thread's next
    connect); None: the server does not report it (plugin not loaded, an old recording)."""

    @property
    def replica_client(self) -> bool:
        """Connected to its source as a semi-sync client: the status when reported, else the
        variable (the best a server without the status says)."""
        return self.replica_enabled if self.replica_active is None else self.replica_active

    @property
    def never_falls_back(self) -> bool:
        """A source that acknowledges no commit no replica received, however long it waits."""
        return (
            self.source_enabled
            and self.source_wait_no_replica is True
            and self.source_timeout is not None
            and self.source_timeout >= NEVER_FALLS_BACK
        )


SemiSyncSettings = tuple[float | None, bool | None]
"""(SemiSync.source_timeout, SemiSync.source_wait_no_replica)."""


@dataclass(frozen=True)
class NodeStatus:
    flavor: FlavorName
    version: str
    server_id: int
    read_only: bool
    super_read_only: bool | None  # MySQL only
    gtid_executed: str  # MariaDB @@gtid_current_pos, MySQL @@gtid_executed; whitespace removed
    gtid_binlog_pos: str  # MariaDB only ('' for MySQL)
    gtid_slave_pos: str  # MariaDB only ('' for MySQL)
    replication: tuple[ReplicationStatus, ...]  # empty: not a replica
    semi_sync: SemiSync
    log_bin: bool
    gtid_binlog_state: str | None = None
    """MariaDB @@gtid_binlog_state, whitespace removed: the last GTID of every (domain, server
    id) pair in the binary log (``hacontrol.gtid.server_state``). None when not read (MySQL,
    whose gtid_executed already names every transaction)."""


class Sql(NamedTuple):
    """One statement and its parameters, for aiomysql's client-side ``%s`` escaping.

    ``await cursor.execute(stmt.sql, stmt.params)``. Values that come from settings or from
    the cluster (hosts, users, passwords, GTID sets) are always in ``params``, never in ``sql``.
    """

    sql: str
    params: tuple[object, ...] = ()


class ReplicationTls(Protocol):
    """TLS options of a replication channel (``settings.ReplicationTlsSettings``). Paths are
    on the replica's host. ``get_public_key``: MySQL 8 only (``caching_sha2_password``
    without TLS)."""

    @property
    def enabled(self) -> bool: ...
    @property
    def ca(self) -> str: ...
    @property
    def cert(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def verify_server_cert(self) -> bool: ...
    @property
    def get_public_key(self) -> bool: ...


def tls_options(tls: ReplicationTls | None, prefix: str) -> tuple[list[str], list[object]]:
    """``PREFIX_SSL = 1, PREFIX_SSL_CA = %s, ...`` and their parameters (files in params,
    never in the text). Nothing when TLS is not enabled: a replica keeps what it has."""
    if tls is None or not tls.enabled:
        return [], []
    options, params = [f"{prefix}_SSL = 1"], []
    for name, value in (("CA", tls.ca), ("CERT", tls.cert), ("KEY", tls.key)):
        if value:
            options.append(f"{prefix}_SSL_{name} = %s")
            params.append(value)
    options.append(f"{prefix}_SSL_VERIFY_SERVER_CERT = {1 if tls.verify_server_cert else 0}")
    return options, params


class Flavor(Protocol):
    """SQL text and result parsing of one server flavor and version. No I/O."""

    @property
    def name(self) -> FlavorName: ...

    @property
    def version(self) -> Version: ...

    def status_sql(self) -> tuple[str, ...]:
        """Statements that together give a NodeStatus, to run in one round trip.

        Join them with :func:`multi_statement` and send them on a connection opened with
        ``client_flag=CLIENT.MULTI_STATEMENTS``, without parameters; collect one list of dict
        rows per statement (``cursor.nextset()``) and hand them to :meth:`parse_status`.
        """
        ...

    def parse_status(self, version: str, results: ResultSets) -> NodeStatus:
        """Raises ValueError, with what and where, on anything unexpected."""
        ...

    def stop_replication_sql(self) -> Sql: ...

    def reset_replication_sql(self) -> Sql:
        """Forget the source entirely (replication must be stopped first)."""
        ...

    def change_source_sql(
        self,
        host: str,
        port: int,
        user: str,
        password: str,
        connect_retry: int = 1,
        heartbeat: float | None = None,
        tls: ReplicationTls | None = None,
    ) -> Sql:
        """Point replication at a new source with GTID auto-positioning (over TLS when
        ``tls`` is enabled)."""
        ...

    def start_replication_sql(self) -> Sql: ...

    def set_read_only_sql(self, on: bool) -> tuple[Sql, ...]: ...

    def writable_if_holder_sql(self, lock: str, holder: int) -> tuple[Sql, ...]:
        """``set_read_only_sql(False)``, applied by the server only while connection ``holder``
        holds the user lock ``lock`` (a fleet's leader lock on the node); otherwise each
        variable keeps its value."""
        ...

    def semi_sync_sql(self, *, source: bool, replica: bool) -> tuple[Sql, ...]: ...

    def wait_for_gtid_sql(self, gtids: str, timeout: float) -> Sql:
        """One row, one column ``result``; judge it with :meth:`wait_for_gtid_reached`."""
        ...

    def wait_for_gtid_reached(self, result: object) -> bool: ...

    def semi_sync_settings_sql(self) -> str:
        """One statement (SHOW GLOBAL VARIABLES rows): the source side's fallback settings,
        configuration rather than state, read once per probe connection."""
        ...

    def parse_semi_sync_settings(self, rows: Sequence[Row]) -> SemiSyncSettings:
        """(timeout in seconds, wait without replicas) of :meth:`semi_sync_settings_sql`."""
        ...


def off_if_holder(variable: str, lock: str, holder: int) -> Sql:
    """``SET GLOBAL variable = OFF`` while connection ``holder`` holds the user lock ``lock``
    as the server runs it; otherwise the variable keeps its value."""
    return Sql(
        f"SET GLOBAL {variable} = IF(IS_USED_LOCK(%s) <=> %s, 0, @@global.{variable})",
        (lock, holder),
    )


def multi_statement(statements: Iterable[str]) -> str:
    """Join statements into one multi-statement query text."""
    return ";\n".join(statements)


# --- version --------------------------------------------------------------------------------

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


def parse_version(version: str) -> Version:
    match = _VERSION.match(version.strip())
    if match is None:
        raise ValueError(f"cannot read a server version from {version!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


# --- values ---------------------------------------------------------------------------------


def text(value: object) -> str:
    """A column as text. NULL becomes ''."""
    if type(value) is str:  # what the reader gives for text columns: the common case first
        return value
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def integer(value: object, where: str) -> int:
    if type(value) is int:
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    raw = text(value).strip()
    if value is None or not re.fullmatch(r"-?\d+", raw):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    return int(raw)


def optional_integer(value: object, where: str) -> int | None:
    """NULL stays None; anything else must be an integer."""
    if value is None:
        return None
    return integer(value, where)


_TRUE = frozenset({"1", "on", "yes", "true"})
_FALSE = frozenset({"0", "off", "no", "false"})


def flag(value: object, where: str) -> bool:
    raw = text(value).strip().lower()
    if value is not None and raw in _TRUE:
        return True
    if value is not None and raw in _FALSE:
        return False
    raise ValueError(f"{where}: expected a boolean (ON/OFF, 1/0, Yes/No), got {value!r}")


def gtid_text(value: object) -> str:
    """A GTID set or position as text without any whitespace (MySQL wraps long sets)."""
    return "".join(text(value).split())


# --- rows -----------------------------------------------------------------------------------


def column(row: Row, name: str, where: str) -> object:
    if name not in row:
        raise ValueError(f"{where}: column {name!r} missing (columns: {', '.join(row)})")
    return row[name]


def read_position(
    row: Row, files: Sequence[str], positions: Sequence[str]
) -> tuple[str, int] | None:
    """(file, position) the IO thread has read up to, from the first columns present; None
    when absent or not a position (it only ever adds evidence of a working link)."""
    file = next((row[n] for n in files if n in row), None)
    pos = next((row[n] for n in positions if n in row), None)
    try:
        return (text(file), int(text(pos))) if file is not None and pos is not None else None
    except ValueError:
        return None


def column_of(row: Row, names: Sequence[str], where: str) -> object:
    """The first of several names a column has had across versions."""
    for name in names:
        if name in row:
            return row[name]
    wanted = " or ".join(repr(name) for name in names)
    raise ValueError(f"{where}: column {wanted} missing (columns: {', '.join(row)})")


def result_sets(results: ResultSets, count: int, flavor: str) -> ResultSets:
    if len(results) != count:
        raise ValueError(
            f"{flavor} status: expected {count} result sets, one per statement, got {len(results)}"
        )
    return results


def single_row(rows: Sequence[Row], where: str) -> Row:
    if len(rows) != 1:
        raise ValueError(f"{where}: expected exactly one row, got {len(rows)}")
    return rows[0]


def variables(rows: Sequence[Row], where: str) -> dict[str, object]:
    """Rows of SHOW VARIABLES / SHOW STATUS as a dict keyed by lower-case variable name."""
    found: dict[str, object] = {}
    for number, row in enumerate(rows, start=1):
        if "Variable_name" not in row or "Value" not in row:  # named only when missing
            here = f"{where} row {number}"
            column(row, "Variable_name", here), column(row, "Value", here)
        found[text(row["Variable_name"]).lower()] = row["Value"]
    return found


def semi_sync_settings(
    rows: Sequence[Row], *, source_names: Sequence[str], where: str
) -> SemiSyncSettings:
    """(timeout in seconds, wait without replicas) from SHOW GLOBAL VARIABLES rows; None for a
    variable that is absent (plugin not loaded)."""
    found = variables(rows, f"{where} semi-sync settings")
    timeout = wait = None
    for infix in source_names:
        timeout = timeout if timeout is not None else found.get(f"rpl_semi_sync_{infix}_timeout")
        for suffix in ("wait_no_slave", "wait_no_replica"):
            wait = wait if wait is not None else found.get(f"rpl_semi_sync_{infix}_{suffix}")
    ms = optional_integer(timeout, f"{where} semi-sync timeout")
    return (
        None if ms is None else ms / 1000,
        None if wait is None else flag(wait, f"{where} semi-sync wait without replicas"),
    )


def with_semi_sync_settings(status: NodeStatus, settings: SemiSyncSettings) -> NodeStatus:
    timeout, wait = settings
    semi = replace(status.semi_sync, source_timeout=timeout, source_wait_no_replica=wait)
    return replace(status, semi_sync=semi)


def semi_sync_from(
    variable_rows: Sequence[Row],
    status_rows: Sequence[Row],
    *,
    source_names: Sequence[str],
    replica_names: Sequence[str],
    where: str,
) -> SemiSync:
    """SemiSync from SHOW GLOBAL VARIABLES / SHOW GLOBAL STATUS rows.

    ``source_names`` / ``replica_names`` are infixes ("master", "source", "slave", "replica")
    tried in order; a variable that is absent (plugin not loaded) means disabled.
    """
    settings = variables(variable_rows, f"{where} semi-sync variables")
    status = variables(status_rows, f"{where} semi-sync status")

    def pick(found: dict[str, object], template: str, infixes: Sequence[str]) -> object | None:
        for infix in infixes:
            key = template.format(infix)
            if key in found:
                return found[key]
        return None

    def enabled(template: str, infixes: Sequence[str], what: str) -> bool:
        value = pick(settings, template, infixes)
        return False if value is None else flag(value, f"{where} {what}")

    clients = pick(status, "rpl_semi_sync_{}_clients", source_names)
    active = pick(status, "rpl_semi_sync_{}_status", source_names)
    replica_active = pick(status, "rpl_semi_sync_{}_status", replica_names)
    return SemiSync(
        source_enabled=enabled("rpl_semi_sync_{}_enabled", source_names, "semi-sync source"),
        source_clients=optional_integer(clients, f"{where} semi-sync clients"),
        source_active=False if active is None else flag(active, f"{where} semi-sync status"),
        replica_enabled=enabled("rpl_semi_sync_{}_enabled", replica_names, "semi-sync replica"),
        replica_active=None
        if replica_active is None
        else flag(replica_active, f"{where} semi-sync replica status"),
    )


def channel_tls(allowed: object, verify: object) -> str | None:
    """``ReplicationStatus.tls`` from the SSL_Allowed and SSL_Verify_Server_Cert columns."""
    if allowed is None:
        return None
    if text(allowed).strip().lower() != "yes":
        return "off"
    return "verified" if text(verify).strip().lower() == "yes" else "on"


def check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"source port must be an integer in 1..65535, got {port!r}")
    return port


def check_connect_retry(connect_retry: int) -> int:
    if isinstance(connect_retry, bool) or not isinstance(connect_retry, int) or connect_retry < 1:
        raise ValueError(f"connect_retry must be a positive integer, got {connect_retry!r}")
    return connect_retry


def check_seconds(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)
