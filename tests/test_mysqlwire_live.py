"""The probe's one-pass reader of text answers (``mysqlwire.TextAnswer``, ``fetch_text``) gives
what aiomysql's cursor (``fetch_all``) gives, on a real MariaDB: a differential test.

- A typed multi-statement query (integers, decimals, floats, dates, times, NULL, binary and
  text strings, a repeated column name, an empty result, a statement with no result set):
  equal rows, the first time and when the column definitions come from the cache.
- The flavor's status query on the primary and on a replica: the same keys and value types
  (values move between two queries: heartbeats, positions).
- The wire bytes of real answers fed in random pieces (one byte at a time included): the same
  rows as fed whole; cut short anywhere: never complete, never another exception.
- A server error comes out as aiomysql's exception; a budget too small closes the connection.
"""

from __future__ import annotations

import asyncio
import random

import pymysql
import pytest

from hacontrol.flavors import detect, multi_statement
from hacontrol.mysqlconn import (
    AnswerTooLarge,
    BoundedConnection,
    ColumnCache,
    connect,
    endpoint_for,
    fetch_all,
    fetch_text,
)
from hacontrol.mysqlwire import MalformedAnswer, TextAnswer
from tests.live import sandbox_settings
from tests.sandbox_fixtures import run_sync

pytestmark = pytest.mark.integration

TYPED = (
    "SELECT 1 AS i, -9223372036854775808 AS big, 12.50 AS dec_, 1.5e3 AS f, NULL AS n, "
    "'é' AS t, X'00ff' AS b, CAST('2026-11-29 12:34:56.789' AS DATETIME(3)) AS dt, "
    "CAST('2026-11-29' AS DATE) AS d, CAST('-01:02:03' AS TIME) AS tm, "
    "REPEAT('x', 300) AS long_;"
    "SELECT a.x, b.x FROM (SELECT 1 AS x) a JOIN (SELECT 2 AS x) b;"
    "SELECT 1 FROM DUAL WHERE 0;"
    "DO 1;"
    "SHOW VARIABLES LIKE 'version%'"
)


async def _open(sandbox, node: str) -> BoundedConnection:
    settings = sandbox_settings(sandbox)
    spec = next(n for n in settings.nodes if n.name == node)
    password = settings.mysql.password.get_secret_value() if settings.mysql.password else ""
    endpoint = endpoint_for(spec.host, spec.port, settings.mysql.user, password, settings.mysql.tls)
    return await connect(endpoint, 5.0, multi_statements=True, max_read=1 << 20)


def _recorded(conn: BoundedConnection) -> list[bytes]:
    """Every chunk the connection reads from now on (the wire bytes of its answers)."""
    chunks: list[bytes] = []
    reader = conn._reader
    read = reader.read

    async def recording(n: int = -1) -> bytes:
        data = await read(n)
        chunks.append(data)
        return data

    reader.read = recording  # type: ignore[method-assign]
    return chunks


def _feed(data: bytes, cuts: list[int], encoding: str) -> TextAnswer:
    answer = TextAnswer(ColumnCache(encoding))
    done, start = False, 0
    for end in [*sorted(set(cuts)), len(data)]:
        if end > start:
            assert not done
            done = answer.feed(data[start:end])
            start = end
    assert done
    return answer


def test_typed_answers_equal_aiomysql(sandbox) -> None:
    async def main() -> None:
        conn = await _open(sandbox, "node1")
        try:
            columns = ColumnCache(conn.encoding)
            expected = await fetch_all(conn, TYPED, timeout=5)
            chunks = _recorded(conn)
            first = await fetch_text(conn, TYPED, columns, timeout=5)
            data = b"".join(chunks)  # the first answer's wire bytes
            again = await fetch_text(conn, TYPED, columns, timeout=5)  # definitions cached
        finally:
            conn.close()
        assert first == expected and again == expected
        assert expected[1] == [{"x": 1, "b.x": 2}] and expected[2] == [] and expected[3] == []
        rng = random.Random(16)
        for _ in range(50):
            cuts = rng.sample(range(1, len(data)), rng.randint(1, 40))
            assert _feed(data, cuts, conn.encoding).results == expected
        assert _feed(data, list(range(1, len(data))), conn.encoding).results == expected
        for end in rng.sample(range(1, len(data)), 60):  # cut short: waits for more, no error
            answer = TextAnswer(ColumnCache(conn.encoding))
            assert answer.feed(data[:end]) is False

    run_sync(main)


def test_status_query_answers_like_aiomysql_on_primary_and_replica(sandbox) -> None:
    async def main() -> None:
        for node in ("node1", "node2"):
            conn = await _open(sandbox, node)
            try:
                sql = "SELECT @@version AS v, @@version_comment AS c"
                version = (await fetch_all(conn, sql, timeout=5))[0][0]
                flavor = detect(version["v"], version["c"] or "")
                sql = multi_statement(flavor.status_sql())
                columns = ColumnCache(conn.encoding)
                expected = await fetch_all(conn, sql, timeout=5)
                for _ in range(2):
                    got = await fetch_text(conn, sql, columns, timeout=5)
                    assert _shape(got) == _shape(expected), node
                    flavor.parse_status(version["v"], got)  # reads as a status
            finally:
                conn.close()
            if node == "node2":
                assert any("Slave_IO_Running" in row for result in got for row in result)

    run_sync(main)


def _shape(results: list[list[dict]]) -> list[list[list[tuple[str, str]]]]:
    return [[[(k, type(v).__name__) for k, v in row.items()] for row in rs] for rs in results]


def test_server_errors_and_budget() -> None:
    """Pure: an error packet is the server's error as pymysql raises it; garbage is a
    MalformedAnswer (a ValueError)."""
    error = b"\xff\x7a\x04#42000You have an error"
    packet = len(error).to_bytes(3, "little") + b"\x01" + error
    with pytest.raises(pymysql.err.ProgrammingError):
        TextAnswer(ColumnCache("utf8")).feed(packet)
    with pytest.raises(MalformedAnswer):
        TextAnswer(ColumnCache("utf8")).feed(b"\x01\x00\x00\x01\x00")  # count 0 columns
    with pytest.raises(ValueError):
        TextAnswer(ColumnCache("utf8")).feed(b"\x01\x00\x00\x01\xfb")  # LOCAL INFILE


def test_an_answer_over_the_budget_closes_the_connection(sandbox) -> None:
    async def main() -> None:
        conn = await _open(sandbox, "node1")
        conn.max_read = 2048
        try:
            with pytest.raises(AnswerTooLarge):
                await fetch_text(conn, "SELECT REPEAT('x', 100000)", ColumnCache("utf8"), timeout=5)
            assert conn.closed
        finally:
            conn.close()

    run_sync(main)


def test_a_repeated_answer_gives_the_same_rows_and_a_changed_set_is_read_again(sandbox) -> None:
    """Rows are decoded when their bytes change: a result set that repeats byte for byte is
    the previous rows (the same objects), one that moved is new rows equal to aiomysql's, and
    an answer that repeats whole is the previous answer's result sets."""
    sql = "SELECT 1 AS one, 'x' AS x; SELECT NOW(6) AS now_; SHOW VARIABLES LIKE 'version%'"

    async def main() -> None:
        conn = await _open(sandbox, "node1")
        try:
            columns = ColumnCache(conn.encoding)
            first = await fetch_text(conn, sql, columns, timeout=5)
            second = await fetch_text(conn, sql, columns, timeout=5)
            expected = await fetch_all(conn, sql, timeout=5)
            fixed = "SELECT 1 AS one; SHOW VARIABLES LIKE 'version%'"
            chunks = _recorded(conn)
            again = [await fetch_text(conn, fixed, columns, timeout=5) for _ in range(2)]
            chunks.clear()  # the third answer's bytes (one read, or several on a busy machine)
            again.append(await fetch_text(conn, fixed, columns, timeout=5))
        finally:
            conn.close()
        assert second[0] is first[0] and second[2] is first[2]  # repeated: not read again
        assert second[1] is not first[1] and second[1] != first[1]  # NOW(6) moved
        assert second[0] == expected[0] and second[2] == expected[2]
        assert again[1] is not again[0]  # a new list of the same result sets
        assert all(a is b for a, b in zip(again[0], again[1], strict=True))
        assert again[2] == again[0] == [[{"one": 1}], expected[2]]
        # The same bytes in pieces (not one read) read packet by packet: the same rows.
        whole = b"".join(chunks)
        assert _feed(whole, [len(whole) // 2], conn.encoding).results == again[0]
        # One byte different is not the previous answer: read again, only its moved set new.
        assert whole.count(b"10.11.") >= 1
        answer = TextAnswer(columns)
        assert answer.feed(whole.replace(b"10.11.", b"10.19.")) is True
        assert answer.results[0] is again[0][0]
        assert answer.results[1] != again[0][1]
        assert [r["Value"] for r in answer.results[1]] == [
            r["Value"].replace("10.11.", "10.19.") for r in again[0][1]
        ]

    run_sync(main)


def test_a_probe_at_rest_is_not_parsed_again(sandbox) -> None:
    """The probe parses an answer whose result sets repeat (the primary at rest) once: the
    same status; a replica's answer moves (heartbeats): parsed again."""
    from hacontrol.probes.mysql import NodeProbe

    async def main() -> None:
        settings = sandbox_settings(sandbox)
        password = settings.mysql.password.get_secret_value() if settings.mysql.password else ""
        probes = {
            n.name: NodeProbe(
                n.name,
                endpoint_for(n.host, n.port, settings.mysql.user, password, settings.mysql.tls),
                interval=1.0,
                timeout=5.0,
                emit=lambda event: None,
                watch=False,
            )
            for n in settings.nodes
            if n.name in ("node1", "node2")
        }
        try:
            primary = [await probes["node1"].probe() for _ in range(2)]
            replica = [await probes["node2"].probe()]
            await asyncio.sleep(1.2)  # the replica's heartbeat period is 0.5 s
            replica.append(await probes["node2"].probe())
        finally:
            for probe in probes.values():
                await probe.close()
        assert all(r.ok for r in (*primary, *replica))
        assert primary[1].status is primary[0].status
        assert replica[1].status is not replica[0].status
        (before,), (after,) = replica[0].status.replication, replica[1].status.replication
        assert after.heartbeats_received > before.heartbeats_received

    run_sync(main)
