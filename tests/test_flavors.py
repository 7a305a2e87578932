"""Flavors: parsing recorded server output, detection, and the exact action SQL. Pure."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pymysql.converters import escape_item

from hacontrol import gtid
from hacontrol.flavors import (
    Flavor,
    FlavorName,
    IoState,
    MariaDB,
    MySQL,
    NodeStatus,
    ReplicationStatus,
    SemiSync,
    Sql,
    detect,
    multi_statement,
)
from hacontrol.flavors.mariadb import binlog_state_of
from hacontrol.settings import ReplicationTlsSettings as ReplicationTls
from tests.factories import running_channel

DATA = Path(__file__).parent / "data"
RECORDED = sorted(DATA.glob("*.json"))

MARIADB_VERSION = "10.11.19-MariaDB-0+deb12u1-log"
MYSQL_UUID = "73f86016-978b-11ee-ade5-8d2a2a562feb"


def load(name: str) -> dict[str, Any]:
    return json.loads((DATA / f"{name}.json").read_text())


def parse(recorded: dict[str, Any]) -> NodeStatus:
    flavor = detect(recorded["version"], recorded["version_comment"])
    return flavor.parse_status(recorded["version"], recorded["results"])


def replica(**changes: Any) -> ReplicationStatus:
    """The healthy default-connection replica of the recorded MariaDB pair, with changes."""
    recorded = {
        "source_port": 23306,
        "received_gtid": "0-1-8",
        "heartbeats_received": 81,
        "using_gtid": "Slave_Pos",
        "received_pos": ("vm-bin.000001", 1507),
        "tls": "off",  # Master_SSL_Allowed: No
    }
    return running_channel(**{**recorded, **changes})


def mysql_replica(**changes: Any) -> ReplicationStatus:
    """The replica row of MySQL's manual example (8.0 / 8.4 SHOW REPLICA STATUS), with changes."""
    manual = {
        "source_port": 13000,
        "received_gtid": f"{MYSQL_UUID}:1-3",
        "heartbeats_received": 7,
        "using_gtid": "1",
        "received_pos": ("master-bin.000001", 927),
        "tls": "off",
    }
    return running_channel(**{**manual, **changes})


NO_SEMI_SYNC_MARIADB = SemiSync(
    source_enabled=False, source_clients=0, source_active=False, replica_enabled=False
)
NO_SEMI_SYNC_PLUGIN = SemiSync(
    source_enabled=False, source_clients=None, source_active=False, replica_enabled=False
)


def mariadb_replica_node(**changes: Any) -> NodeStatus:
    node = NodeStatus(
        flavor=FlavorName.MARIADB,
        version=MARIADB_VERSION,
        server_id=2,
        read_only=False,
        super_read_only=None,
        gtid_executed="0-1-8",
        gtid_binlog_pos="",  # log_slave_updates is off: replicated events are not binlogged
        gtid_slave_pos="0-1-8",
        replication=(replica(),),
        semi_sync=NO_SEMI_SYNC_MARIADB,
        log_bin=True,
    )
    return NodeStatus(**{**node.__dict__, **changes})


def negotiated_replica(gtid: str, position: int, state: str, *, replica_active: bool) -> NodeStatus:
    """The recorded replica of a semi-sync primary, its rpl_semi_sync_slave_enabled ON, at
    ``gtid``; ``replica_active``: Rpl_semi_sync_slave_status (its IO thread negotiated)."""
    channel = replica(
        source_port=54709,
        received_gtid=gtid,
        heartbeats_received=1,
        heartbeat_period=0.5,
        received_pos=("binlog.000001", position),
    )
    return mariadb_replica_node(
        gtid_executed=gtid,
        gtid_binlog_pos=gtid,
        gtid_slave_pos=gtid,
        replication=(channel,),
        semi_sync=SemiSync(
            source_enabled=False,
            source_clients=0,
            source_active=False,
            replica_enabled=True,
            replica_active=replica_active,
        ),
        gtid_binlog_state=state,
    )


def mysql_node(version: str, **changes: Any) -> NodeStatus:
    node = NodeStatus(
        flavor=FlavorName.MYSQL,
        version=version,
        server_id=2,
        read_only=True,
        super_read_only=True,
        gtid_executed=f"{MYSQL_UUID}:1-3",
        gtid_binlog_pos="",
        gtid_slave_pos="",
        replication=(mysql_replica(),),
        semi_sync=NO_SEMI_SYNC_PLUGIN,
        log_bin=True,
    )
    return NodeStatus(**{**node.__dict__, **changes})


EXPECTED: dict[str, NodeStatus] = {
    "mariadb-10.11-primary": mariadb_replica_node(
        server_id=1, gtid_binlog_pos="0-1-8", gtid_slave_pos="", replication=()
    ),
    "mariadb-10.11-primary-semisync": mariadb_replica_node(
        server_id=1,
        gtid_executed="0-1-10",
        gtid_binlog_pos="0-1-10",
        gtid_slave_pos="",
        replication=(),
        semi_sync=SemiSync(
            source_enabled=True, source_clients=1, source_active=True, replica_enabled=False
        ),
    ),
    "mariadb-10.11-replica-running": mariadb_replica_node(),
    # Recorded from a sandbox: semi-sync on, log_slave_updates on, MASTER_HEARTBEAT_PERIOD 0.5.
    "mariadb-10.11-replica-heartbeat": mariadb_replica_node(
        read_only=True,
        gtid_executed="0-1-12",
        gtid_binlog_pos="0-1-12",
        gtid_slave_pos="0-1-12",
        replication=(
            replica(
                source_port=28000,
                received_gtid="0-1-12",
                heartbeats_received=0,
                heartbeat_period=0.5,
                received_pos=("mysql-bin.000001", 2425),
            ),
        ),
        semi_sync=SemiSync(
            source_enabled=False, source_clients=0, source_active=False, replica_enabled=True
        ),
    ),
    "mariadb-10.11-primary-heartbeat": mariadb_replica_node(
        server_id=1,
        gtid_executed="0-1-12",
        gtid_binlog_pos="0-1-12",
        gtid_slave_pos="",
        replication=(),
        semi_sync=SemiSync(
            source_enabled=True, source_clients=2, source_active=True, replica_enabled=True
        ),
    ),
    "mariadb-10.11-replica-stopped": mariadb_replica_node(
        replication=(replica(io_state=IoState.STOPPED, sql_running=False, seconds_behind=None),),
    ),
    "mariadb-10.11-replica-semisync": mariadb_replica_node(
        gtid_executed="0-1-10",
        gtid_slave_pos="0-1-10",
        replication=(
            replica(
                received_gtid="0-1-10",
                heartbeats_received=89,
                received_pos=("vm-bin.000001", 1833),
            ),
        ),
        semi_sync=SemiSync(
            source_enabled=False, source_clients=0, source_active=False, replica_enabled=True
        ),
    ),
    # Recorded from a pair (2026-11-30): a replica's semi-sync variable is not its link.
    "mariadb-10.11-replica-semisync-not-negotiated": negotiated_replica(
        "0-1-7", 1428, "0-2-2,0-1-7", replica_active=False
    ),
    "mariadb-10.11-replica-semisync-negotiated": negotiated_replica(
        "0-1-8", 1592, "0-2-2,0-1-8", replica_active=True
    ),
    "mariadb-10.11-replica-errors": mariadb_replica_node(
        replication=(
            # Received 0-1-9 but could not apply it: the SQL thread stopped on the duplicate.
            replica(
                sql_running=False,
                last_sql_errno=1062,
                last_sql_error=(
                    "Error 'Duplicate entry '100' for key 'PRIMARY'' on query. "
                    "Default database: ''. Query: 'INSERT INTO t.a VALUES (100)'"
                ),
                seconds_behind=None,
                received_gtid="0-1-9",
                heartbeats_received=83,
                received_pos=("vm-bin.000001", 1671),
            ),
            # A named connection that never reached its source: no server id yet.
            replica(
                connection_name="other",
                source_port=23399,
                io_state=IoState.CONNECTING,
                last_io_errno=2003,
                last_io_error=(
                    "error connecting to master 'repl@127.0.0.1:23399' - retry-time: 1  "
                    "maximum-retries: 100000  message: Can't connect to server on "
                    "'127.0.0.1' (111 \"Connection refused\")"
                ),
                seconds_behind=None,
                heartbeats_received=0,
                using_gtid="Current_Pos",
                source_server_id=None,
                received_pos=("", 4),
            ),
        ),
    ),
    # Recorded together on one sandbox: node1 wrote 0-1-14 that no replica received, node2 was
    # promoted by hand at 0-1-13 and wrote 0-2-14..18, node3 follows node2
    # (tests/test_flavors_binlog_state_live.py makes the same cluster).
    "mariadb-10.11-old-primary-diverged": mariadb_replica_node(
        server_id=1,
        read_only=True,
        gtid_executed="0-1-14",
        gtid_binlog_pos="0-1-14",
        gtid_slave_pos="",
        replication=(),
        semi_sync=SemiSync(
            source_enabled=False, source_clients=0, source_active=False, replica_enabled=True
        ),
        gtid_binlog_state="0-1-14",
    ),
    "mariadb-10.11-new-primary-diverged": mariadb_replica_node(
        gtid_executed="0-2-18",
        gtid_binlog_pos="0-2-18",
        gtid_slave_pos="0-1-13",
        replication=(),
        semi_sync=SemiSync(
            source_enabled=False, source_clients=1, source_active=False, replica_enabled=True
        ),
        gtid_binlog_state="0-1-13,0-2-18",
    ),
    "mariadb-10.11-replica-of-new-primary": mariadb_replica_node(
        server_id=3,
        read_only=True,
        gtid_executed="0-2-18",
        gtid_binlog_pos="0-2-18",
        gtid_slave_pos="0-2-18",
        replication=(
            replica(
                source_port=24401,
                received_gtid="0-2-18",
                heartbeats_received=0,
                source_server_id=2,
                heartbeat_period=0.5,
                received_pos=("mysql-bin.000001", 3973),
            ),
        ),
        semi_sync=SemiSync(
            source_enabled=False, source_clients=0, source_active=False, replica_enabled=True
        ),
        gtid_binlog_state="0-1-13,0-2-18",
    ),
    "mysql-5.7-replica": mysql_node(
        "5.7.44-log",
        gtid_executed="3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5",
        replication=(
            mysql_replica(
                source_host="localhost",
                received_gtid="3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5",
                heartbeats_received=42,
                received_pos=("master-bin.000002", 1307),
            ),
        ),
    ),
    "mysql-8.0-replica": mysql_node(
        "8.0.36",
        semi_sync=SemiSync(
            source_enabled=False, source_clients=None, source_active=False, replica_enabled=True
        ),
    ),
    "mysql-8.0-replica-broken": mysql_node(
        "8.0.36",
        server_id=3,
        super_read_only=False,
        gtid_executed=f"{MYSQL_UUID}:1-3,8a94f357-aab4-11df-86ab-c80aa9429562:1-5",
        replication=(
            mysql_replica(
                io_state=IoState.CONNECTING,
                last_io_errno=2003,
                last_io_error=(
                    "error connecting to master 'root@127.0.0.1:13000' - retry-time: 1 "
                    "retries: 3 message: Can't connect to MySQL server on '127.0.0.1:13000' (111)"
                ),
                seconds_behind=None,
                received_gtid=f"{MYSQL_UUID}:1-3,8a94f357-aab4-11df-86ab-c80aa9429562:1-5",
                heartbeats_received=0,
            ),
        ),
        semi_sync=SemiSync(
            source_enabled=False, source_clients=0, source_active=False, replica_enabled=True
        ),
    ),
    "mysql-8.4-replica": mysql_node(
        "8.4.2", replication=(mysql_replica(heartbeats_received=1201),)
    ),
    "mysql-8.4-primary": mysql_node(
        "8.4.2",
        server_id=1,
        read_only=False,
        super_read_only=False,
        replication=(),
        semi_sync=SemiSync(
            source_enabled=True, source_clients=2, source_active=True, replica_enabled=False
        ),
    ),
}

# The same primary as the negotiated replica's: it reports its own replica status OFF.
EXPECTED["mariadb-10.11-primary-semisync-one-client"] = replace(
    EXPECTED["mariadb-10.11-primary-semisync"],
    gtid_executed="0-1-8",
    gtid_binlog_pos="0-1-8",
    gtid_binlog_state="0-1-8",
    semi_sync=replace(EXPECTED["mariadb-10.11-primary-semisync"].semi_sync, replica_active=False),
)


def test_every_recorded_file_has_an_expectation() -> None:
    assert {path.stem for path in RECORDED} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parse_recorded_status(name: str) -> None:
    assert parse(load(name)) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_statements_are_the_current_status_sql(name: str) -> None:
    recorded = load(name)
    flavor = detect(recorded["version"], recorded["version_comment"])
    assert list(flavor.status_sql()) == recorded["statements"]
    assert len(recorded["results"]) == len(flavor.status_sql())
    assert recorded["_source"]


def as_bytes(value: object) -> object:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value).encode()
    return value


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_values_as_bytes_parse_the_same(name: str) -> None:
    """aiomysql returns bytes for binary columns and str / int otherwise: both must work."""
    recorded = load(name)
    recorded["results"] = [
        [{key: as_bytes(value) for key, value in row.items()} for row in rows]
        for rows in recorded["results"]
    ]
    assert parse(recorded) == EXPECTED[name]


def test_binlog_state_of() -> None:
    new = parse(load("mariadb-10.11-new-primary-diverged"))
    # The binlog state and gtid_slave_pos 0-1-13: server 1's GTIDs up to 13, its own to 18.
    assert str(binlog_state_of(new)) == "0-1-13,0-2-18"
    assert binlog_state_of(parse(load("mariadb-10.11-primary"))) is None  # not read
    assert binlog_state_of(parse(load("mysql-8.4-primary"))) is None
    replica_without_log_slave_updates = replace(new, gtid_binlog_state="", gtid_binlog_pos="")
    assert str(binlog_state_of(replica_without_log_slave_updates)) == "0-1-13"
    with pytest.raises(ValueError, match="binlog state"):
        binlog_state_of(replace(new, gtid_binlog_state="0-1"))


def test_binlog_state_is_read_and_old_recordings_lack_it() -> None:
    assert parse(load("mariadb-10.11-new-primary-diverged")).gtid_binlog_state == "0-1-13,0-2-18"
    # Recorded before the probe asked for it: None (not read), never "" (an empty state).
    assert parse(load("mariadb-10.11-primary")).gtid_binlog_state is None
    assert parse(load("mysql-8.4-primary")).gtid_binlog_state is None
    bare = load("mariadb-10.11-old-primary-diverged")
    bare["results"][0][0]["gtid_binlog_state"] = ""  # RESET MASTER: an empty state is a value
    assert parse(bare).gtid_binlog_state == ""


def test_a_replica_is_a_semi_sync_client_by_its_status_not_its_variable() -> None:
    """rpl_semi_sync_slave_enabled takes effect at the IO thread's next connect: the status
    says whether it did; a recording without the status falls back to the variable."""
    late = parse(load("mariadb-10.11-replica-semisync-not-negotiated")).semi_sync
    assert late.replica_enabled and late.replica_active is False and not late.replica_client
    linked = parse(load("mariadb-10.11-replica-semisync-negotiated")).semi_sync
    assert linked.replica_enabled and linked.replica_active and linked.replica_client
    old = parse(load("mariadb-10.11-replica-semisync")).semi_sync
    assert old.replica_active is None and old.replica_client
    assert not parse(load("mariadb-10.11-replica-running")).semi_sync.replica_client
    mysql = load("mysql-8.4-replica")  # the 8.0.26+ names, with the replica plugin loaded
    mysql["results"][3].append({"Variable_name": "rpl_semi_sync_replica_enabled", "Value": "ON"})
    mysql["results"][4].append({"Variable_name": "Rpl_semi_sync_replica_status", "Value": "OFF"})
    assert parse(mysql).semi_sync.replica_enabled and not parse(mysql).semi_sync.replica_client


def test_recorded_divergence_below_the_last_gtid() -> None:
    """The recorded old and new primaries: positions see nothing errant, binlog states see
    the old primary's 0-1-14, which the new primary never received."""
    old = parse(load("mariadb-10.11-old-primary-diverged"))
    new = parse(load("mariadb-10.11-new-primary-diverged"))
    follower = parse(load("mariadb-10.11-replica-of-new-primary"))

    def state(node: NodeStatus) -> gtid.BinlogState:
        found = binlog_state_of(node)
        assert found is not None
        return found

    assert gtid.parse(old.gtid_executed, "mariadb") <= gtid.parse(new.gtid_executed, "mariadb")
    assert str(gtid.errant_by_state(state(old), state(new))) == "0-1-14"
    assert gtid.errant_by_state(state(follower), state(new)).is_empty()
    assert gtid.errant_by_state(state(new), state(follower)).is_empty()


@pytest.mark.parametrize(
    ("name", "allowed", "verify", "tls"),
    [
        ("mariadb-10.11-replica-running", "Yes", "Yes", "verified"),
        ("mariadb-10.11-replica-running", "Yes", "No", "on"),
        ("mariadb-10.11-replica-running", "Ignored", "No", "off"),  # asked, server has none
        ("mysql-8.4-replica", "Yes", "Yes", "verified"),
        ("mysql-5.7-replica", "Yes", "No", "on"),
        ("mysql-8.0-replica", None, None, None),  # a server that does not say
    ],
)
def test_the_replication_channel_says_whether_it_is_encrypted(name, allowed, verify, tls):
    recorded = load(name)
    row = recorded["results"][1][0]
    for prefix in ("Master", "Source"):
        if f"{prefix}_SSL_Allowed" in row:
            if allowed is None:
                del row[f"{prefix}_SSL_Allowed"]
            else:
                row[f"{prefix}_SSL_Allowed"] = allowed
                row[f"{prefix}_SSL_Verify_Server_Cert"] = verify
    assert parse(recorded).replication[0].tls == tls


def test_null_seconds_behind_stays_none_and_zero_stays_zero() -> None:
    stopped = parse(load("mariadb-10.11-replica-stopped")).replication[0]
    broken = parse(load("mysql-8.0-replica-broken")).replication[0]
    running = parse(load("mariadb-10.11-replica-running")).replication[0]
    assert stopped.seconds_behind is None
    assert broken.seconds_behind is None
    assert running.seconds_behind == 0


def test_mysql_gtid_sets_lose_their_line_breaks() -> None:
    status = parse(load("mysql-8.0-replica-broken"))
    raw = load("mysql-8.0-replica-broken")["results"][0][0]["gtid_executed"]
    assert "\n" in raw
    assert status.gtid_executed == raw.replace("\n", "")


def test_mysql_accepts_old_column_names_on_new_versions() -> None:
    """SHOW SLAVE STATUS column names parse for an 8.0 flavor too (and vice versa)."""
    recorded = load("mysql-5.7-replica")
    old = MySQL((5, 7, 44)).parse_status("5.7.44", recorded["results"])
    new = MySQL((8, 4, 2)).parse_status("5.7.44", recorded["results"])
    assert old.replication == new.replication


# --- garbage ----------------------------------------------------------------------------------


def mutated(name: str, result_set: int, row: int, **changes: object) -> dict[str, Any]:
    recorded = copy.deepcopy(load(name))
    target = recorded["results"][result_set][row]
    for key, value in changes.items():
        if value is DROP:
            del target[key]
        else:
            target[key] = value
    return recorded


DROP = object()

GARBAGE = [
    ("mariadb-10.11-replica-running", 1, 0, {"Gtid_IO_Pos": DROP}, "'Gtid_IO_Pos' missing"),
    (
        "mariadb-10.11-replica-running",
        1,
        0,
        {"Slave_IO_Running": "Maybe"},
        "unknown IO thread state 'Maybe'",
    ),
    (
        "mariadb-10.11-replica-running",
        1,
        0,
        {"Slave_SQL_Running": "Perhaps"},
        "Slave_SQL_Running: expected a boolean",
    ),
    ("mariadb-10.11-replica-running", 1, 0, {"Master_Port": "abc"}, "Master_Port"),
    ("mariadb-10.11-replica-running", 1, 0, {"Seconds_Behind_Master": "soon"}, "Seconds_Behind"),
    ("mariadb-10.11-replica-running", 0, 0, {"server_id": "abc"}, "server_id: expected an integer"),
    ("mariadb-10.11-replica-running", 0, 0, {"server_id": None}, "server_id: expected an integer"),
    ("mariadb-10.11-replica-running", 0, 0, {"read_only": DROP}, "'read_only' missing"),
    ("mariadb-10.11-primary", 2, 0, {"Value": "MAYBE"}, "semi-sync source: expected a boolean"),
    ("mariadb-10.11-primary", 3, 0, {"Value": "many"}, "semi-sync clients"),
    ("mysql-8.0-replica", 1, 0, {"Replica_IO_Running": "Sleeping"}, "unknown IO thread state"),
    ("mysql-8.0-replica", 1, 0, {"Source_Host": DROP}, "'Source_Host' or 'Master_Host' missing"),
    ("mysql-8.0-replica", 1, 0, {"Channel_Name": DROP}, "'Channel_Name' missing"),
    ("mysql-8.0-replica", 0, 0, {"super_read_only": "sometimes"}, "super_read_only"),
    ("mysql-8.0-replica", 2, 0, {"heartbeats": "lots"}, "heartbeats: expected an integer"),
    ("mysql-5.7-replica", 1, 0, {"Master_Server_Id": "x"}, "Source_Server_Id"),
]


@pytest.mark.parametrize(("name", "result_set", "row", "changes", "message"), GARBAGE)
def test_garbage_raises_a_clear_value_error(
    name: str, result_set: int, row: int, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(mutated(name, result_set, row, **changes))


def test_error_names_the_row_and_connection() -> None:
    recorded = copy.deepcopy(load("mariadb-10.11-replica-errors"))
    recorded["results"][1][1]["Slave_IO_Running"] = "Sideways"
    with pytest.raises(ValueError) as raised:
        parse(recorded)
    assert "SHOW ALL SLAVES STATUS row 2 (connection 'other')" in str(raised.value)


def test_wrong_number_of_result_sets() -> None:
    recorded = load("mariadb-10.11-primary")
    with pytest.raises(ValueError, match="expected 4 result sets, one per statement, got 3"):
        MariaDB((10, 11, 19)).parse_status(MARIADB_VERSION, recorded["results"][:3])
    with pytest.raises(ValueError, match="expected 5 result sets"):
        MySQL((8, 0, 36)).parse_status("8.0.36", recorded["results"])


def test_server_variables_must_be_exactly_one_row() -> None:
    recorded = load("mariadb-10.11-primary")
    results = recorded["results"]
    for rows in ([], results[0] * 2):
        with pytest.raises(ValueError, match="expected exactly one row"):
            parse({**recorded, "results": [rows, *results[1:]]})


# --- detection --------------------------------------------------------------------------------

DETECT = [
    ("10.11.6-MariaDB-0+deb12u1", "", MariaDB((10, 11, 6))),
    ("10.11.19-MariaDB-0+deb12u1-log", "Debian 12", MariaDB((10, 11, 19))),
    ("11.4.2-MariaDB", "mariadb.org binary distribution", MariaDB((11, 4, 2))),
    ("10.6.12-MariaDB-1:10.6.12+maria~ubu2204-log", "", MariaDB((10, 6, 12))),
    ("5.5.5-10.11.6-MariaDB", "", MariaDB((10, 11, 6))),
    ("10.5.8", "MariaDB Server", MariaDB((10, 5, 8))),
    ("8.0.36", "MySQL Community Server - GPL", MySQL((8, 0, 36))),
    ("8.4.2", "", MySQL((8, 4, 2))),
    ("5.7.44-log", "MySQL Community Server (GPL)", MySQL((5, 7, 44))),
    ("8.0.35-27", "Percona Server (GPL), Release 27, Revision 2f8eeab2", MySQL((8, 0, 35))),
    ("9.1.0", "MySQL Community Server - GPL", MySQL((9, 1, 0))),
]


@pytest.mark.parametrize(("version", "comment", "expected"), DETECT)
def test_detect(version: str, comment: str, expected: Flavor) -> None:
    assert detect(version, comment) == expected


@pytest.mark.parametrize(
    ("version", "comment", "message"),
    [
        ("", "", "empty"),
        ("   ", "", "empty"),
        ("garbage", "", "cannot read a server version"),
        ("8.0", "", "cannot read a server version"),
        ("v8.0.36", "", "cannot read a server version"),
        ("5.6.51-log", "MySQL Community Server (GPL)", "older than the supported 5.7"),
        ("5.5.68-MariaDB", "MariaDB Server", "older than the supported 10.0"),
        ("8.0.11-TiDB-v7.5.0", "", "not MySQL or MariaDB"),
        ("8.0.30-Vitess", "Vitess", "not MySQL or MariaDB"),
    ],
)
def test_detect_rejects(version: str, comment: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        detect(version, comment)


@pytest.mark.parametrize(
    ("version", "replicas", "semi_sync_source"),
    [
        ("5.7.44", "SHOW SLAVE STATUS", "rpl_semi_sync_master_enabled"),
        ("8.0.21", "SHOW SLAVE STATUS", "rpl_semi_sync_master_enabled"),
        ("8.0.22", "SHOW REPLICA STATUS", "rpl_semi_sync_master_enabled"),
        ("8.0.25", "SHOW REPLICA STATUS", "rpl_semi_sync_master_enabled"),
        ("8.0.26", "SHOW REPLICA STATUS", "rpl_semi_sync_source_enabled"),
        ("8.4.2", "SHOW REPLICA STATUS", "rpl_semi_sync_source_enabled"),
    ],
)
def test_mysql_statements_by_version(version: str, replicas: str, semi_sync_source: str) -> None:
    flavor = detect(version)
    assert flavor.status_sql()[1] == replicas
    assert flavor.semi_sync_sql(source=True, replica=False)[0] == Sql(
        f"SET GLOBAL {semi_sync_source} = ON"
    )


def test_mysql_84_has_no_slave_or_master_syntax() -> None:
    flavor = detect("8.4.2")
    texts = [
        *flavor.status_sql(),
        flavor.stop_replication_sql().sql,
        flavor.reset_replication_sql().sql,
        flavor.start_replication_sql().sql,
        flavor.change_source_sql("db1", 3306, "repl", "pw", heartbeat=1.0).sql,
        *(stmt.sql for stmt in flavor.set_read_only_sql(True)),
        *(stmt.sql for stmt in flavor.semi_sync_sql(source=True, replica=True)),
        flavor.wait_for_gtid_sql("x:1", 1).sql,
    ]
    # Only the status query names the old semi-sync variables, so that a leftover old plugin
    # still reads as enabled; nothing executes SLAVE or MASTER statements.
    for sql in texts[5:]:
        assert "SLAVE" not in sql.upper() and "MASTER" not in sql.upper(), sql
    assert texts[1] == "SHOW REPLICA STATUS"


def test_status_sql_is_one_multi_statement_query() -> None:
    flavor = MariaDB((10, 11, 19))
    query = multi_statement(flavor.status_sql())
    assert query.split(";\n") == list(flavor.status_sql())
    assert query.startswith("SELECT @@global.server_id AS server_id")
    assert "SHOW ALL SLAVES STATUS" in query


# --- action SQL -------------------------------------------------------------------------------

MARIADB = MariaDB((10, 11, 19))
MYSQL_57 = MySQL((5, 7, 44))
MYSQL_8022 = MySQL((8, 0, 22))
MYSQL_80 = MySQL((8, 0, 36))
MYSQL_84 = MySQL((8, 4, 2))

ACTIONS = [
    (MARIADB, "stop", Sql("STOP SLAVE")),
    (MARIADB, "reset", Sql("RESET SLAVE ALL")),
    (MARIADB, "start", Sql("START SLAVE")),
    (MYSQL_57, "stop", Sql("STOP SLAVE")),
    (MYSQL_57, "reset", Sql("RESET SLAVE ALL")),
    (MYSQL_57, "start", Sql("START SLAVE")),
    (MYSQL_8022, "stop", Sql("STOP REPLICA")),
    (MYSQL_8022, "reset", Sql("RESET REPLICA ALL")),
    (MYSQL_8022, "start", Sql("START REPLICA")),
    (MYSQL_84, "stop", Sql("STOP REPLICA")),
    (MYSQL_84, "reset", Sql("RESET REPLICA ALL")),
    (MYSQL_84, "start", Sql("START REPLICA")),
]


@pytest.mark.parametrize(("flavor", "action", "expected"), ACTIONS)
def test_replication_control_sql(flavor: Flavor, action: str, expected: Sql) -> None:
    build = {
        "stop": flavor.stop_replication_sql,
        "reset": flavor.reset_replication_sql,
        "start": flavor.start_replication_sql,
    }[action]
    assert build() == expected


CHANGE_SOURCE = [
    (
        MARIADB,
        None,
        Sql(
            "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
            "MASTER_PASSWORD = %s, MASTER_CONNECT_RETRY = %s, MASTER_USE_GTID = slave_pos",
            ("db-2.example", 3307, "repl", "s3cret", 1),
        ),
    ),
    (
        MARIADB,
        0.5,
        Sql(
            "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
            "MASTER_PASSWORD = %s, MASTER_CONNECT_RETRY = %s, MASTER_HEARTBEAT_PERIOD = %s, "
            "MASTER_USE_GTID = slave_pos",
            ("db-2.example", 3307, "repl", "s3cret", 1, 0.5),
        ),
    ),
    (
        MYSQL_57,
        2,
        Sql(
            "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
            "MASTER_PASSWORD = %s, MASTER_CONNECT_RETRY = %s, MASTER_HEARTBEAT_PERIOD = %s, "
            "MASTER_AUTO_POSITION = 1",
            ("db-2.example", 3307, "repl", "s3cret", 1, 2.0),
        ),
    ),
    (
        MYSQL_8022,
        None,
        Sql(
            "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
            "MASTER_PASSWORD = %s, MASTER_CONNECT_RETRY = %s, MASTER_AUTO_POSITION = 1",
            ("db-2.example", 3307, "repl", "s3cret", 1),
        ),
    ),
    (
        MYSQL_80,
        1.5,
        Sql(
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST = %s, SOURCE_PORT = %s, "
            "SOURCE_USER = %s, SOURCE_PASSWORD = %s, SOURCE_CONNECT_RETRY = %s, "
            "SOURCE_HEARTBEAT_PERIOD = %s, SOURCE_AUTO_POSITION = 1",
            ("db-2.example", 3307, "repl", "s3cret", 1, 1.5),
        ),
    ),
    (
        MYSQL_84,
        None,
        Sql(
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST = %s, SOURCE_PORT = %s, "
            "SOURCE_USER = %s, SOURCE_PASSWORD = %s, SOURCE_CONNECT_RETRY = %s, "
            "SOURCE_AUTO_POSITION = 1",
            ("db-2.example", 3307, "repl", "s3cret", 1),
        ),
    ),
]


@pytest.mark.parametrize(("flavor", "heartbeat", "expected"), CHANGE_SOURCE)
def test_change_source_sql(flavor: Flavor, heartbeat: float | None, expected: Sql) -> None:
    assert (
        flavor.change_source_sql("db-2.example", 3307, "repl", "s3cret", 1, heartbeat) == expected
    )


TLS = ReplicationTls(
    enabled=True,
    ca="/etc/mysql/tls/ca.pem",
    cert="/etc/mysql/tls/repl-cert.pem",
    key="/etc/mysql/tls/repl-key.pem",
    verify_server_cert=True,
)
PEM = ("/etc/mysql/tls/ca.pem", "/etc/mysql/tls/repl-cert.pem", "/etc/mysql/tls/repl-key.pem")

# What each flavor sends to set up a replication channel over TLS (recorded, per version).
CHANGE_SOURCE_TLS = [
    (
        MARIADB,
        TLS,
        "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
        "MASTER_PASSWORD = %s, MASTER_CONNECT_RETRY = %s, MASTER_SSL = 1, MASTER_SSL_CA = %s, "
        "MASTER_SSL_CERT = %s, MASTER_SSL_KEY = %s, MASTER_SSL_VERIFY_SERVER_CERT = 1, "
        "MASTER_USE_GTID = slave_pos",
        PEM,
    ),
    (
        MYSQL_57,
        TLS.model_copy(
            update={"get_public_key": True}
        ),  # 5.7: no caching_sha2_password, no such option
        "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
        "MASTER_PASSWORD = %s, MASTER_CONNECT_RETRY = %s, MASTER_SSL = 1, MASTER_SSL_CA = %s, "
        "MASTER_SSL_CERT = %s, MASTER_SSL_KEY = %s, MASTER_SSL_VERIFY_SERVER_CERT = 1, "
        "MASTER_AUTO_POSITION = 1",
        PEM,
    ),
    (
        MYSQL_8022,
        ReplicationTls(get_public_key=True),  # caching_sha2_password without TLS
        "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
        "MASTER_PASSWORD = %s, MASTER_CONNECT_RETRY = %s, GET_MASTER_PUBLIC_KEY = 1, "
        "MASTER_AUTO_POSITION = 1",
        (),
    ),
    (
        MYSQL_80,
        TLS.model_copy(update={"cert": "", "key": "", "verify_server_cert": False}),
        "CHANGE REPLICATION SOURCE TO SOURCE_HOST = %s, SOURCE_PORT = %s, SOURCE_USER = %s, "
        "SOURCE_PASSWORD = %s, SOURCE_CONNECT_RETRY = %s, SOURCE_SSL = 1, SOURCE_SSL_CA = %s, "
        "SOURCE_SSL_VERIFY_SERVER_CERT = 0, SOURCE_AUTO_POSITION = 1",
        PEM[:1],
    ),
    (
        MYSQL_84,
        TLS.model_copy(update={"get_public_key": True}),
        "CHANGE REPLICATION SOURCE TO SOURCE_HOST = %s, SOURCE_PORT = %s, SOURCE_USER = %s, "
        "SOURCE_PASSWORD = %s, SOURCE_CONNECT_RETRY = %s, SOURCE_SSL = 1, SOURCE_SSL_CA = %s, "
        "SOURCE_SSL_CERT = %s, SOURCE_SSL_KEY = %s, SOURCE_SSL_VERIFY_SERVER_CERT = 1, "
        "GET_SOURCE_PUBLIC_KEY = 1, SOURCE_AUTO_POSITION = 1",
        PEM,
    ),
    (
        MYSQL_84,
        ReplicationTls(enabled=False, ca="/ignored.pem"),  # off: the replica keeps its own
        "CHANGE REPLICATION SOURCE TO SOURCE_HOST = %s, SOURCE_PORT = %s, SOURCE_USER = %s, "
        "SOURCE_PASSWORD = %s, SOURCE_CONNECT_RETRY = %s, SOURCE_AUTO_POSITION = 1",
        (),
    ),
]


@pytest.mark.parametrize(("flavor", "tls", "sql", "files"), CHANGE_SOURCE_TLS)
def test_change_source_sql_over_tls(flavor: Flavor, tls: ReplicationTls, sql: str, files):
    stmt = flavor.change_source_sql("db-2.example", 3307, "repl", "s3cret", 1, None, tls)
    assert stmt == Sql(sql, ("db-2.example", 3307, "repl", "s3cret", 1, *files))


def test_tls_file_names_stay_in_params():
    path = "/etc/x'; STOP SLAVE; --.pem"
    stmt = MARIADB.change_source_sql("h", 1, "u", "p", tls=ReplicationTls(enabled=True, ca=path))
    assert path not in stmt.sql and stmt.params[-1] == path


@pytest.mark.parametrize("flavor", [MARIADB, MYSQL_57, MYSQL_80, MYSQL_84])
def test_quotes_in_host_user_password_stay_in_params(flavor: Flavor) -> None:
    host, user, password = "db'; DROP TABLE x; --", "re'pl", "p\\w'\""
    stmt = flavor.change_source_sql(host, 3306, user, password)
    assert stmt.params[:4] == (host, 3306, user, password)
    for value in (host, user, password, "'"):
        assert value not in stmt.sql
    # What aiomysql sends: each value escaped as one quoted literal.
    sent = stmt.sql % tuple(escape_item(param, "utf8mb4") for param in stmt.params)
    assert "'db\\'; DROP TABLE x; --'" in sent
    assert "'p\\\\w\\'\\\"'" in sent


@pytest.mark.parametrize(
    ("flavor", "on", "expected"),
    [
        (MARIADB, True, (Sql("SET GLOBAL read_only = ON"),)),
        (MARIADB, False, (Sql("SET GLOBAL read_only = OFF"),)),
        (
            MYSQL_57,
            True,
            (Sql("SET GLOBAL read_only = ON"), Sql("SET GLOBAL super_read_only = ON")),
        ),
        (
            MYSQL_84,
            False,
            (Sql("SET GLOBAL super_read_only = OFF"), Sql("SET GLOBAL read_only = OFF")),
        ),
    ],
)
def test_set_read_only_sql(flavor: Flavor, on: bool, expected: tuple[Sql, ...]) -> None:
    assert flavor.set_read_only_sql(on) == expected


@pytest.mark.parametrize(
    ("flavor", "source", "replica", "expected"),
    [
        (
            MARIADB,
            True,
            False,
            (
                Sql("SET GLOBAL rpl_semi_sync_master_enabled = ON"),
                Sql("SET GLOBAL rpl_semi_sync_slave_enabled = OFF"),
            ),
        ),
        (
            MYSQL_57,
            False,
            True,
            (
                Sql("SET GLOBAL rpl_semi_sync_master_enabled = OFF"),
                Sql("SET GLOBAL rpl_semi_sync_slave_enabled = ON"),
            ),
        ),
        (
            MYSQL_80,
            True,
            True,
            (
                Sql("SET GLOBAL rpl_semi_sync_source_enabled = ON"),
                Sql("SET GLOBAL rpl_semi_sync_replica_enabled = ON"),
            ),
        ),
    ],
)
def test_semi_sync_sql(flavor: Flavor, source: bool, replica: bool, expected: tuple) -> None:
    assert flavor.semi_sync_sql(source=source, replica=replica) == expected


def test_wait_for_gtid_sql() -> None:
    assert MARIADB.wait_for_gtid_sql("0-1-5,1-2-7", 2) == Sql(
        "SELECT MASTER_GTID_WAIT(%s, %s) AS result", ("0-1-5,1-2-7", 2.0)
    )
    assert MYSQL_80.wait_for_gtid_sql(f"{MYSQL_UUID}:1-3", 0.5) == Sql(
        "SELECT WAIT_FOR_EXECUTED_GTID_SET(%s, %s) AS result", (f"{MYSQL_UUID}:1-3", 0.5)
    )


@pytest.mark.parametrize(
    ("flavor", "result", "reached"),
    [
        (MARIADB, 0, True),
        (MARIADB, -1, False),
        (MARIADB, b"0", True),
        (MYSQL_80, 0, True),
        (MYSQL_80, 1, False),
        (MYSQL_80, "1", False),
    ],
)
def test_wait_for_gtid_reached(flavor: Flavor, result: object, reached: bool) -> None:
    assert flavor.wait_for_gtid_reached(result) is reached


@pytest.mark.parametrize(("flavor", "result"), [(MARIADB, 1), (MARIADB, None), (MYSQL_80, -1)])
def test_wait_for_gtid_result_garbage(flavor: Flavor, result: object) -> None:
    with pytest.raises(ValueError, match="result"):
        flavor.wait_for_gtid_reached(result)


@pytest.mark.parametrize("flavor", [MARIADB, MYSQL_80])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"port": "3306"}, "port"),
        ({"connect_retry": 0}, "connect_retry"),
        ({"heartbeat": -1.0}, "heartbeat"),
        ({"heartbeat": math.nan}, "heartbeat"),
        ({"heartbeat": math.inf}, "heartbeat"),
    ],
)
def test_change_source_rejects_bad_numbers(
    flavor: Flavor, kwargs: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {"host": "db", "port": 3306, "user": "u", "password": "p"}
    with pytest.raises(ValueError, match=message):
        flavor.change_source_sql(**{**arguments, **kwargs})


@pytest.mark.parametrize("flavor", [MARIADB, MYSQL_80])
def test_wait_rejects_negative_timeout(flavor: Flavor) -> None:
    with pytest.raises(ValueError, match="timeout"):
        flavor.wait_for_gtid_sql("x", -1)


@pytest.mark.parametrize("flavor", [MARIADB, MYSQL_57, MYSQL_8022, MYSQL_80, MYSQL_84])
def test_no_stray_percent_in_action_sql(flavor: Flavor) -> None:
    """aiomysql applies `sql % params` whenever params is given: only %s may appear."""
    statements = [
        flavor.stop_replication_sql(),
        flavor.reset_replication_sql(),
        flavor.start_replication_sql(),
        flavor.change_source_sql("h", 1, "u", "p", heartbeat=1),
        flavor.wait_for_gtid_sql("g", 1),
        *flavor.set_read_only_sql(True),
        *flavor.set_read_only_sql(False),
        *flavor.semi_sync_sql(source=True, replica=True),
    ]
    for stmt in statements:
        assert stmt.sql.count("%") == stmt.sql.count("%s") == len(stmt.params), stmt
        stmt.sql % tuple(escape_item(param, "utf8mb4") for param in stmt.params)


def test_flavor_values_are_frozen_and_named() -> None:
    assert MARIADB.name is FlavorName.MARIADB and MYSQL_80.name is FlavorName.MYSQL
    with pytest.raises(AttributeError):
        MARIADB.version = (1, 0, 0)  # type: ignore[misc]
    status = parse(load("mariadb-10.11-primary"))
    with pytest.raises(AttributeError):
        status.server_id = 9  # type: ignore[misc]


def variable_rows(**values: str) -> list[dict[str, object]]:
    return [{"Variable_name": k, "Value": v} for k, v in values.items()]


@pytest.mark.parametrize(
    ("flavor", "rows", "expected", "never"),
    [
        (
            MARIADB,
            variable_rows(
                rpl_semi_sync_master_timeout="4294967295",
                **{"rpl_semi_sync_master_wait_no_slave": "ON"},
            ),
            (4294967.295, True),
            True,
        ),
        (
            MARIADB,
            variable_rows(
                rpl_semi_sync_master_timeout="10000", rpl_semi_sync_master_wait_no_slave="ON"
            ),
            (10.0, True),
            False,
        ),
        (
            MARIADB,
            variable_rows(
                rpl_semi_sync_master_timeout="4294967295", rpl_semi_sync_master_wait_no_slave="OFF"
            ),
            (4294967.295, False),
            False,  # OFF: falls back as soon as no replica is connected
        ),
        (MARIADB, [], (None, None), False),  # plugin not loaded: nothing known
        (
            MYSQL_80,
            variable_rows(
                rpl_semi_sync_source_timeout="2000", rpl_semi_sync_source_wait_no_replica="ON"
            ),
            (2.0, True),
            False,
        ),
        (
            MYSQL_57,
            variable_rows(
                rpl_semi_sync_master_timeout="90000000", rpl_semi_sync_master_wait_no_slave="1"
            ),
            (90000.0, True),
            True,
        ),
    ],
)
def test_semi_sync_settings_say_whether_the_source_can_fall_back(
    flavor: Flavor, rows: list[dict[str, object]], expected: tuple, never: bool
) -> None:
    settings = flavor.parse_semi_sync_settings(rows)
    assert settings == expected
    semi = SemiSync(True, 2, True, True, *settings)
    assert semi.never_falls_back is never
    assert not SemiSync(False, 0, False, True, *settings).never_falls_back  # no semi-sync at all
    assert "timeout" in flavor.semi_sync_settings_sql()


def test_semi_sync_settings_refuse_garbage() -> None:
    with pytest.raises(ValueError, match="semi-sync timeout"):
        MARIADB.parse_semi_sync_settings(variable_rows(rpl_semi_sync_master_timeout="soon"))
