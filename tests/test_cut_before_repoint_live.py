"""A fleet's leader killed in its failover after the Promote and before the Repoint, on real
servers: the dead old primary comes back read-only before the leader restarts (a supervisor
restarted it). Restarted, the leader rejoins the old primary under the promoted node and must
repoint the other replica too, which the failover's SetIOThreads left stopped on the old
primary. Found by the chaos soak (kill-controller-mid-plan, seed 15: "NOT CONVERGED within
120 s: node3 does not replicate from node2"); pure decision: test_rules_repoint_after_cut.py.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from hacontrol.sandbox import Sandbox
from tests.live import (
    FAST_ENV,
    Frozen,
    Process,
    as_cut_inside_the_promote,
    crashed_after_promote,
    replica_status,
    sql,
    switchover_crashed_after,
)

pytestmark = pytest.mark.integration


async def test_a_replica_left_stopped_on_the_old_primary_is_repointed_after_the_restart(
    fresh_sandbox,
):
    info = fresh_sandbox.status()
    _, env, first = crashed_after_promote(fresh_sandbox)
    assert first.of("fault_injected", after="Promote")
    done = [a["action"] for a in first.of("action")]
    assert "Promote" in done and "Repoint" not in done
    promoted = next(a for a in first.of("action") if a["action"] == "Promote")["node"]
    other = "node3" if promoted == "node2" else "node2"
    left = await replica_status(fresh_sandbox, other)
    assert left["Master_Port"] == info.node("node1").port and left["Slave_IO_Running"] == "No"

    await fresh_sandbox.start_node("node1", "--read-only=ON")  # back before the restart
    second = Process(info.settings, env)
    try:
        repointed = second.wait(
            lambda: second.of("decision", rule="RepointStray"), 60, "the stopped replica repointed"
        )
        second.wait(lambda: second.of("decision", rule="Nothing"), 60, "converged")
    finally:
        second.stop()
    assert f"the IO thread of {other} is stopped" in repointed[0]["reason"]
    roles = await fresh_sandbox.live_roles()
    assert roles == {"node1": "replica", promoted: "primary", other: "replica"}, roles
    for node in ("node1", other):
        now = await replica_status(fresh_sandbox, node)
        assert now["Master_Port"] == info.node(promoted).port, (node, now["Master_Port"])
        assert now["Slave_IO_Running"] == "Yes" and now["Slave_SQL_Running"] == "Yes", now
    # No writes meanwhile: the repointed replica holds what the primary holds.
    for _ in range(50):
        mine = (await sql(fresh_sandbox, other, "SELECT @@gtid_current_pos"))[0][0]
        theirs = (await sql(fresh_sandbox, promoted, "SELECT @@gtid_binlog_pos"))[0][0]
        if mine == theirs:
            break
        await asyncio.sleep(0.2)
    assert mine == theirs


@pytest.mark.parametrize("node1", ["away", "back-read-only", "back-read-only-single"])
async def test_a_promotion_cut_halfway_is_finished_by_the_restarted_leader(fresh_sandbox, node1):
    """Cut inside the Promote, after the candidate's replication was reset and before it was
    made writable (its last statement undone by hand, and its journal record with it): the
    restarted leader finishes that promotion, never fails over again past the candidate.
    Also when the old primary came back read-only meanwhile (restarted by its supervisor as
    the runbook says; review finding 9: nobody took writes until an operator acted): it is
    then rejoined under the promoted node."""
    info = fresh_sandbox.status()
    single = {"HACONTROL_CONTROLLER__FLEET": "false"} if node1.endswith("single") else None
    journal, env, first = crashed_after_promote(fresh_sandbox, single)
    promoted = next(a for a in first.of("action") if a["action"] == "Promote")["node"]
    other = "node3" if promoted == "node2" else "node2"
    await sql(fresh_sandbox, promoted, "SET GLOBAL read_only = ON")
    as_cut_inside_the_promote(journal)
    back = node1.startswith("back-read-only")
    if back:
        await fresh_sandbox.start_node("node1", "--read-only=ON")
    assert await fresh_sandbox.live_roles() == {
        "node1": "primary" if back else "unreachable",  # back: read-only, nobody replicates
        promoted: "primary",  # read-only and replicating from nobody: no writer at all
        other: "replica",
    }

    second = Process(info.settings, env)
    try:
        done = second.wait(
            lambda: second.of("plan_finished", kind="failover"), 60, "the failover finished"
        )
        if back:
            second.wait(lambda: second.of("plan_finished", kind="rejoin"), 60, "node1 rejoined")
        second.wait(lambda: second.of("decision", rule="Nothing"), 60, "converged")
    finally:
        second.stop()
    assert done[0]["ok"], done[0]["reason"]
    promotes = [a for a in second.of("action") if a["action"] == "Promote"]
    assert [a["node"] for a in promotes] == [promoted], promotes
    assert "finished a half-done promotion" in promotes[0]["reason"]
    assert not second.of("plan_abandoned")
    (resumed,) = [d for d in second.of("decision") if d["rule"] == "DeadPrimary"]
    seen = "read-only and replicates from nobody" if back else "unreachable"
    assert f"cut inside its promotion: finishing it; now node1 is {seen}" in resumed["reason"]
    roles = await fresh_sandbox.live_roles()
    assert roles == {
        "node1": "replica" if back else "unreachable",
        promoted: "primary",
        other: "replica",
    }, roles
    for node in (other, "node1") if back else (other,):
        now = await replica_status(fresh_sandbox, node)
        assert now["Master_Port"] == info.node(promoted).port, (node, now)
        assert now["Slave_IO_Running"] == "Yes", (node, now)
    (read_only,) = (await sql(fresh_sandbox, promoted, "SELECT @@read_only"))[0]
    assert read_only == 0


async def restarted_beside_frozen(
    sandbox: Sandbox,
    env: dict[str, str],
    node: str,
    kind: str,
    pause: float,
    meanwhile: Callable[[], Awaitable[int]] | None = None,
) -> tuple[Process, list[dict], list[dict], int | None]:
    """``node`` frozen, the controller restarted: once it waits for the half-done promotion
    (``HalfDonePromotion``), ``pause`` s more of its decisions, ``meanwhile`` read, ``node``
    thawed; then until its plan of ``kind`` finished and it converged. The restarted one
    (stopped), its waits, its finished plans, what ``meanwhile`` read."""
    with Frozen(sandbox, node) as frozen:
        frozen.freeze()
        second = Process(sandbox.status().settings, env)
        try:
            waits = second.wait(
                lambda: second.of("decision", rule="HalfDonePromotion"), 60, "the wait"
            )
            await asyncio.sleep(pause)  # more decisions while it stays frozen
            read = await meanwhile() if meanwhile is not None else None
            frozen.thaw()
            done = second.wait(
                lambda: second.of("plan_finished", kind=kind), 60, f"the {kind} finished"
            )
            second.wait(lambda: second.of("decision", rule="Nothing"), 60, "converged")
        finally:
            second.stop()
    return second, waits, done, read


async def test_a_replica_left_detached_and_read_only_is_rejoined(fresh_sandbox):
    """What a promotion cut halfway leaves when another node is the primary by then: a
    read-only node whose replication was reset. It is rejoined under the primary."""
    info = fresh_sandbox.status()
    journal = Path(tempfile.mkdtemp(prefix="hacontrol-journal-")) / "journal.jsonl"
    ctl = Process(info.settings, {**FAST_ENV, "HACONTROL_CONTROLLER__JOURNAL": str(journal)})
    try:
        ctl.wait(lambda: ctl.of("decision", rule="Nothing"), 30, "a healthy cluster")
        await sql(fresh_sandbox, "node3", "STOP SLAVE", then=("RESET SLAVE ALL",))
        rejoined = ctl.wait(lambda: ctl.of("decision", rule="RejoinDetached"), 30, "the rejoin")
        done = ctl.wait(lambda: ctl.of("plan_finished", kind="rejoin"), 30, "the rejoin done")
        ctl.wait(lambda: len(ctl.of("decision", rule="Nothing")) > 1, 30, "converged again")
    finally:
        ctl.stop()
    assert "node3 is read-only and replicates from nobody" in rejoined[0]["reason"]
    assert done[0]["ok"], done[0]["reason"]
    now = await replica_status(fresh_sandbox, "node3")
    assert now["Master_Port"] == info.node("node1").port and now["Slave_IO_Running"] == "Yes"
    assert await fresh_sandbox.live_roles() == {
        "node1": "primary",
        "node2": "replica",
        "node3": "replica",
    }


@pytest.mark.parametrize(
    ("held", "rule", "kind"),
    [
        ("errant", "ErrantReplica", "errant_transactions"),
        ("empty", "DetachedNotRejoined", "rejoin_failed"),
    ],
)
async def test_a_detached_node_the_rejoin_must_not_touch_is_left_alone_and_alerted_once(
    fresh_sandbox, held, rule, kind
):
    """Review findings 4 and 5: a detached node holding a transaction the primary lacks, or
    whose GTID position is empty (a restore by hand), is not rejoined: one alert, then the
    decisions name the problem that stands, never "cluster as desired"."""
    info = fresh_sandbox.status()
    journal = Path(tempfile.mkdtemp(prefix="hacontrol-journal-")) / "journal.jsonl"
    ctl = Process(info.settings, {**FAST_ENV, "HACONTROL_CONTROLLER__JOURNAL": str(journal)})
    more = (
        ("CREATE DATABASE IF NOT EXISTS only_on_node3",)
        if held == "errant"
        else ("RESET MASTER", "SET GLOBAL gtid_slave_pos = ''")
    )
    try:
        ctl.wait(lambda: ctl.of("decision", rule="Nothing"), 30, "a healthy cluster")
        await sql(fresh_sandbox, "node3", "STOP SLAVE", then=("RESET SLAVE ALL", *more))
        left = ctl.wait(lambda: ctl.of("decision", rule=rule), 30, "the node left alone")
        ctl.wait(
            lambda: any(
                "problems stand" in d["reason"] for d in ctl.of("decision", rule="Nothing")
            ),
            30,
            "the next decisions",
        )
        await asyncio.sleep(2)  # more decisions: no second alert, no rejoin
    finally:
        ctl.stop()
    assert left[0]["reason"].startswith(
        "node3 is read-only and replicates from nobody while node1 is the primary"
    ), left[0]["reason"]
    assert len(ctl.of("alert", node="node3", kind=kind)) == 1, ctl.of("alert")
    assert not ctl.of("decision", rule="RejoinDetached")
    assert await replica_status(fresh_sandbox, "node3") == {}  # still detached
    if held == "empty":
        position = await sql(fresh_sandbox, "node3", "SELECT @@gtid_current_pos")
        assert position[0][0] == ""


async def test_a_switchover_cut_after_its_fence_is_rolled_back_by_the_restarted_leader(
    fresh_sandbox,
):
    """A fleet of one: the switchover node1 -> node2 is cut after its Fence (node1 read-only,
    drained; nobody writable). Restarted, the leader rolls it back as a single instance does:
    node1 writable and the writer again (it used to stay read-only: no writer until an
    operator acted)."""
    from hacontrol.service import build_router
    from hacontrol.settings import load_settings

    info = fresh_sandbox.status()
    router = build_router(load_settings(info.settings).settings)
    assert router is not None
    _, env, first = switchover_crashed_after(info.settings, "Fence")
    assert first.of("fault_injected", after="Fence")
    assert (await sql(fresh_sandbox, "node1", "SELECT @@read_only"))[0][0] == 1

    second = Process(info.settings, env)
    try:
        done = second.wait(lambda: second.of("plan_finished", kind="rollback"), 60, "a rollback")
        second.wait(lambda: second.of("decision", rule="Nothing"), 60, "converged")
    finally:
        second.stop()
    assert done[0]["ok"], done[0]["reason"]
    assert not second.of("plan_abandoned")
    assert (await router.read()).writers == {"node1"}
    roles = await fresh_sandbox.live_roles()
    assert roles == {"node1": "primary", "node2": "replica", "node3": "replica"}, roles
    assert (await sql(fresh_sandbox, "node1", "SELECT @@read_only"))[0][0] == 0


async def test_a_switchover_cut_inside_its_promote_waits_for_its_unread_candidate(fresh_sandbox):
    """A single instance: the switchover node1 -> node2 cut inside its Promote after node2 was
    made writable (its journal step removed: the crash landed before it was written); at the
    restart node2 cannot be read (frozen). Rolled back blind, node1 was made writable beside it
    (second review, HIGH); a guarded rollback stopped silently. The plan waits for node2 with
    one halt alert, node1 stays read-only, and once node2 answers the switchover is finished."""
    info = fresh_sandbox.status()
    single = {"HACONTROL_CONTROLLER__FLEET": "false"}
    journal, env, _ = switchover_crashed_after(info.settings, "Promote", single)
    as_cut_inside_the_promote(journal)
    assert (await sql(fresh_sandbox, "node2", "SELECT @@read_only"))[0][0] == 0
    assert (await sql(fresh_sandbox, "node1", "SELECT @@read_only"))[0][0] == 1

    async def read_only_of_node1() -> int:
        return (await sql(fresh_sandbox, "node1", "SELECT @@read_only"))[0][0]

    # node2 frozen before the restart reads it; node1 read while it stays frozen.
    second, waits, done, node1_read_only = await restarted_beside_frozen(
        fresh_sandbox, env, "node2", "switchover", pause=2, meanwhile=read_only_of_node1
    )
    assert node1_read_only == 1  # never two writers
    assert not [a for a in second.of("action") if a["action"] == "SetWritable"]
    assert "node2 cannot be read: it may be writable" in waits[0]["reason"], waits[0]
    assert len(second.of("alert", node="node2", kind="halt")) == 1, second.of("alert")
    assert done[0]["ok"], done[0]["reason"]
    roles = await fresh_sandbox.live_roles()
    assert roles == {"node1": "replica", "node2": "primary", "node3": "replica"}, roles


async def test_a_fleet_waits_for_a_candidate_it_cannot_read_instead_of_failing_over_past_it(
    tmp_path,
):
    """Five nodes, a fleet of one (the default), semi-sync with a fallback timeout: the
    failover is cut after node2's read_only=OFF (its journal step removed), node2 frozen at the
    restart. The plan used to be closed and the next failover promoted another replica beside
    the writable node2 (two writers once it thawed). Now the leader waits for node2 (one halt
    alert) and finishes the promotion once it answers: one writer."""
    from tests.sandbox_fixtures import running_sandbox

    with running_sandbox(tmp_path / "sbx", nodes=5) as sandbox:
        await sql(sandbox, "node1", "SET GLOBAL rpl_semi_sync_master_timeout = 1000")
        journal, env, first = crashed_after_promote(sandbox)
        promoted = next(a for a in first.of("action") if a["action"] == "Promote")["node"]
        assert (await sql(sandbox, promoted, "SELECT @@read_only"))[0][0] == 0
        as_cut_inside_the_promote(journal)
        second, _, done, _ = await restarted_beside_frozen(
            sandbox, env, promoted, "failover", pause=3
        )
        others = [n for n in ("node2", "node3", "node4", "node5") if n != promoted]
        promotes = [a["node"] for a in second.of("action") if a["action"] == "Promote"]
        assert promotes == [promoted], promotes  # never another replica past it
        assert done[0]["ok"], done[0]["reason"]
        halts = [a for a in second.of("alert") if a.get("kind") == "halt"]
        assert [a["node"] for a in halts] == [promoted], halts
        writable = [
            n
            for n in (promoted, *others)
            if (await sql(sandbox, n, "SELECT @@read_only"))[0][0] == 0
        ]
        assert writable == [promoted], writable
