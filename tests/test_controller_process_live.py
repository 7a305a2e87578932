"""The controller as a separate process: a partition of its own link, and a crash mid-failover.

The partition test runs the controller as user ``nobody`` and drops, with an iptables owner
match, only that user's packets to the primary's port: the replicas (mariadbd, another user)
still reach the primary. It needs root and iptables, and is skipped with the reason otherwise.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.live import (
    FAST_ENV,
    NOBODY,
    Process,
    as_nobody,
    crashed_after_promote,
    iptables_available,
    nobody_dropped,
    sql,
    switchover_crashed_after,
)

pytestmark = pytest.mark.integration


def test_controller_only_partition_alerts_and_does_not_fail_over(fresh_sandbox):
    if reason := iptables_available():
        pytest.skip(reason)
    info = fresh_sandbox.status()
    rule = nobody_dropped(info.node("node1").port)
    shared = Path(tempfile.mkdtemp(prefix="hacontrol-nobody-"))
    config, secrets = as_nobody(fresh_sandbox, shared)
    env = {**FAST_ENV, **secrets}
    ctl = Process(config, env, prefix=NOBODY)
    try:
        ctl.wait(lambda: ctl.of("decision", rule="Nothing"), 20, "a healthy cluster")
        subprocess.run(["iptables", "-I", *rule], check=True)
        try:
            problem = ctl.wait(
                lambda: ctl.of("problem", code="UnreachablePrimary"), 20, "UnreachablePrimary"
            )
            ctl.wait(lambda: ctl.of("alert", kind="unreachable_primary"), 10, "the alert")
            time.sleep(3)  # well past io_stall: the replicas' heartbeats keep arriving
        finally:
            subprocess.run(["iptables", "-D", *rule], check=True)
        assert "still replicate from it" in problem[0]["reason"]
        assert not ctl.of("problem", code="DeadPrimary")
        assert not [p for p in ctl.of("plan_started") if p["kind"] == "failover"]
        assert len(ctl.of("alert", kind="unreachable_primary")) == 1
        ctl.wait(lambda: ctl.of("problem_cleared", code="UnreachablePrimary"), 20, "the link back")
    finally:
        ctl.stop()
        shutil.rmtree(shared, ignore_errors=True)


async def test_controller_killed_between_promotion_and_repointing_resumes(fresh_sandbox):
    info = fresh_sandbox.status()
    # A single instance (no fleet): its own journal is the truth and the plan is resumed from
    # it (a fleet starts from the live topology: tests/test_fleet_live.py).
    single = {"HACONTROL_CONTROLLER__FLEET": "false"}
    _, env, first = crashed_after_promote(fresh_sandbox, single)
    assert first.proc.returncode == -signal.SIGKILL
    assert first.of("fault_injected", after="Promote")
    assert not first.of("plan_finished", kind="failover")
    promoted = next(a for a in first.of("action") if a["action"] == "Promote")["node"]
    other = "node3" if promoted == "node2" else "node2"
    # Between the two: one primary, and a replica still pointing at the dead one.
    roles = await fresh_sandbox.live_roles()
    assert roles[promoted] == "primary" and roles[other] == "replica"
    assert "Repoint" not in {a["action"] for a in first.of("action")}

    second = Process(info.settings, env)
    try:
        second.wait(lambda: second.of("journal_unfinished"), 20, "the journal read at start")
        done = second.wait(
            lambda: second.of("plan_finished", kind="failover"),
            30,
            "the failover finished from the journal",
        )
        assert done[0]["ok"], done[0]["reason"]
        actions = [a["action"] for a in second.of("action")]
        assert actions[:3] == ["Route", "Repoint", "Notify"]  # the steps left, nothing redone
        second.wait(lambda: second.of("decision", rule="Nothing"), 20, "converged")
    finally:
        second.stop()
    roles = await fresh_sandbox.live_roles()
    assert roles == {"node1": "unreachable", promoted: "primary", other: "replica"}
    source = await sql(fresh_sandbox, other, "SHOW SLAVE STATUS")
    assert source[0][1] == "127.0.0.1" and source[0][3] == info.node(promoted).port


async def test_controller_killed_right_after_the_drain_routes_the_writer_back(fresh_sandbox):
    # The switchover drained node1 (ProxySQL: OFFLINE_SOFT; HAProxy: DRAIN) and the controller
    # died before the fence. Restarted, it rolls the switchover back: node1 is the writer again,
    # never left drained.
    from hacontrol.service import build_router
    from hacontrol.settings import load_settings

    info = fresh_sandbox.status()
    router = build_router(load_settings(info.settings).settings)
    assert router is not None
    # A single instance: its journal's plan is rolled back (a fleet's leader starts from the
    # live topology and publishes node1 instead: docs/fleet.md).
    single = {"HACONTROL_CONTROLLER__FLEET": "false"}
    _, env, first = switchover_crashed_after(info.settings, "Drain", single)
    assert first.proc.returncode == -signal.SIGKILL
    assert first.of("fault_injected", after="Drain")
    assert (await router.read()).writers == frozenset()  # drained, and nobody left to undo it

    second = Process(info.settings, env)
    try:
        second.wait(lambda: second.of("journal_unfinished"), 20, "the journal read at start")
        done = second.wait(lambda: second.of("plan_finished", kind="rollback"), 30, "the rollback")
        assert done[0]["ok"], done[0]["reason"]
        assert [a["action"] for a in second.of("action")][:2] == ["SetWritable", "Route"]
        second.wait(lambda: second.of("decision", rule="Nothing"), 20, "converged")
    finally:
        second.stop()
    assert (await router.read()).writers == {"node1"}
    roles = await fresh_sandbox.live_roles()
    assert roles == {"node1": "primary", "node2": "replica", "node3": "replica"}
