"""The drill's own sandbox rebuild (``rebuild_sandbox_node``) on real mariadbd: a node given
a fresh datadir and a dump of the primary holds the primary's rows and its GTID position."""

from __future__ import annotations

import pytest

from hacontrol.drill.rebuild import rebuild_sandbox_node
from tests.live import sql

pytestmark = pytest.mark.integration


async def test_a_rebuilt_node_holds_the_primarys_rows_at_its_position(fresh_sandbox):
    sandbox = fresh_sandbox
    await sql(sandbox, "node1", "CREATE TABLE app.rebuilt (id INT PRIMARY KEY)")
    await sql(sandbox, "node1", "INSERT INTO app.rebuilt VALUES (1), (2), (3)")
    (position,) = (await sql(sandbox, "node1", "SELECT @@gtid_binlog_pos"))[0]

    note = await rebuild_sandbox_node(sandbox, "node3", "node1")

    assert note == f"node3 rebuilt from a dump of node1 at {position} and restarted"
    rows = await sql(sandbox, "node3", "SELECT id FROM app.rebuilt ORDER BY id")
    assert [r[0] for r in rows] == [1, 2, 3]
    assert (await sql(sandbox, "node3", "SELECT @@gtid_slave_pos"))[0][0] == position
    # The load ran with the binary log off: the node wrote no transaction of its own.
    assert (await sql(sandbox, "node3", "SELECT @@gtid_binlog_pos"))[0][0] == ""


async def test_a_rebuilt_former_primary_comes_back_read_only(fresh_sandbox):
    """node1 was created as the primary (its configuration says read_only=OFF): rebuilt from
    node2 it must not come back as a second writer (found by the chaos soak: the drill's
    rebuild of an errant old primary restarted it writable beside the promoted node)."""
    await rebuild_sandbox_node(fresh_sandbox, "node1", "node2")
    assert (await sql(fresh_sandbox, "node1", "SELECT @@read_only"))[0][0] == 1
