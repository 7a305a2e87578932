"""SQL text and result parsing per server flavor. No I/O here.

The flavor is detected from the server itself (``SELECT @@version, @@version_comment`` right
after connecting), never from settings.
"""

from __future__ import annotations

from hacontrol.flavors.base import (
    Flavor,
    FlavorName,
    IoState,
    NodeStatus,
    ReplicationStatus,
    ReplicationTls,
    ResultSets,
    SemiSync,
    Sql,
    multi_statement,
    parse_version,
)
from hacontrol.flavors.mariadb import MariaDB
from hacontrol.flavors.mysql import MySQL

__all__ = [
    "DETECT_SQL",
    "Flavor",
    "FlavorName",
    "IoState",
    "MariaDB",
    "MySQL",
    "NodeStatus",
    "ReplicationStatus",
    "ReplicationTls",
    "ResultSets",
    "SemiSync",
    "Sql",
    "detect",
    "multi_statement",
    "parse_version",
]

DETECT_SQL = "SELECT @@version AS version, @@version_comment AS version_comment"

MIN_MARIADB = (10, 0, 0)  # GTID, SHOW ALL SLAVES STATUS, MASTER_GTID_WAIT
MIN_MYSQL = (5, 7, 0)  # super_read_only, WAIT_FOR_EXECUTED_GTID_SET, replication channels

# MySQL-protocol servers that print a MySQL version but do not replicate like MySQL.
_NOT_MYSQL = ("tidb", "vitess", "singlestore", "memsql", "clickhouse")


def detect(version: str, version_comment: str = "") -> Flavor:
    """The flavor of a server from its @@version and @@version_comment.

    Raises ValueError for a version that cannot be read, a server that is not MySQL or
    MariaDB, or a release older than the supported ones.
    """
    if not isinstance(version, str) or not version.strip():
        raise ValueError(f"empty or non-text server version {version!r}")
    lowered = f"{version} {version_comment}".lower()
    for other in _NOT_MYSQL:
        if other in lowered:
            raise ValueError(f"server {version!r} ({version_comment!r}) is not MySQL or MariaDB")
    if "mariadb" in lowered:
        # Some proxies show MariaDB's replication-compatibility prefix: 5.5.5-10.11.6-MariaDB.
        text = version.strip().removeprefix("5.5.5-")
        number = parse_version(text)
        if number < MIN_MARIADB:
            raise ValueError(f"MariaDB {text!r} is older than the supported 10.0")
        return MariaDB(number)
    number = parse_version(version)
    if number < MIN_MYSQL:
        raise ValueError(f"MySQL {version!r} is older than the supported 5.7")
    return MySQL(number)
