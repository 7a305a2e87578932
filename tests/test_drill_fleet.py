"""The fleet's drill end to end (``hacontrol drill --controllers 3``) on one real sandbox with
three routers and three controller processes: one run of each fault on the leader. Checks the
report (a figure per router), zero loss, that the frozen leader changed nothing, and that every
run restored the fleet; never the timings."""

from __future__ import annotations

import math
import tempfile
from datetime import datetime
from pathlib import Path

import pytest

from hacontrol.drill.fleet import FleetDrill, fleet_sandbox
from hacontrol.drill.runner import DrillPlan
from tests.sandbox_fixtures import run_sync, skip_without_servers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet():
    skip_without_servers()
    sandbox = fleet_sandbox(Path(tempfile.mkdtemp(prefix="hacontrol-fleet-drill-")) / "sb", 3, None)
    try:
        run_sync(sandbox.up)
        yield sandbox
    finally:
        run_sync(sandbox.down)


async def one_run(sandbox, fault: str):
    lines: list[str] = []
    drill = FleetDrill(sandbox, DrillPlan(fault=fault, runs=1), progress=lines.append)
    (result,) = await drill.run()
    return result, lines, drill


@pytest.mark.parametrize("fault", ["freeze-leader", "kill-leader-and-primary"])
async def test_fleet_drill(fleet, fault):
    result, lines, drill = await one_run(fleet, fault)
    assert result.error is None, (result.error, lines)
    assert result.lost_writes == 0 and result.restored, result.restore
    before, after = result.leaders or (None, None)
    assert before is not None and after is not None and after != before
    for name in ("c1", "c2", "c3"):
        outage = result.figures[f"write_outage@{name}"]
        if fault == "kill-leader-and-primary" and name == before:
            continue  # its router's sidecar was killed too: nobody moves its writer meanwhile
        assert outage is not None and math.isfinite(outage) and outage >= 0
    assert result.figures["takeover"] is not None and result.figures["published"] is not None
    if fault == "freeze-leader":
        assert result.new_primary == result.old_primary  # no failover: the primary lived
        since_fault = [
            r
            for r in drill.records()
            if r["_instance"] == before
            and datetime.fromisoformat(r["ts"]).timestamp() >= result.fault_wall
        ]
        assert [r for r in since_fault if r["event"] == "lease" and r["leader"] is False]
        acted = [
            r
            for r in since_fault
            if r["event"] == "action" and r["action"] not in ("Route", "RouteFence")
        ]
        assert acted == []  # once frozen, it changed no node (its own router only)
    else:
        assert result.new_primary not in (None, result.old_primary)
        assert result.figures["promotion"] is not None
