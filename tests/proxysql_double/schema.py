"""ProxySQL 2.7.1 admin table definitions (copied from SHOW CREATE TABLE on a real 2.7.1) and
the row values the double is seeded with."""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

# What `SELECT @@version` answers (PROXYSQL_VERSION of a 2.7.1 build).
PROXYSQL_VERSION = "2.7.1-16-g2726c27"
# What the handshake advertises: mysql-server_version, 8.0.11 by default in ProxySQL 2.x.
HANDSHAKE_SERVER_VERSION = "8.0.11"

MYSQL_SERVERS_COLUMNS = """(
    hostgroup_id INT CHECK (hostgroup_id>=0) NOT NULL DEFAULT 0,
    hostname VARCHAR NOT NULL,
    port INT CHECK (port >= 0 AND port <= 65535) NOT NULL DEFAULT 3306,
    gtid_port INT CHECK ((gtid_port <> port OR gtid_port=0) AND gtid_port >= 0 AND gtid_port <= 65535) NOT NULL DEFAULT 0,
    status VARCHAR CHECK (UPPER(status) IN ('ONLINE','SHUNNED','OFFLINE_SOFT', 'OFFLINE_HARD')) NOT NULL DEFAULT 'ONLINE',
    weight INT CHECK (weight >= 0 AND weight <=10000000) NOT NULL DEFAULT 1,
    compression INT CHECK (compression IN(0,1)) NOT NULL DEFAULT 0,
    max_connections INT CHECK (max_connections >=0) NOT NULL DEFAULT 1000,
    max_replication_lag INT CHECK (max_replication_lag >= 0 AND max_replication_lag <= 126144000) NOT NULL DEFAULT 0,
    use_ssl INT CHECK (use_ssl IN(0,1)) NOT NULL DEFAULT 0,
    max_latency_ms INT UNSIGNED CHECK (max_latency_ms>=0) NOT NULL DEFAULT 0,
    comment VARCHAR NOT NULL DEFAULT '',
    PRIMARY KEY (hostgroup_id, hostname, port) )"""  # noqa: E501

MYSQL_REPLICATION_HOSTGROUPS_COLUMNS = """(
    writer_hostgroup INT CHECK (writer_hostgroup>=0) NOT NULL PRIMARY KEY,
    reader_hostgroup INT NOT NULL CHECK (reader_hostgroup<>writer_hostgroup AND reader_hostgroup>=0),
    check_type VARCHAR CHECK (LOWER(check_type) IN ('read_only','innodb_read_only','super_read_only','read_only|innodb_read_only','read_only&innodb_read_only')) NOT NULL DEFAULT 'read_only',
    comment VARCHAR NOT NULL DEFAULT '', UNIQUE (reader_hostgroup))"""  # noqa: E501

GLOBAL_VARIABLES_COLUMNS = (
    "(variable_name VARCHAR NOT NULL PRIMARY KEY , variable_value VARCHAR NOT NULL)"
)

# Tables of one configuration module, with their column definitions. ProxySQL 2.x loads and
# saves mysql_replication_hostgroups together with mysql_servers ("MYSQL SERVERS").
SERVERS_TABLES = {
    "mysql_servers": MYSQL_SERVERS_COLUMNS,
    "mysql_replication_hostgroups": MYSQL_REPLICATION_HOSTGROUPS_COLUMNS,
}
ALL_TABLES = {**SERVERS_TABLES, "global_variables": GLOBAL_VARIABLES_COLUMNS}


def main_schema() -> list[str]:
    """CREATE statements for the in-memory `main` database: config and runtime tables."""
    statements = [f"CREATE TABLE main.{name} {cols}" for name, cols in ALL_TABLES.items()]
    statements += [f"CREATE TABLE main.runtime_{name} {cols}" for name, cols in ALL_TABLES.items()]
    return statements


def disk_schema(schema: str = "disk") -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {schema}.{name} {cols}" for name, cols in ALL_TABLES.items()
    ]


@dataclass(frozen=True)
class ServerRow:
    """One row of mysql_servers, with ProxySQL's column defaults."""

    hostgroup_id: int
    hostname: str
    port: int = 3306
    gtid_port: int = 0
    status: str = "ONLINE"
    weight: int = 1
    compression: int = 0
    max_connections: int = 1000
    max_replication_lag: int = 0
    use_ssl: int = 0
    max_latency_ms: int = 0
    comment: str = ""

    @classmethod
    def column_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def values(self) -> tuple[int | str, ...]:
        return astuple(self)


@dataclass(frozen=True)
class ReplicationHostgroupRow:
    writer_hostgroup: int
    reader_hostgroup: int
    check_type: str = "read_only"
    comment: str = ""

    def values(self) -> tuple[int | str, ...]:
        return astuple(self)


# A small, honest subset of ProxySQL's global variables: the monitor settings observed on a real
# 2.7.1 (see the reference notes) and a few well-known ones. Real ProxySQL has hundreds.
DEFAULT_GLOBAL_VARIABLES: dict[str, str] = {
    "admin-read_only": "false",
    "admin-version": PROXYSQL_VERSION,
    "mysql-monitor_enabled": "true",
    "mysql-monitor_username": "monitor",
    "mysql-monitor_password": "monitor",
    "mysql-monitor_ping_interval": "8000",
    "mysql-monitor_ping_max_failures": "3",
    "mysql-monitor_ping_timeout": "1000",
    "mysql-monitor_read_only_interval": "1000",
    "mysql-monitor_read_only_timeout": "800",
    "mysql-monitor_read_only_max_timeout_count": "3",
    "mysql-monitor_writer_is_also_reader": "true",
    "mysql-monitor_replication_lag_interval": "10000",
    "mysql-monitor_slave_lag_when_null": "60",
}
