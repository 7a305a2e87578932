"""A divergence below the last GTID, made for real on the sandbox, seen through the probe.

The old primary writes a transaction that never reaches a replica, a replica is promoted by
hand and writes more: the old primary's position (``0-1-N``) is then "within" the new
primary's (``0-2-M``, M > N), though its ``0-1-N`` is nowhere else. The binlog states the probe
now reads say so, with the exact GTID, and the server confirms it: the old primary cannot
replicate from the new one (error 1236, "not in the master's binlog").
"""

from __future__ import annotations

import asyncio

import pytest

from hacontrol import gtid
from hacontrol.flavors import NodeStatus
from hacontrol.sandbox import Sandbox
from hacontrol.sandbox.render import change_master_sql
from tests.live import probe, sql, state_of

pytestmark = pytest.mark.integration


async def write(sandbox: Sandbox, node: str, first: int, count: int) -> None:
    values = ", ".join(
        f"({first + i}, {sandbox.status().node(node).server_id})" for i in range(count)
    )
    await sql(
        sandbox, node, "SELECT 1", then=(f"INSERT INTO app.writes (id, node) VALUES {values}",)
    )


async def diverge(sandbox: Sandbox) -> tuple[NodeStatus, NodeStatus]:
    """node1 writes one transaction no replica gets; node2 is promoted and writes five."""
    await write(sandbox, "node1", 1, 3)
    pos = (await sql(sandbox, "node1", "SELECT @@gtid_binlog_pos"))[0][0]
    for replica in ("node2", "node3"):
        await sql(sandbox, replica, "SELECT MASTER_GTID_WAIT(%s, 20)", (pos,))
        await sql(sandbox, replica, "STOP SLAVE")
    await sql(sandbox, "node1", "SET GLOBAL rpl_semi_sync_master_enabled = OFF")
    await write(sandbox, "node1", 100, 1)  # the errant transaction
    await sql(sandbox, "node1", "SET GLOBAL read_only = ON")  # fenced, as after a failover
    # Promote node2 by hand and make node3 its replica.
    await sql(sandbox, "node2", "RESET SLAVE ALL", then=("SET GLOBAL read_only = OFF",))
    change = change_master_sql(sandbox.status().node("node2"), sandbox.password("replication"))
    await sql(sandbox, "node3", change, then=("START SLAVE",))
    # Each INSERT its own transaction: node2's seq passes node1's.
    for i in range(5):
        await write(sandbox, "node2", 200 + i, 1)
    return await probe(sandbox, "node1"), await probe(sandbox, "node2")


async def test_divergence_below_the_last_gtid(fresh_sandbox: Sandbox) -> None:
    old, new = await diverge(fresh_sandbox)
    errant_seq = int(old.gtid_binlog_pos.split("-")[2])
    assert old.gtid_binlog_pos == f"0-1-{errant_seq}"
    assert new.gtid_binlog_pos == f"0-2-{errant_seq + 4}"  # 0-2 took over seq N..N+4
    assert new.gtid_binlog_state == f"0-1-{errant_seq - 1},0-2-{errant_seq + 4}"

    # What the positions say (gtid_current_pos, and the binlog positions the rejoin compares):
    # contained, nothing errant.
    assert gtid.parse(old.gtid_executed, "mariadb") <= gtid.parse(new.gtid_executed, "mariadb")
    assert not gtid.parse(old.gtid_binlog_pos, "mariadb") - gtid.parse(
        new.gtid_binlog_pos, "mariadb"
    )
    # What the binlog states say: the exact errant GTID.
    errant = gtid.errant_by_state(state_of(old), state_of(new))
    assert str(errant) == f"0-1-{errant_seq}"
    # The replica that followed node2 holds node2's history: nothing errant there.
    assert gtid.state_contains(state_of(new), state_of(await probe(fresh_sandbox, "node3")))

    # The server agrees: replicating node1 from node2 fails on the GTID the state named.
    sandbox = fresh_sandbox
    change = change_master_sql(sandbox.status().node("node2"), sandbox.password("replication"))
    await sql(sandbox, "node1", f"SET GLOBAL gtid_slave_pos = '{old.gtid_binlog_pos}'")
    await sql(sandbox, "node1", change, then=("START SLAVE",))

    deadline = asyncio.get_running_loop().time() + 30
    while True:
        channel = (await probe(sandbox, "node1")).replication[0]
        if channel.last_io_errno or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert channel.last_io_errno == 1236, channel
    assert f"0-1-{errant_seq}" in channel.last_io_error
    assert "not in the master's binlog" in channel.last_io_error
