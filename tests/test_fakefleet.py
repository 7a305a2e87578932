"""The fake fleet (tests/fakefleet) read and changed by the controller's real code.

The probes, ``hacontrol status`` and the failover actions run unchanged against fake nodes in
the test's own event loop; a real MariaDB 10.11's column definitions (recorded) are what the
fake sends. Faults: kill closes every connection at once, freeze answers nothing.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import uvloop

from hacontrol import gtid
from hacontrol.actions.mysql import MySQLActions
from hacontrol.events import ConnectionLost, Event, ProbeResult
from hacontrol.flavors import IoState, MariaDB, multi_statement
from hacontrol.flavors.mariadb import binlog_state_of
from hacontrol.mysqlconn import Endpoint, connect, execute, fetch_all
from hacontrol.probes.mysql import NodeProbe
from hacontrol.service import snapshot
from hacontrol.settings import Settings
from hacontrol.status import to_json
from tests.fakefleet import history as h
from tests.fakefleet.control import FleetControl, serve
from tests.fakefleet.model import Fleet
from tests.fakefleet.server import FakeFleet
from tests.fakefleet.spec import FleetSpec, cluster_sizes, fleet, settings_data
from tests.fakefleet.sql import ChangeMaster, parse
from tests.fakefleet.wire import recorded_sets
from tests.support import eventually

STATUS_SQL = multi_statement(MariaDB((10, 11, 0)).status_sql())


def one_cluster(**options: Any) -> FleetSpec:
    return fleet([3], **options)


def endpoint(fake: FakeFleet, node: str) -> Endpoint:
    host, port = fake.address(node)
    return Endpoint(host, port, fake.spec.user, fake.spec.password)


def settings(fake: FakeFleet, tmp_path: Path) -> Settings:
    data = settings_data(fake.spec.clusters[0], fake.spec, journal=str(tmp_path / "journal"))
    return Settings(**data)


async def probe(fake: FakeFleet, node: str, timeout: float = 2.0) -> ProbeResult:
    events: list[Event] = []
    node_probe = NodeProbe(
        node, endpoint(fake, node), interval=1.0, timeout=timeout, emit=events.append, watch=False
    )
    try:
        return await node_probe.probe()
    finally:
        await node_probe.close()


@pytest.fixture(params=[False, True], ids=["loop-stamps", "kernel-stamps"])
async def fake(request):
    """Every behaviour both ways: read by the transport, or by ``stamps.StampedReader``."""
    spec = one_cluster(heartbeat_period=0.05)
    async with FakeFleet(spec, kernel_stamps=request.param) as fleet_:
        yield fleet_


# -- reading --------------------------------------------------------------------------------


async def test_status_sees_a_healthy_primary_and_replicas(fake, tmp_path):
    view = to_json(await snapshot(settings(fake, tmp_path)))
    assert view["primary"] == "c001n1"
    assert view["quorum"]["ok"] and view["problems"] == []
    roles = {n["name"]: (n["role"], n["health"]) for n in view["nodes"]}
    assert roles == {
        "c001n1": ("primary", "healthy"),
        "c001n2": ("replica", "healthy"),
        "c001n3": ("replica", "healthy"),
    }
    primary = next(n for n in view["nodes"] if n["name"] == "c001n1")
    assert primary["read_only"] is False
    assert primary["semi_sync"] == {
        "source": True,
        "active": True,
        "clients": 2,
        "replica": True,
        "replica_client": False,  # Rpl_semi_sync_slave_status: a primary is nobody's client
    }


async def test_replica_status_as_the_probe_parses_it(fake):
    result = await probe(fake, "c001n2")
    assert result.ok, result.error
    status = result.status
    assert status.version == "10.11.19-MariaDB-0+deb12u1-log"
    assert status.read_only and status.server_id == 2 and status.log_bin
    (channel,) = status.replication
    assert (channel.source_host, channel.source_port) == fake.address("c001n1")
    assert channel.io_state is IoState.RUNNING and channel.sql_running
    assert channel.seconds_behind == 0 and channel.source_server_id == 1
    assert channel.heartbeat_period == 0.05
    assert channel.received_gtid == status.gtid_executed == status.gtid_slave_pos


async def test_columns_are_those_a_real_server_sends(fake):
    """Each result set of the probe's status query has the recorded names and types."""
    conn = await connect(endpoint(fake, "c001n2"), 2.0, multi_statements=True)
    try:
        cursor = await conn.cursor()
        await cursor.execute(STATUS_SQL)
        seen = [[(d[0], d[1]) for d in cursor.description]]
        while await cursor.nextset():
            seen.append([(d[0], d[1]) for d in cursor.description])
        await cursor.close()
    finally:
        conn.close()
    recorded = [
        [(f["name"], f["type"]) for f in s["fields"]] for s in recorded_sets("status_replica")
    ]
    assert seen == recorded


async def test_positions_advance_and_heartbeats_count_up():
    spec = fleet([3], write_rate=50.0, heartbeat_period=0.05)
    async with FakeFleet(spec) as fake:
        first = (await probe(fake, "c001n2")).status
        await asyncio.sleep(0.3)
        second = (await probe(fake, "c001n2")).status
    seq = [int(s.gtid_executed.rsplit("-", 1)[1]) for s in (first, second)]
    assert seq[1] > seq[0] >= spec.start_seq
    beats = [s.replication[0].heartbeats_received for s in (first, second)]
    assert beats[1] > beats[0]


# -- faults --------------------------------------------------------------------------------


async def test_kill_closes_the_watch_connection_at_once_and_refuses_new_ones(fake):
    events: list[Event] = []
    node_probe = NodeProbe(
        "c001n1", endpoint(fake, "c001n1"), interval=0.2, timeout=1.0, emit=events.append
    )
    task = asyncio.create_task(node_probe.run())
    try:
        await eventually(lambda: fake.describe("c001n1")["connections"] == 2, 5, "probe + watch")
        fake.kill("c001n1")
        lost = await eventually(
            lambda: [e for e in events if isinstance(e, ConnectionLost)], 5, "ConnectionLost"
        )
        assert lost[0].node == "c001n1"
        refused = await probe(fake, "c001n1")
        assert not refused.ok and refused.error.startswith("2003")
        replica = (await probe(fake, "c001n2")).status.replication[0]
        assert replica.io_state is IoState.CONNECTING and replica.last_io_errno == 2003
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await fake.revive("c001n1")
    back = await probe(fake, "c001n1")
    assert back.ok and not back.status.read_only  # its configuration: the initial primary
    replica = (await probe(fake, "c001n2")).status.replication[0]
    assert replica.io_state is IoState.RUNNING


async def test_freeze_makes_probes_time_out_until_revived(fake):
    fake.freeze("c001n1")
    frozen = await probe(fake, "c001n1", timeout=0.3)
    assert not frozen.ok and frozen.error == "timed out"
    assert fake.describe("c001n1")["connections"] >= 1  # accepted, never answered, not closed
    fake.thaw("c001n1")
    assert (await probe(fake, "c001n1")).ok


async def test_a_good_probe_is_stamped_when_its_query_went_out_not_when_it_started(fake):
    # The connection takes long to come up (here the node greets late; in production the
    # controller's own loop stalled before the query went out): the answer describes the node
    # after that, and must not be back-dated to the probe's start (``view._io_progress``).
    fake.freeze("c001n2")
    started = time.monotonic()
    pending = asyncio.create_task(probe(fake, "c001n2"))
    await asyncio.sleep(0.5)
    thawed = time.monotonic()
    fake.thaw("c001n2")
    result = await pending
    assert result.ok and result.rtt is not None
    assert result.at >= thawed > started + 0.4


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop])
def test_the_kernel_stamp_is_when_the_probe_arrived_not_when_the_fake_read_it(loop_factory):
    # On asyncio's loop and on uvloop (the bench's: it starts a transport's reading after
    # connection_made, and then the fake read the probes by itself, every stamp its own).
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_kernel_stamp_against_a_blocked_fake())


async def _kernel_stamp_against_a_blocked_fake() -> None:
    # The prober runs in its own thread and event loop; the fake's loop (this one) is blocked
    # for a second, and the probe's query goes out 0.1 s into it: the fake reads it at the end
    # of the block, but the kernel received it when it was sent.
    prober_loop = asyncio.new_event_loop()
    thread = threading.Thread(target=prober_loop.run_forever, daemon=True)
    thread.start()

    def in_prober(coro):
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, prober_loop))

    async def probe_later(node_probe: NodeProbe, delay: float) -> ProbeResult:
        await asyncio.sleep(delay)
        return await node_probe.probe()

    async with FakeFleet(one_cluster(), kernel_stamps=True) as fake:
        node_probe = NodeProbe("c001n1", endpoint(fake, "c001n1"), interval=1.0, timeout=5.0,
                               emit=lambda _e: None, watch=False)  # fmt: skip
        try:
            assert (await in_prober(node_probe.probe())).ok  # connected, one probe recorded
            pending = in_prober(probe_later(node_probe, 0.1))
            time.sleep(1.0)  # noqa: ASYNC251 (the point: the fake's loop reads nothing meanwhile)
            result = await pending
        finally:
            await in_prober(node_probe.close())
            prober_loop.call_soon_threadsafe(prober_loop.stop)
            thread.join(5)
        prober_loop.close()
        assert result.ok
        read, received = fake.probe_times["c001n1"][-1], fake.kernel_times["c001n1"][-1]
        assert read - received > 0.5, (read, received)
        assert abs(received - result.at) < 0.3, (received, result.at)  # sent, then received
        kernel = fake.cadence(stamp="kernel")["nodes"]["c001n1"]
        assert (
            kernel["probes"] == 2
            and kernel["max_gap"] < fake.cadence()["nodes"]["c001n1"]["max_gap"]
        )
        with pytest.raises(ValueError, match="stamp"):
            fake.cadence(stamp="wall")


async def test_replicas_of_a_frozen_primary_stall_then_reconnect():
    async with FakeFleet(fleet([3], write_rate=100.0, net_timeout=0.3)) as fake:
        fake.freeze("c001n1")
        stalled = (await probe(fake, "c001n2")).status.replication[0]
        await asyncio.sleep(0.1)
        still = (await probe(fake, "c001n2")).status.replication[0]
        assert still.io_state is IoState.RUNNING  # nothing closed: it does not know yet
        assert still.received_gtid == stalled.received_gtid  # but nothing arrives
        assert still.heartbeats_received == stalled.heartbeats_received
        await asyncio.sleep(0.3)
        late = (await probe(fake, "c001n2")).status.replication[0]
        assert late.io_state is IoState.CONNECTING and late.last_io_errno == 2013


async def test_lost_link_shows_on_the_replica_only(fake):
    fake.lose_link("c001n3")
    channel = (await probe(fake, "c001n3")).status.replication[0]
    assert channel.io_state is IoState.CONNECTING and channel.last_io_errno == 2003
    assert (await probe(fake, "c001n2")).status.replication[0].io_state is IoState.RUNNING
    primary = (await probe(fake, "c001n1")).status
    assert primary.semi_sync.source_clients == 1
    fake.restore_link("c001n3")
    assert (await probe(fake, "c001n3")).status.replication[0].io_state is IoState.RUNNING


# -- failover statements -------------------------------------------------------------------


async def test_failover_actions_change_roles(fake, tmp_path):
    actions = MySQLActions(settings(fake, tmp_path), timeout=5.0)
    old_host, old_port = fake.address("c001n1")
    fake.kill("c001n1")
    for replica in ("c001n2", "c001n3"):
        assert (await actions.set_io_thread(replica, running=False)).ok
    assert (await actions.wait_applied("c001n2", timeout=2.0)).ok
    promoted = await actions.promote("c001n2", old_host, old_port)
    assert promoted.ok, promoted.reason
    assert promoted.detail["steps"] == [
        "STOP SLAVE",
        "RESET SLAVE ALL",
        "SET GLOBAL rpl_semi_sync_master_enabled = ON",
        "SET GLOBAL rpl_semi_sync_slave_enabled = OFF",
        "SET GLOBAL read_only = OFF",
    ]
    new_host, new_port = fake.address("c001n2")
    repointed = await actions.repoint("c001n3", new_host, new_port)
    assert repointed.ok, repointed.reason
    await fake.revive("c001n1")
    rejoined = await actions.rejoin("c001n1", new_host, new_port)
    assert rejoined.ok, rejoined.reason

    view = to_json(await snapshot(settings(fake, tmp_path)))
    assert view["primary"] == "c001n2" and view["problems"] == []
    sources = {n["name"]: n["source"] for n in view["nodes"]}
    assert sources == {"c001n1": "c001n2", "c001n2": None, "c001n3": "c001n2"}


async def test_an_old_primary_with_errant_writes_is_refused_on_rejoin(tmp_path):
    """Its replicas lost their link while it kept writing: after the failover its last GTID
    is not in the new primary's binlog: the rejoin refuses it from the binlog states, before
    replication is attached (which would end with error 1236)."""
    spec = fleet([3], write_rate=100.0)
    async with FakeFleet(spec) as fake:
        actions = MySQLActions(settings(fake, tmp_path), timeout=5.0)
        fake.lose_link("c001n2")
        fake.lose_link("c001n3")
        await asyncio.sleep(0.1)  # the old primary writes ~10 transactions nobody receives
        fake.kill("c001n1")
        fake.restore_link("c001n3")
        promoted = await actions.promote("c001n2", *fake.address("c001n1"))
        assert promoted.ok, promoted.reason
        await asyncio.sleep(0.2)  # the new primary writes past the old one's seq
        await fake.revive("c001n1")
        old, new = [(await probe(fake, n)).status for n in ("c001n1", "c001n2")]
        rejoined = await actions.rejoin("c001n1", *fake.address("c001n2"))
    # positions say "contained" (same domain, lower seq); the binlog states name the errant GTID
    assert int(old.gtid_binlog_pos.rsplit("-", 1)[1]) < int(new.gtid_binlog_pos.rsplit("-", 1)[1])
    errant = gtid.errant_by_state(binlog_state_of(old), binlog_state_of(new))
    assert [pair for pair, _ in errant.last] == [(0, 1)]
    assert not rejoined.ok
    # refused before it was attached (no error 1236 needed): the binlog states name it
    assert rejoined.detail["errant"] == str(errant), rejoined.reason
    assert rejoined.detail["errant_by"] == "gtid_binlog_state"
    assert "io_errno" not in rejoined.detail


# -- other statements ------------------------------------------------------------------------


async def test_user_locks_belong_to_a_session(fake):
    first = await connect(endpoint(fake, "c001n1"), 2.0)
    second = await connect(endpoint(fake, "c001n1"), 2.0)
    try:
        (row,) = await execute(
            first,
            "SELECT GET_LOCK('hacontrol.c001.leader', 0) AS got, CONNECTION_ID() AS id",
            timeout=2,
        )
        assert row["got"] == 1
        (other,) = await execute(
            second, "SELECT GET_LOCK('hacontrol.c001.leader', 0) AS got", timeout=2
        )
        assert other["got"] == 0
        (used,) = await execute(
            second, "SELECT IS_USED_LOCK('hacontrol.c001.leader') AS owner", timeout=2
        )
        assert used["owner"] == row["id"]
        waiting = asyncio.create_task(
            execute(second, "SELECT GET_LOCK('hacontrol.c001.leader', 5) AS got", timeout=6)
        )
        await asyncio.sleep(0.1)
        first.close()  # a session that ends frees its locks at once
        assert (await waiting)[0]["got"] == 1
        (released,) = await execute(
            second, "SELECT RELEASE_LOCK('hacontrol.c001.leader') AS r", timeout=2
        )
        assert released["r"] == 1
    finally:
        first.close()
        second.close()


async def test_master_gtid_wait(fake):
    conn = await connect(endpoint(fake, "c001n2"), 2.0)
    try:
        reached = await execute(conn, "SELECT MASTER_GTID_WAIT('0-1-100', 1) AS result", timeout=2)
        assert reached[0]["result"] == 0
        never = await execute(
            conn, "SELECT MASTER_GTID_WAIT('0-1-999999', 0.1) AS result", timeout=2
        )
        assert never[0]["result"] == -1
    finally:
        conn.close()


async def test_unknown_statements_get_an_error_not_a_crash(fake):
    conn = await connect(endpoint(fake, "c001n1"), 2.0, multi_statements=True)
    try:
        with pytest.raises(Exception, match="1235"):
            await fetch_all(conn, "CREATE TABLE t (a INT)", timeout=2)
    finally:
        conn.close()
    assert (await probe(fake, "c001n1")).ok


async def read_payload(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(4)
    return await reader.readexactly(int.from_bytes(header[:3], "little"))


async def test_a_client_that_speaks_garbage_gets_an_error(fake):
    reader, writer = await asyncio.open_connection(*fake.address("c001n1"))
    try:
        greeting = await read_payload(reader)
        assert greeting[0] == 10 and b"MariaDB" in greeting  # handshake v10
        writer.write(b"\x05\x00\x00\x01garbage")
        payload = await read_payload(reader)
        assert payload[:3] == b"\xff\x13\x04"  # ERR 1043 Bad handshake
        assert await reader.read() == b""  # then closed
    finally:
        writer.close()
    assert (await probe(fake, "c001n1")).ok


async def test_control_channel(fake):
    runner = await serve(fake)
    try:
        host, port = runner.addresses[0][:2]
        control = FleetControl(f"http://{host}:{port}")
        nodes = await asyncio.to_thread(control.nodes)
        assert [(n["name"], n["role"]) for n in nodes] == [
            ("c001n1", "primary"),
            ("c001n2", "replica"),
            ("c001n3", "replica"),
        ]
        killed = await asyncio.to_thread(control.act, "c001n3", "kill")
        assert killed["state"] == "killed"
        with pytest.raises(RuntimeError, match="409"):
            await asyncio.to_thread(control.act, "c001n3", "freeze")
        with pytest.raises(RuntimeError, match="404"):
            await asyncio.to_thread(control.act, "nope", "kill")
        stats = await asyncio.to_thread(control.stats)
        assert stats["cpu_user"] >= 0 and stats["connections"] >= 0
    finally:
        await runner.cleanup()


# -- pure parts ----------------------------------------------------------------------------


def test_change_master_text_as_aiomysql_escapes_it():
    (stmt,) = parse(
        "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = 3306, MASTER_USER = 'repl', "
        "MASTER_PASSWORD = 'it\\'s;a \\\\secret', MASTER_USE_GTID = slave_pos"
    )
    assert isinstance(stmt, ChangeMaster)
    assert dict(stmt.options)["master_password"] == "it's;a \\secret"
    assert dict(stmt.options)["master_port"] == 3306


def test_history_holds_only_what_its_writers_wrote():
    after_failover = ((1, 100), (2, 105))
    assert h.holds(after_failover, (1, 100)) and h.holds(after_failover, (2, 103))
    assert not h.holds(after_failover, (1, 103))  # seq 103 was written by server 2
    assert h.position(after_failover) == "0-2-105"
    assert h.binlog_state(after_failover) == "0-1-100,0-2-105"
    assert h.binlog_state(((1, 100), (2, 105), (1, 110))) == "0-2-105,0-1-110"  # latest last
    assert h.contains(after_failover, ((1, 100),))
    assert not h.contains(((1, 100),), after_failover)


def test_positions_are_computed_from_the_time():
    fleet_ = Fleet(fleet([3], base_port=4000), t=0.0)
    primary, replica = fleet_.nodes["c001n1"], fleet_.nodes["c001n2"]
    assert h.position(fleet_.binlog(primary, 2.5)) == "0-1-102"
    assert h.position(fleet_.received(replica, 2.5)) == "0-1-102"
    fleet_.kill("c001n1", 3.0)
    assert h.position(fleet_.received(replica, 10.0)) == "0-1-103"  # nothing after the kill


def test_cluster_sizes_add_up():
    assert cluster_sizes(1000, (3, 3, 4)) == [3, 3, 4] * 100
    sizes = cluster_sizes(1000, (3, 4))
    assert sum(sizes) == 1000 and set(sizes) == {3, 4}


def test_spec_round_trips_through_json():
    spec = fleet([3, 4], base_port=5000)
    assert FleetSpec.from_json(spec.to_json()) == spec
    assert json.loads(spec.to_json())["clusters"][1]["nodes"][3]["port"] == 5006


def test_one_controllers_settings_hold_every_cluster_of_the_fleet():
    from tests.fakefleet.spec import clusters_settings_text

    spec = fleet([3, 4], base_port=5000)
    doc = tomllib.loads(clusters_settings_text(spec, journal="/j/journal.jsonl"))
    assert "cluster" not in doc and "nodes" not in doc
    assert [c["name"] for c in doc["clusters"]] == ["c001", "c002"]
    assert [n["port"] for n in doc["clusters"][1]["nodes"]] == [5003, 5004, 5005, 5006]
    assert doc["controller"] == {"journal": "/j/journal.jsonl", "fleet": False}
    assert doc["router"] == {"kind": "none"} and doc["api"] == {"enabled": False}


def test_one_controllers_settings_load_as_every_cluster(tmp_path):
    from hacontrol.settings import load_settings
    from tests.fakefleet.spec import clusters_settings_text

    spec = fleet(cluster_sizes(1000, (3, 3, 4)), base_port=20000)
    path = tmp_path / "settings.toml"
    path.write_text(clusters_settings_text(spec, journal=str(tmp_path / "journal.jsonl")))
    loaded = load_settings(path)
    assert len(loaded.clusters) == 300 and sum(len(c.nodes) for c in loaded.clusters) == 1000
    assert loaded.pick("c300").controller.journal == tmp_path / "journal.c300.jsonl"
