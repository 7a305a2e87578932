"""The whole controller with a real ProxySQL in front of the sandbox's mariadbd nodes: real
probes, the router probe reading runtime_mysql_servers, reconcile, ProxySQL killed and back with
stale rows on disk, the start-up refusal over replication hostgroups. Skipped without ProxySQL.

Each test runs a ProxySQL of its own (with its monitor, logging in as the sandbox's monitor
user), so it can kill it and plant rows on its disk without disturbing other tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from hacontrol.routing import Membership, RouterError
from tests.live import runtime, sandbox_settings
from tests.proxysql_real import RealProxySQL, Row, WriterSampler, pair_sql, writers_in
from tests.support import eventually

pytestmark = pytest.mark.integration

ALL = Membership.of(["node1"], ["node1", "node2", "node3"])


@pytest.fixture
def own_proxysql(sandbox, tmp_path: Path) -> Iterator[RealProxySQL]:
    proxysql = RealProxySQL(tmp_path / "proxysql", monitor=("monitor", sandbox.password("monitor")))
    try:
        yield proxysql
    finally:
        proxysql.kill()


def proxysql_settings(sandbox, proxysql: RealProxySQL):
    settings = sandbox_settings(sandbox)
    router = settings.router.model_copy(
        update={
            "kind": "proxysql",
            "proxysql": settings.router.proxysql.model_copy(
                update={
                    "host": proxysql.host,
                    "port": proxysql.port,
                    "user": proxysql.user,
                    "password": SecretStr(proxysql.password),
                    "timeout": 1.0,
                }
            ),
        }
    )
    return settings.model_copy(update={"router": router})


def rows_for(sandbox, writer: str, readers: tuple[str, ...]) -> list[Row]:
    info = sandbox.status()
    out = [Row(10, "127.0.0.1", info.node(writer).port)]
    out += [Row(20, "127.0.0.1", info.node(n).port) for n in readers]
    out.append(Row(50, "10.9.9.9", 3306, comment="not ours"))  # must stay untouched
    return out


def managed(sandbox) -> list[tuple[str, int]]:
    return [("127.0.0.1", n.port) for n in sandbox.status().nodes]


async def test_controller_reconciles_proxysql_and_survives_its_restart(sandbox, own_proxysql):
    # ProxySQL starts with a wrong writer (node2): the controller must move it to node1.
    proxysql = own_proxysql
    proxysql.reset(rows_for(sandbox, "node2", ("node2", "node3")))
    sampler = WriterSampler.of(proxysql, managed(sandbox)).start()
    try:
        rt, capture = runtime(proxysql_settings(sandbox, proxysql))
        async with rt:
            await eventually(
                lambda: any(p["code"] == "RouterWriterIsNotPrimary" for p in capture.of("problem")),
                10,
                "RouterWriterIsNotPrimary seen through ProxySQL",
            )
            await eventually(lambda: rt.controller.view.router.membership == ALL, 15, "reconciled")
            assert (50, "10.9.9.9", 3306) in {r[:3] for r in proxysql.servers()}

            # An older SAVE is on disk (node3 the writer); ProxySQL crashes, the controller
            # keeps deciding, and ProxySQL comes back (no --initial) with those stale rows.
            proxysql.set_disk_rows(rows_for(sandbox, "node3", ("node2",)))
            await proxysql.akill()
            await eventually(
                lambda: any(p["code"] == "RouterUnreachable" for p in capture.of("problem")),
                10,
                "RouterUnreachable",
            )
            assert rt.controller.view.quorum.ok  # observation goes on
            await proxysql.astart()
            await eventually(
                lambda: any(
                    r["code"] == "RouterUnreachable" for r in capture.of("problem_cleared")
                ),
                10,
                "back",
            )
            await eventually(
                lambda: (
                    len(
                        [
                            p
                            for p in capture.of("problem")
                            if p["code"] == "RouterWriterIsNotPrimary"
                        ]
                    )
                    >= 2
                ),
                10,
                "the stale writer node3 seen after the restart",
            )
            await eventually(
                lambda: rt.controller.view.router.membership == ALL, 15, "stale rows corrected"
            )
    finally:
        await sampler.stop()
    node1 = sandbox.status().node("node1").port
    assert writers_in(proxysql.servers(), managed(sandbox)) == [("127.0.0.1", node1, "ONLINE")]
    assert writers_in(proxysql.servers("disk.mysql_servers"), managed(sandbox)) == [
        ("127.0.0.1", node1, "ONLINE")
    ]
    # Never two writers in ProxySQL's runtime, sampled every few ms from another connection.
    assert len(sampler.samples) > 100
    assert sampler.with_two_writers() == []


async def test_refuses_to_start_over_proxysql_replication_hostgroups(sandbox, own_proxysql):
    own_proxysql.reset(rows_for(sandbox, "node1", ("node2", "node3")), [pair_sql(10, 20)])
    rt, _ = runtime(proxysql_settings(sandbox, own_proxysql))
    with pytest.raises(RouterError, match="mysql_replication_hostgroups"):
        async with rt:
            pass
