"""MySQL 5.7, 8.0, 8.4 and later: UUID GTID sets, replication channels.

Syntax by version, from MySQL's reference manual:

- 8.0.22: SHOW REPLICA STATUS (columns Source_* / Replica_*), START/STOP/RESET REPLICA.
- 8.0.23: CHANGE REPLICATION SOURCE TO ... SOURCE_AUTO_POSITION = 1.
- 8.0.26: semi-sync plugins rpl_semi_sync_source / rpl_semi_sync_replica and their variables.
- 8.4: the SLAVE / MASTER statements and the old semi-sync plugins are gone.

Parsing accepts both the old and the new column and variable names, whatever the version.
Actions manage the default channel only; other channels are reported, never changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

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
    column_of,
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
)

_SERVER = (
    "SELECT @@global.server_id AS server_id, @@global.read_only AS read_only, "
    "@@global.super_read_only AS super_read_only, @@global.log_bin AS log_bin, "
    "@@global.gtid_executed AS gtid_executed"
)
_HEARTBEATS = (
    "SELECT CHANNEL_NAME AS channel_name, COUNT_RECEIVED_HEARTBEATS AS heartbeats "
    "FROM performance_schema.replication_connection_status"
)
# Variables exist only while the semi-sync plugins are loaded: absent means disabled.
_SEMI_SYNC_VARIABLES = (
    "SHOW GLOBAL VARIABLES WHERE Variable_name IN "
    "('rpl_semi_sync_source_enabled', 'rpl_semi_sync_replica_enabled', "
    "'rpl_semi_sync_master_enabled', 'rpl_semi_sync_slave_enabled')"
)
# Names per MySQL's reference manual (8.0.26 renamed them); not recorded from a live server.
_SEMI_SYNC_SETTINGS = (
    "SHOW GLOBAL VARIABLES WHERE Variable_name IN "
    "('rpl_semi_sync_source_timeout', 'rpl_semi_sync_master_timeout', "
    "'rpl_semi_sync_source_wait_no_replica', 'rpl_semi_sync_master_wait_no_slave')"
)
_SEMI_SYNC_STATUS = (
    "SHOW GLOBAL STATUS WHERE Variable_name IN "
    "('Rpl_semi_sync_source_clients', 'Rpl_semi_sync_source_status', "
    "'Rpl_semi_sync_master_clients', 'Rpl_semi_sync_master_status', "
    "'Rpl_semi_sync_replica_status', 'Rpl_semi_sync_slave_status')"
)

# (new name, old name) of the SHOW REPLICA / SLAVE STATUS columns we read.
_HOST = ("Source_Host", "Master_Host")
_PORT = ("Source_Port", "Master_Port")
_IO_RUNNING = ("Replica_IO_Running", "Slave_IO_Running")
_SQL_RUNNING = ("Replica_SQL_Running", "Slave_SQL_Running")
_SECONDS_BEHIND = ("Seconds_Behind_Source", "Seconds_Behind_Master")
_SOURCE_SERVER_ID = ("Source_Server_Id", "Master_Server_Id")


@dataclass(frozen=True)
class MySQL:
    version: Version
    name: ClassVar[FlavorName] = FlavorName.MYSQL

    @property
    def replica_keyword(self) -> bool:
        """SHOW REPLICA STATUS, START / STOP / RESET REPLICA (8.0.22+)."""
        return self.version >= (8, 0, 22)

    @property
    def source_keyword(self) -> bool:
        """CHANGE REPLICATION SOURCE TO with SOURCE_* options (8.0.23+)."""
        return self.version >= (8, 0, 23)

    @property
    def semi_sync_new_names(self) -> bool:
        """rpl_semi_sync_source_* / rpl_semi_sync_replica_* variables (8.0.26+)."""
        return self.version >= (8, 0, 26)

    def status_sql(self) -> tuple[str, ...]:
        replicas = "SHOW REPLICA STATUS" if self.replica_keyword else "SHOW SLAVE STATUS"
        return (_SERVER, replicas, _HEARTBEATS, _SEMI_SYNC_VARIABLES, _SEMI_SYNC_STATUS)

    def parse_status(self, version: str, results: ResultSets) -> NodeStatus:
        server_rows, replica_rows, heartbeat_rows, semi_variables, semi_status = result_sets(
            results, 5, "mysql"
        )
        where = "mysql status: server variables"
        server = single_row(server_rows, where)
        heartbeats = _heartbeats(heartbeat_rows)
        statement = self.status_sql()[1]
        return NodeStatus(
            flavor=self.name,
            version=version,
            server_id=integer(column(server, "server_id", where), f"{where} server_id"),
            read_only=flag(column(server, "read_only", where), f"{where} read_only"),
            super_read_only=flag(
                column(server, "super_read_only", where), f"{where} super_read_only"
            ),
            gtid_executed=gtid_text(column(server, "gtid_executed", where)),
            gtid_binlog_pos="",
            gtid_slave_pos="",
            replication=tuple(
                _replication(row, heartbeats, f"mysql status: {statement} row {number}")
                for number, row in enumerate(replica_rows, start=1)
            ),
            semi_sync=semi_sync_from(
                semi_variables,
                semi_status,
                source_names=("source", "master"),
                replica_names=("replica", "slave"),
                where="mysql status:",
            ),
            log_bin=flag(column(server, "log_bin", where), f"{where} log_bin"),
        )

    def stop_replication_sql(self) -> Sql:
        return Sql("STOP REPLICA" if self.replica_keyword else "STOP SLAVE")

    def reset_replication_sql(self) -> Sql:
        return Sql("RESET REPLICA ALL" if self.replica_keyword else "RESET SLAVE ALL")

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
        prefix = "SOURCE" if self.source_keyword else "MASTER"
        names = ["HOST", "PORT", "USER", "PASSWORD", "CONNECT_RETRY"]
        params: list[object] = [host, check_port(port), user, password]
        params.append(check_connect_retry(connect_retry))
        if heartbeat is not None:
            names.append("HEARTBEAT_PERIOD")
            params.append(check_seconds(heartbeat, "heartbeat"))
        options = [f"{prefix}_{name} = %s" for name in names]
        ssl_options, ssl_params = tls_options(tls, prefix)
        options += ssl_options
        params += ssl_params
        if tls is not None and tls.get_public_key and self.version >= (8, 0, 0):
            # caching_sha2_password (MySQL 8's default) over plain TCP: the replica asks the
            # source for its RSA key. 5.7 has neither the plugin by default nor the option.
            options.append(f"GET_{prefix}_PUBLIC_KEY = 1")
        options.append(f"{prefix}_AUTO_POSITION = 1")
        statement = "CHANGE REPLICATION SOURCE TO " if self.source_keyword else "CHANGE MASTER TO "
        return Sql(statement + ", ".join(options), tuple(params))

    def start_replication_sql(self) -> Sql:
        return Sql("START REPLICA" if self.replica_keyword else "START SLAVE")

    def set_read_only_sql(self, on: bool) -> tuple[Sql, ...]:
        # super_read_only=ON implies read_only=ON and read_only=OFF implies super_read_only=OFF;
        # both are spelled out, in an order where each step is valid on its own.
        if on:
            return (Sql("SET GLOBAL read_only = ON"), Sql("SET GLOBAL super_read_only = ON"))
        return (Sql("SET GLOBAL super_read_only = OFF"), Sql("SET GLOBAL read_only = OFF"))

    def writable_if_holder_sql(self, lock: str, holder: int) -> tuple[Sql, ...]:
        # Lost between the two: super_read_only off, read_only still on (read-only for all but
        # SUPER users), which the caller reads back.
        return (
            off_if_holder("super_read_only", lock, holder),
            off_if_holder("read_only", lock, holder),
        )

    def semi_sync_sql(self, *, source: bool, replica: bool) -> tuple[Sql, ...]:
        # Fails with ER_UNKNOWN_SYSTEM_VARIABLE when the plugin is not loaded (INSTALL PLUGIN
        # or plugin-load-add is the operator's job); the replica side takes effect when the
        # IO thread reconnects.
        source_name, replica_name = (
            ("source", "replica") if self.semi_sync_new_names else ("master", "slave")
        )
        return (
            Sql(f"SET GLOBAL rpl_semi_sync_{source_name}_enabled = {'ON' if source else 'OFF'}"),
            Sql(f"SET GLOBAL rpl_semi_sync_{replica_name}_enabled = {'ON' if replica else 'OFF'}"),
        )

    def semi_sync_settings_sql(self) -> str:
        return _SEMI_SYNC_SETTINGS

    def parse_semi_sync_settings(self, rows: Sequence[Row]) -> SemiSyncSettings:
        return semi_sync_settings(rows, source_names=("source", "master"), where="mysql")

    def wait_for_gtid_sql(self, gtids: str, timeout: float) -> Sql:
        return Sql(
            "SELECT WAIT_FOR_EXECUTED_GTID_SET(%s, %s) AS result",
            (gtids, check_seconds(timeout, "timeout")),
        )

    def wait_for_gtid_reached(self, result: object) -> bool:
        code = integer(result, "WAIT_FOR_EXECUTED_GTID_SET result")
        if code not in (0, 1):
            raise ValueError(f"WAIT_FOR_EXECUTED_GTID_SET result: expected 0 or 1, got {code}")
        return code == 0


def _heartbeats(rows: Sequence[Row]) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    for number, row in enumerate(rows, start=1):
        where = f"mysql status: replication_connection_status row {number}"
        channel = text(column(row, "channel_name", where))
        found[channel] = optional_integer(column(row, "heartbeats", where), f"{where} heartbeats")
    return found


def _replication(row: Row, heartbeats: dict[str, int | None], where: str) -> ReplicationStatus:
    channel = text(column(row, "Channel_Name", where))
    where = f"{where} (channel {channel!r})"

    def get(names: tuple[str, str] | str) -> object:
        return column(row, names, where) if isinstance(names, str) else column_of(row, names, where)

    source_server_id = integer(get(_SOURCE_SERVER_ID), f"{where} Source_Server_Id")
    return ReplicationStatus(
        connection_name=channel,
        source_host=text(get(_HOST)),
        source_port=integer(get(_PORT), f"{where} Source_Port"),
        io_state=IoState.parse(get(_IO_RUNNING), f"{where} Replica_IO_Running"),
        sql_running=flag(get(_SQL_RUNNING), f"{where} Replica_SQL_Running"),
        last_io_errno=integer(get("Last_IO_Errno"), f"{where} Last_IO_Errno"),
        last_io_error=text(get("Last_IO_Error")),
        last_sql_errno=integer(get("Last_SQL_Errno"), f"{where} Last_SQL_Errno"),
        last_sql_error=text(get("Last_SQL_Error")),
        seconds_behind=optional_integer(get(_SECONDS_BEHIND), f"{where} Seconds_Behind_Source"),
        received_gtid=gtid_text(get("Retrieved_Gtid_Set")),
        heartbeats_received=heartbeats.get(channel),
        using_gtid=text(get("Auto_Position")),
        received_pos=read_position(
            row,
            ("Source_Log_File", "Master_Log_File"),
            ("Read_Source_Log_Pos", "Read_Master_Log_Pos"),
        ),
        source_server_id=source_server_id or None,
        tls=channel_tls(
            row.get("Source_SSL_Allowed", row.get("Master_SSL_Allowed")),
            row.get("Source_SSL_Verify_Server_Cert", row.get("Master_SSL_Verify_Server_Cert")),
        ),
    )
