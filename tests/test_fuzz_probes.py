"""Fuzzing the probe's parsing: whatever a node answers, the probe reports it unhealthy with a
reason; it never raises, hangs or crashes the task.

- ``parse_status`` over recorded server answers with values, rows, columns and result sets
  mutated at random, and over random results: a NodeStatus or a ValueError, nothing else.
- ``detect`` over random version strings: a flavor or a ValueError.
- The whole probe against a MySQL-protocol server (tests/fakes.py) that sends a recorded
  answer with its bytes mutated, or random bytes, as its greeting or as its answer.

Budget: ``HACONTROL_FUZZ_EXAMPLES`` (default 200 per pure target, a tenth of it per network
target); docs/hardening.md shows how to run longer.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hacontrol.flavors import detect
from hacontrol.flavors.base import NodeStatus
from hacontrol.mysqlconn import Endpoint
from hacontrol.probes.mysql import NodeProbe
from tests import mysql_wire as protocol
from tests.fakes import FakeMySQL

EXAMPLES = int(os.environ.get("HACONTROL_FUZZ_EXAMPLES", "200"))
NETWORK_EXAMPLES = max(10, EXAMPLES // 10)
DATA = Path(__file__).resolve().parent / "data"
RECORDED = {p.stem: json.loads(p.read_text()) for p in sorted(DATA.glob("*.json"))}

values = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | st.sampled_from(["Yes", "No", "Connecting", "ON", "OFF", "0-1-5", "", "NULL", "-1"])
)


@st.composite
def mutated_results(draw: st.DrawFn) -> tuple[str, str, list[list[dict[str, Any]]]]:
    recorded = RECORDED[draw(st.sampled_from(sorted(RECORDED)))]
    results = [[dict(row) for row in rows] for rows in recorded["results"]]
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["value", "drop_key", "add_key", "rows", "sets"]))
        rows = [row for rs in results for row in rs]
        keyed = [row for row in rows if row]
        if kind == "value" and keyed:
            row = draw(st.sampled_from(keyed))
            row[draw(st.sampled_from(sorted(row)))] = draw(values)
        elif kind == "drop_key" and keyed:
            row = draw(st.sampled_from(keyed))
            row.pop(draw(st.sampled_from(sorted(row))))
        elif kind == "add_key" and rows:
            draw(st.sampled_from(rows))[draw(st.text(max_size=12))] = draw(values)
        elif kind == "rows" and results:
            rs = draw(st.sampled_from(results))
            if rs and draw(st.booleans()):
                rs.pop(draw(st.integers(0, len(rs) - 1)))
            elif rs:
                rs.append(dict(draw(st.sampled_from(rs))))
        elif kind == "sets" and results:
            if draw(st.booleans()):
                results.pop(draw(st.integers(0, len(results) - 1)))
            else:
                results.append([])
    return recorded["version"], recorded["version_comment"], results


random_results = st.lists(
    st.lists(st.dictionaries(st.text(max_size=12), values, max_size=6), max_size=3), max_size=6
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=mutated_results())
def test_fuzz_parse_status_of_mutated_answers(answer):
    version, comment, results = answer
    flavor = detect(version, comment)
    try:
        status = flavor.parse_status(version, results)
    except ValueError as exc:
        assert str(exc)
    else:
        assert isinstance(status, NodeStatus)


@settings(max_examples=EXAMPLES, deadline=None)
@given(version=st.sampled_from(["10.11.6-MariaDB", "8.0.36", "8.4.2"]), results=random_results)
def test_fuzz_parse_status_of_random_answers(version, results):
    try:
        assert isinstance(detect(version).parse_status(version, results), NodeStatus)
    except ValueError as exc:
        assert str(exc)


@settings(max_examples=EXAMPLES, deadline=None)
@given(version=values, comment=values)
def test_fuzz_detect(version, comment):
    try:
        flavor = detect(version, comment)
    except ValueError as exc:
        assert str(exc)
    else:
        assert flavor.status_sql()


# -- the whole probe against a server sending mutated bytes ------------------------------------

MORE_RESULTS = 0x0008
BASE = RECORDED["mariadb-10.11-replica-running"]


def wire_answer(results: list[list[dict[str, Any]]]) -> bytes:
    """The recorded result sets as a server sends them: text result sets, MORE_RESULTS set on
    every one but the last."""
    out, seq = b"", 1
    for i, rows in enumerate(results):
        columns = list(rows[0]) if rows else ["x"]
        payloads = protocol.result_set(
            columns, [[None if r[c] is None else str(r[c]) for c in columns] for r in rows]
        )
        if i < len(results) - 1:
            payloads[-1] = b"\xfe" + struct.pack("<HH", 0, 0x0002 | MORE_RESULTS)
        for payload in payloads:
            out += protocol.frame(payload, seq)
            seq += 1
    return out


VERSION_ANSWER = protocol.result_set(
    ["version", "comment"], [[BASE["version"], BASE["version_comment"]]]
)
SETTINGS = [
    {"Variable_name": "rpl_semi_sync_master_timeout", "Value": "4294967295"},
    {"Variable_name": "rpl_semi_sync_master_wait_no_slave", "Value": "ON"},
]
STATUS_ANSWER = wire_answer([*BASE["results"], SETTINGS])  # the probe asks both at once


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


async def probe_once(server: FakeMySQL, timeout: float = 0.3):
    probe = NodeProbe(
        "fuzz",
        Endpoint("127.0.0.1", server.port, "u", "p"),
        interval=1.0,
        timeout=timeout,
        emit=lambda e: None,
        watch=False,
    )
    started = time.monotonic()
    try:
        result = await probe.probe()
    finally:
        await probe.close()
    assert time.monotonic() - started < timeout * 2 + 1.0
    return result


def answering(status: bytes):
    async def send_and_hang_up(writer: asyncio.StreamWriter) -> None:
        writer.write(status)
        await writer.drain()
        writer.close()

    return lambda sql: VERSION_ANSWER if sql.startswith("SELECT @@version") else send_and_hang_up


async def test_the_unmutated_answer_is_a_healthy_probe():
    async with FakeMySQL(answering(STATUS_ANSWER)) as server:
        result = await probe_once(server, timeout=2.0)
    assert result.ok, result.error
    assert result.status.replication[0].source_port == BASE["results"][1][0]["Master_Port"]
    semi = result.status.semi_sync  # the settings, read in the same round trip
    assert (semi.source_timeout, semi.source_wait_no_replica) == (4294967.295, True)


@settings(max_examples=NETWORK_EXAMPLES, deadline=None)
@given(data=st.data())
def test_fuzz_probe_of_a_mutated_answer(data):
    status = data.draw(mutated_bytes(STATUS_ANSWER) | st.binary(max_size=300))

    async def run():
        async with FakeMySQL(answering(status)) as server:
            return await probe_once(server)

    result = asyncio.run(run())
    assert result.ok or result.error


@settings(max_examples=NETWORK_EXAMPLES, deadline=None)
@given(data=st.data())
def test_fuzz_probe_of_a_mutated_greeting(data):
    greeting = protocol.frame(protocol.handshake_v10("10.11.6-MariaDB", 1, b"s" * 20), 0)
    sent = data.draw(mutated_bytes(greeting) | st.binary(max_size=200))

    async def send(writer: asyncio.StreamWriter) -> None:
        writer.write(sent)
        await writer.drain()
        await asyncio.sleep(0.05)

    async def run():
        async with FakeMySQL(greeting=send) as server:
            return await probe_once(server)

    result = asyncio.run(run())
    assert not result.ok and result.error
