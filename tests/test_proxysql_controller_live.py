"""The whole controller with ProxySQL in front (the admin double; a real proxysql when on PATH
is exercised by the double's own tests): real probes of the sandbox's mariadbd nodes, the
router probe reading runtime_mysql_servers, reconcile, ProxySQL down and back with stale rows.
"""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from hacontrol.routing import Membership, RouterError
from tests.live import runtime, sandbox_settings
from tests.proxysql_double import ProxySQLAdminDouble, ReplicationHostgroupRow, ServerRow
from tests.support import eventually

pytestmark = pytest.mark.integration


def proxysql_settings(sandbox, double: ProxySQLAdminDouble):
    settings = sandbox_settings(sandbox)
    router = settings.router.model_copy(
        update={
            "kind": "proxysql",
            "proxysql": settings.router.proxysql.model_copy(
                update={
                    "host": double.host,
                    "port": double.port,
                    "user": double.user,
                    "password": SecretStr(double.password),
                    "timeout": 1.0,
                }
            ),
        }
    )
    return settings.model_copy(update={"router": router})


def rows_for(sandbox, writer: str, readers: tuple[str, ...]) -> list[ServerRow]:
    info = sandbox.status()
    out = [ServerRow(10, "127.0.0.1", info.node(writer).port)]
    out += [ServerRow(20, "127.0.0.1", info.node(n).port) for n in readers]
    out.append(ServerRow(50, "10.9.9.9", 3306, comment="not ours"))  # must stay untouched
    return out


async def test_controller_reconciles_proxysql_and_survives_its_restart(sandbox, tmp_path):
    # ProxySQL starts with a wrong writer (node2): the controller must move it to node1.
    double = ProxySQLAdminDouble(
        datadir=tmp_path / "proxysql", seed_servers=rows_for(sandbox, "node2", ("node2", "node3"))
    )
    await double.start()
    try:
        rt, capture = runtime(proxysql_settings(sandbox, double))
        async with rt:
            await eventually(
                lambda: any(p["code"] == "RouterWriterIsNotPrimary" for p in capture.of("problem")),
                10,
                "RouterWriterIsNotPrimary seen through ProxySQL",
            )
            await eventually(
                lambda: (
                    rt.controller.view.router.membership
                    == Membership.of(["node1"], ["node1", "node2", "node3"])
                ),
                15,
                "router reconciled",
            )
            runtime_rows = {(r["hostgroup_id"], r["port"]) for r in double.runtime_rows()}
            assert (50, 3306) in runtime_rows
            # Never two writers in runtime, after any statement the controller sent.
            ours = {sandbox.status().node(n).port for n in ("node1", "node2", "node3")}
            for snapshot in double.runtime_history:
                assert sum(1 for hg, _, port, _ in snapshot if hg == 10 and port in ours) <= 1

            # ProxySQL crashes; the controller keeps deciding; it restarts with stale disk rows.
            await double.stop()
            await eventually(
                lambda: any(p["code"] == "RouterUnreachable" for p in capture.of("problem")),
                10,
                "RouterUnreachable",
            )
            assert rt.controller.view.quorum.ok  # observation goes on
            double.set_disk_rows(rows_for(sandbox, "node3", ("node2",)))
            await double.start()
            await eventually(
                lambda: any(
                    r["code"] == "RouterUnreachable" for r in capture.of("problem_cleared")
                ),
                10,
                "back",
            )
            await eventually(
                lambda: (
                    rt.controller.view.router.membership
                    == Membership.of(["node1"], ["node1", "node2", "node3"])
                ),
                15,
                "stale rows corrected",
            )
        runtime_writers = {r["port"] for r in double.runtime_rows() if int(r["hostgroup_id"]) == 10}
        assert runtime_writers == {sandbox.status().node("node1").port}
    finally:
        await double.stop()


async def test_refuses_to_start_over_proxysql_replication_hostgroups(sandbox, tmp_path):
    double = ProxySQLAdminDouble(
        datadir=tmp_path / "proxysql",
        seed_servers=rows_for(sandbox, "node1", ("node2", "node3")),
        seed_replication_hostgroups=[ReplicationHostgroupRow(10, 20)],
    )
    await double.start()
    try:
        rt, _ = runtime(proxysql_settings(sandbox, double))
        with pytest.raises(RouterError, match="mysql_replication_hostgroups"):
            async with rt:
                pass
    finally:
        await double.stop()
