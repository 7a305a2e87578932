"""MariaDB 10.x / 11.x: GTID ``domain-server-seq`` positions, multi-source connections.

Column names checked against a real MariaDB 10.11 (tests/data/mariadb-10.11-*.json).
Actions manage the default (unnamed) replication connection only; named multi-source
connections are reported by parse_status but never changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from hacontrol import gtid
from hacontrol.flavors.base import (
    FlavorName,
    IoState,
    NodeStatus,
    ReplicationStatus,
    ReplicationTls,
    ResultSets,
    Row,
    SemiSyncSettings,
    Sql,
    Version,
    channel_tls,
    check_connect_retry,
    check_port,
    check_seconds,
    column,
    flag,
    gtid_text,
    integer,
    off_if_holder,
    optional_integer,
    read_position,
    result_sets,
    semi_sync_from,
    semi_sync_settings,
    single_row,
    text,
    tls_options,
    variables,
)

_SERVER = (
    "SELECT @@global.server_id AS server_id, @@global.read_only AS read_only, "
    "@@global.log_bin AS log_bin, @@global.gtid_current_pos AS gtid_current_pos, "
    "@@global.gtid_binlog_pos AS gtid_binlog_pos, @@global.gtid_slave_pos AS gtid_slave_pos, "
    "@@global.gtid_binlog_state AS gtid_binlog_state"
)
_REPLICAS = "SHOW ALL SLAVES STATUS"
_SEMI_SYNC_VARIABLES = (
    "SHOW GLOBAL VARIABLES WHERE Variable_name IN "
    "('rpl_semi_sync_master_enabled', 'rpl_semi_sync_slave_enabled')"
)
_SEMI_SYNC_SETTINGS = (
    "SHOW GLOBAL VARIABLES WHERE Variable_name IN "
    "('rpl_semi_sync_master_timeout', 'rpl_semi_sync_master_wait_no_slave')"
)
_SEMI_SYNC_STATUS = (
    "SHOW GLOBAL STATUS WHERE Variable_name IN "
    "('Rpl_semi_sync_master_clients', 'Rpl_semi_sync_master_status', "
    "'Rpl_semi_sync_slave_status', 'Slave_heartbeat_period')"
)


@dataclass(frozen=True)
class MariaDB:
    version: Version
    name: ClassVar[FlavorName] = FlavorName.MARIADB

    def status_sql(self) -> tuple[str, ...]:
        return (_SERVER, _REPLICAS, _SEMI_SYNC_VARIABLES, _SEMI_SYNC_STATUS)

    def parse_status(self, version: str, results: ResultSets) -> NodeStatus:
        server_rows, replica_rows, semi_variables, semi_status = result_sets(results, 4, "mariadb")
        where = "mariadb status: server variables"
        server = single_row(server_rows, where)
        return NodeStatus(
            flavor=self.name,
            version=version,
            server_id=integer(column(server, "server_id", where), f"{where} server_id"),
            read_only=flag(column(server, "read_only", where), f"{where} read_only"),
            super_read_only=None,
            gtid_executed=gtid_text(column(server, "gtid_current_pos", where)),
            gtid_binlog_pos=gtid_text(column(server, "gtid_binlog_pos", where)),
            gtid_slave_pos=gtid_text(column(server, "gtid_slave_pos", where)),
            replication=_with_heartbeat_period(
                tuple(
                    _replication(row, f"mariadb status: {_REPLICAS} row {number}")
                    for number, row in enumerate(replica_rows, start=1)
                ),
                semi_status,
            ),
            semi_sync=semi_sync_from(
                semi_variables,
                semi_status,
                source_names=("master",),
                replica_names=("slave",),
                where="mariadb status:",
            ),
            log_bin=flag(column(server, "log_bin", where), f"{where} log_bin"),
            gtid_binlog_state=_binlog_state(server),
        )

    def stop_replication_sql(self) -> Sql:
        return Sql("STOP SLAVE")

    def reset_replication_sql(self) -> Sql:
        return Sql("RESET SLAVE ALL")

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
        options = [
            "MASTER_HOST = %s",
            "MASTER_PORT = %s",
            "MASTER_USER = %s",
            "MASTER_PASSWORD = %s",
            "MASTER_CONNECT_RETRY = %s",
        ]
        params: list[object] = [host, check_port(port), user, password]
        params.append(check_connect_retry(connect_retry))
        if heartbeat is not None:
            options.append("MASTER_HEARTBEAT_PERIOD = %s")
            params.append(check_seconds(heartbeat, "heartbeat"))
        ssl_options, ssl_params = tls_options(tls, "MASTER")
        options += ssl_options
        params += ssl_params
        options.append("MASTER_USE_GTID = slave_pos")
        return Sql("CHANGE MASTER TO " + ", ".join(options), tuple(params))

    def start_replication_sql(self) -> Sql:
        return Sql("START SLAVE")

    def set_read_only_sql(self, on: bool) -> tuple[Sql, ...]:
        return (Sql(f"SET GLOBAL read_only = {'ON' if on else 'OFF'}"),)

    def writable_if_holder_sql(self, lock: str, holder: int) -> tuple[Sql, ...]:
        return (off_if_holder("read_only", lock, holder),)

    def semi_sync_sql(self, *, source: bool, replica: bool) -> tuple[Sql, ...]:
        # rpl_semi_sync_slave_enabled takes effect when the IO thread (re)connects.
        return (
            Sql(f"SET GLOBAL rpl_semi_sync_master_enabled = {'ON' if source else 'OFF'}"),
            Sql(f"SET GLOBAL rpl_semi_sync_slave_enabled = {'ON' if replica else 'OFF'}"),
        )

    def semi_sync_settings_sql(self) -> str:
        return _SEMI_SYNC_SETTINGS

    def parse_semi_sync_settings(self, rows: Sequence[Row]) -> SemiSyncSettings:
        return semi_sync_settings(rows, source_names=("master",), where="mariadb")

    def wait_for_gtid_sql(self, gtids: str, timeout: float) -> Sql:
        # Waits until @@gtid_slave_pos covers `gtids`: for a replica applying what it received.
        return Sql(
            "SELECT MASTER_GTID_WAIT(%s, %s) AS result",
            (gtids, check_seconds(timeout, "timeout")),
        )

    def wait_for_gtid_reached(self, result: object) -> bool:
        code = integer(result, "MASTER_GTID_WAIT result")
        if code not in (0, -1):
            raise ValueError(f"MASTER_GTID_WAIT result: expected 0 or -1, got {code}")
        return code == 0


def binlog_state_of(status: NodeStatus) -> gtid.BinlogState | None:
    """Every (domain, server id) pair the node is known to hold, with its last seq: the binlog
    state merged with the binlog and replica positions (``hacontrol.gtid.server_state``).

    None when the state was not read (MySQL, output recorded before the probe asked for it):
    then only positions can be compared. Raises ValueError on malformed server text.
    Errant transactions of ``old`` against ``new``:
    ``gtid.errant_by_state(binlog_state_of(old), binlog_state_of(new))``."""
    if status.flavor is not FlavorName.MARIADB or status.gtid_binlog_state is None:
        return None
    return gtid.server_state(
        status.gtid_binlog_state, status.gtid_binlog_pos, status.gtid_slave_pos
    )


def _binlog_state(server: Row) -> str | None:
    """@@gtid_binlog_state; None only for output recorded before the probe asked for it
    (tests/data), never for a live server, which always answers every column it is asked."""
    if "gtid_binlog_state" not in server:
        return None
    return gtid_text(server["gtid_binlog_state"])


def _with_heartbeat_period(
    channels: tuple[ReplicationStatus, ...], status_rows: Sequence[Row]
) -> tuple[ReplicationStatus, ...]:
    """Slave_heartbeat_period (a global status) belongs to the default connection."""
    raw = variables(status_rows, "mariadb status: global status").get("slave_heartbeat_period")
    try:
        period = float(text(raw)) if raw is not None else None
    except ValueError:
        period = None
    return tuple(
        replace(c, heartbeat_period=period) if c.connection_name == "" and period else c
        for c in channels
    )


def _replication(row: Row, where: str) -> ReplicationStatus:
    name = text(column(row, "Connection_name", where))
    where = f"{where} (connection {name!r})"

    def get(key: str) -> object:
        return column(row, key, where)

    source_server_id = integer(get("Master_Server_Id"), f"{where} Master_Server_Id")
    return ReplicationStatus(
        connection_name=name,
        source_host=text(get("Master_Host")),
        source_port=integer(get("Master_Port"), f"{where} Master_Port"),
        io_state=IoState.parse(get("Slave_IO_Running"), f"{where} Slave_IO_Running"),
        sql_running=flag(get("Slave_SQL_Running"), f"{where} Slave_SQL_Running"),
        last_io_errno=integer(get("Last_IO_Errno"), f"{where} Last_IO_Errno"),
        last_io_error=text(get("Last_IO_Error")),
        last_sql_errno=integer(get("Last_SQL_Errno"), f"{where} Last_SQL_Errno"),
        last_sql_error=text(get("Last_SQL_Error")),
        seconds_behind=optional_integer(
            get("Seconds_Behind_Master"), f"{where} Seconds_Behind_Master"
        ),
        received_gtid=gtid_text(get("Gtid_IO_Pos")),
        heartbeats_received=integer(
            get("Slave_received_heartbeats"), f"{where} Slave_received_heartbeats"
        ),
        using_gtid=text(get("Using_Gtid")),
        received_pos=read_position(row, ("Master_Log_File",), ("Read_Master_Log_Pos",)),
        # 0 until the IO thread has connected once: server_id 0 cannot be a source.
        source_server_id=source_server_id or None,
        tls=channel_tls(row.get("Master_SSL_Allowed"), row.get("Master_SSL_Verify_Server_Cert")),
    )
