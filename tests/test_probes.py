"""Probes against MySQL-protocol servers that misbehave (tests/fakes.py): a node that answers
garbage, streams endless packets or answers ``DO SLEEP`` at once is unhealthy or merely
watched less often; it never crashes, hangs or hammers."""

from __future__ import annotations

import asyncio
import collections
import time

import pytest

from hacontrol.events import ConnectionLost
from hacontrol.mysqlconn import Endpoint
from hacontrol.probes.mysql import PROBE_MAX_READ, NodeProbe, phase_of
from hacontrol.runtime import node_probes
from hacontrol.settings import Settings
from tests import mysql_wire as protocol
from tests.fakefleet.spec import fleet, settings_data
from tests.fakes import FakeMySQL, garbage_server, stream_maximal_packets


def node_probe(port: int, events: list, *, interval: float = 0.1, timeout: float = 2.0):
    return NodeProbe(
        "fake",
        Endpoint("127.0.0.1", port, "u", "p"),
        interval=interval,
        timeout=timeout,
        emit=events.append,
        watch=True,
    )


async def watch_for(probe: NodeProbe, seconds: float) -> None:
    probe._arm_watch()
    try:
        await asyncio.sleep(seconds)
    finally:
        await probe.close()


async def test_node_answering_garbage_is_unhealthy_not_a_crash():
    async with garbage_server() as port:
        probe = node_probe(port, [], timeout=0.5)
        for _ in range(3):
            result = await probe.probe()
            assert not result.ok and result.error
        await probe.close()


async def test_watch_backs_off_when_the_sleep_returns_at_once():
    events: list = []
    async with FakeMySQL() as server:  # every query, DO SLEEP(3600) included: OK at once
        probe = node_probe(server.port, events, interval=0.1)
        cpu = time.process_time()
        await watch_for(probe, 2.0)
        cpu = time.process_time() - cpu
    sleeps = [q for q in server.queries if q.startswith("DO SLEEP")]
    # Back-off 0.1, 0.2, 0.4, 0.8 s...: a handful in 2 s (thousands without it).
    assert 3 <= len(sleeps) <= 8, len(sleeps)
    assert server.connections == 1
    assert cpu < 0.5
    assert events == []  # the server is alive: no crash signal


async def test_watch_error_answered_by_the_server_is_not_a_crash():
    interrupted = protocol.err_packet(1969, "70100", "Query execution was interrupted")
    events: list = []
    async with FakeMySQL(lambda sql: [interrupted]) as server:
        probe = node_probe(server.port, events, interval=0.1)
        await watch_for(probe, 1.0)
    assert events == []
    assert 2 <= server.connections <= 6  # reconnected after each, with back-off


async def test_watch_connection_closed_by_the_server_is_a_crash_signal():
    async def hang_up(writer: asyncio.StreamWriter) -> None:
        writer.close()

    events: list = []
    async with FakeMySQL(lambda sql: hang_up) as server:
        probe = node_probe(server.port, events)
        await watch_for(probe, 0.5)
    assert [type(e) for e in events] == [ConnectionLost]
    assert "Lost connection" in events[0].reason


async def test_a_node_streaming_maximal_packets_is_unhealthy_at_once():
    async with FakeMySQL(lambda sql: stream_maximal_packets) as server:
        probe = node_probe(server.port, [], timeout=5.0)
        started = time.monotonic()
        cpu = time.process_time()
        result = await probe.probe()
        took, cpu = time.monotonic() - started, time.process_time() - cpu
        await probe.close()
    assert not result.ok
    assert f"larger than {PROBE_MAX_READ} bytes" in result.error
    assert took < 1.0 and cpu < 0.5  # refused at the first header, not after the timeout


async def test_a_greeting_of_maximal_packets_is_refused_too():
    async with FakeMySQL(greeting=lambda w: stream_maximal_packets(w, first_seq=0)) as server:
        result = await node_probe(server.port, [], timeout=5.0).probe()
    assert not result.ok and "larger than" in result.error


async def test_a_flood_of_tiny_rows_is_bounded():
    rows = protocol.result_set(["v"], [["x"]] * 200_000)

    def answer(sql: str):
        if sql.startswith("SELECT @@version"):
            return protocol.result_set(["version", "comment"], [["10.11.6-MariaDB", "x"]])
        return rows

    async with FakeMySQL(answer) as server:
        probe = node_probe(server.port, [], timeout=5.0)
        cpu = time.process_time()
        result = await probe.probe()
        cpu = time.process_time() - cpu
        await probe.close()
    assert not result.ok and "larger than" in result.error
    assert cpu < 1.0


def test_waiting_for_the_next_probe_wakes_up_once_not_in_a_spin():
    """On uvloop (millisecond timers, its clock read once per iteration) a wait for the next
    probe that re-slept for what was left woke about ten times per wait, for every node every
    interval. Each wake-up reads the probe's clock once."""
    import uvloop

    reads = 0

    def clock() -> float:
        nonlocal reads
        reads += 1
        return time.monotonic()

    async def sleeps() -> int:
        probe = NodeProbe(
            "fake", Endpoint("127.0.0.1", 1, "u", "p"), interval=1.0, timeout=0.5,
            emit=[].append, clock=clock,
        )  # fmt: skip
        for i in range(20):  # the next probe due in 10.3 ms, 11.0 ms, ...
            probe._last_start = time.monotonic() - 1.0 + 0.0103 + i * 0.0007
            probe._anchor = probe._last_start  # on the grid: due one interval after it
            await probe._sleep_until_next()
        return reads

    # Two clock reads per wait (before its one timer, after it: exactly 40 here on a quiet
    # machine); a timer firing a little before the probe's clock reaches the deadline costs a
    # third, so four per wait allows a busy machine. The spin was about ten per wait.
    assert uvloop.run(sleeps()) <= 20 * 4


def test_probes_keep_to_their_grid_a_late_start_moves_only_itself():
    phase = phase_of("c001", 1.0)
    probe = NodeProbe(
        "c001n1", Endpoint("127.0.0.1", 1, "u", "p"), interval=1.0, timeout=0.5,
        emit=[].append, phase=phase,
    )  # fmt: skip
    probe._last_start = 100.0  # the first probe: the grid is anchored at 100 + phase
    first = probe.next_due(0.1)
    assert first == pytest.approx(100.0 + phase + (1.0 if phase < 0.1 else 0.0))
    probe._last_start = first + 0.3  # late by 0.3 s: the next slot is still one interval on
    assert probe.next_due(0.1) == pytest.approx(first + 1.0)
    probe._last_start = first + 1.0 - 0.05  # woken 50 ms before a slot: not again so soon,
    assert probe.next_due(0.1) == pytest.approx(first + 1.95)  # nor later than an interval
    probe._last_start = first + 2.0 - 0.5  # woken half-way: the grid's next slot
    assert probe.next_due(0.1) == pytest.approx(first + 2.0)
    probe._last_start = first + 7.4  # a stall of seconds: the missed slots are not made up
    assert probe.next_due(0.1) == pytest.approx(first + 8.0)


def test_the_clusters_phases_spread_over_the_interval():
    names = [f"c{c:03d}" for c in range(1, 301)]
    bins = collections.Counter(int(phase_of(name, 2.0) / 0.2) for name in names)
    assert sorted(bins) == list(range(10))
    assert all(15 <= count <= 45 for count in bins.values()), bins  # 30 each if even
    assert phase_of("c001", 1.0) == phase_of("c001", 1.0)  # the same on every start


def test_the_nodes_of_one_cluster_are_probed_together():
    spec = fleet([3], base_port=20000)
    settings = Settings(**settings_data(spec.clusters[0], spec, journal="j"))
    probes = node_probes(settings, [].append)
    phases = {p._phase for p in probes.values()}
    assert phases == {phase_of(settings.cluster.name, settings.probes.interval)}


async def test_a_wake_ends_the_wait_for_the_next_probe_but_not_before_interval_over_10():
    probe = NodeProbe(
        "c001n1", Endpoint("127.0.0.1", 1, "u", "p"), interval=2.0, timeout=0.5, emit=[].append
    )
    probe._last_start = time.monotonic()
    probe._anchor = probe._last_start  # the next slot two seconds away
    probe.wake()  # at once: held until interval/10 (0.2 s) after the last start
    started = time.monotonic()
    await asyncio.wait_for(probe._sleep_until_next(), 1.5)
    assert 0.15 <= time.monotonic() - started < 1.0
    probe._last_start = time.monotonic()
    waiting = asyncio.create_task(probe._sleep_until_next())
    await asyncio.sleep(0.3)
    assert not waiting.done()
    probe.wake()  # while it waits
    await asyncio.wait_for(waiting, 1.0)
    assert probe._waiter is None
