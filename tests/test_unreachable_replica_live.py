"""A replica frozen with the primary (real mariadbd, five nodes, semi-sync that never falls
back): the failover waits for it, halts, and goes on (comparing it) once it answers.

node5 is SIGSTOPped just before node1 is killed: it may hold a write node1 acknowledged to it
alone, so promoting a replica without reading node5 could lose it (rules/doubt.py). Timings
are printed for the notes, never asserted.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from hacontrol.events import OperatorCommand
from hacontrol.sandbox import Sandbox
from tests.live import Frozen, WriteLoop, healthy_and_idle, runtime, sandbox_settings, sql
from tests.sandbox_fixtures import running_sandbox
from tests.support import eventually

pytestmark = pytest.mark.integration

WAIT = 2.0


@pytest.fixture
def five_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("sbx") / "sandbox", nodes=5) as sb:
        yield sb


def failovers(capture) -> list[dict]:
    return [r for r in capture.of("plan_started") if r["kind"] == "failover"]


def rules(capture) -> list[str]:
    return [r["rule"] for r in capture.of("decision")]


@pytest.mark.parametrize("answers", ["within the wait", "after the halt"])
async def test_a_replica_frozen_with_the_primary_holds_the_failover_until_it_answers(
    five_nodes, answers
):
    wait = 10.0 if answers == "within the wait" else WAIT
    settings = sandbox_settings(
        five_nodes, io_stall=1.5, apply_timeout=10.0, wait_unreachable_replica=wait
    )
    rt, capture = runtime(settings)
    with Frozen(five_nodes, "node5") as node5:
        async with rt:
            await healthy_and_idle(rt, timeout=40)
            writes = WriteLoop(five_nodes).start()
            await eventually(lambda: len(writes.acknowledged) > 30, 10, "writes flowing")
            assert node5.freeze()
            killed_at = time.monotonic()
            assert five_nodes.kill_node("node1", signal.SIGKILL)
            await eventually(
                lambda: "WaitUnreachableReplica" in rules(capture), 20, "the failover waits"
            )
            waited_at = time.monotonic()
            halted_at = None
            if answers == "after the halt":
                halted_at = await halts(five_nodes, capture)
            assert not failovers(capture), "a failover started while node5 was frozen"
            # node5 answers: it is read like the others, and the failover goes on by itself.
            assert node5.thaw()
            resumed_at = time.monotonic()
            finished_at = await failover_finished(capture)
            if answers == "within the wait":
                assert "UnreachableReplicaInDoubt" not in rules(capture)
            new = await writing_again(five_nodes, writes)
            # node5 was stopped and repointed like the other replicas.
            await eventually(
                lambda: rt.controller.view.sources.get("node5") == new, 20, "node5 follows " + new
            )
        lost = await missing_on(five_nodes, new, writes)
        assert lost == [], f"{len(lost)} acknowledged writes lost: {lost[:10]}"
        print(
            f"\n{answers}: kill -> wait {waited_at - killed_at:.3f} s; -> halt "
            f"{'-' if halted_at is None else f'{halted_at - killed_at:.3f} s'};"
            f" SIGCONT -> failover finished {finished_at - resumed_at:.3f} s ({new} promoted); "
            f"acknowledged {len(writes.acknowledged)}, lost 0"
        )


async def test_a_restart_during_the_halt_halts_again_and_the_advice_followed_goes_on(five_nodes):
    """The controller restarts while the failover is halted on node5: the restarted one never
    reads node1, and still waits and halts (its replicas are semi-sync replicas); the alert's
    command, run as written, is its consent (journaled) and the failover goes on without
    node5, still frozen."""
    settings = sandbox_settings(
        five_nodes, io_stall=1.5, apply_timeout=10.0, wait_unreachable_replica=WAIT
    )
    with Frozen(five_nodes, "node5") as node5:
        rt, capture = runtime(settings)
        async with rt:
            await healthy_and_idle(rt, timeout=40)
            writes = WriteLoop(five_nodes).start()
            await eventually(lambda: len(writes.acknowledged) > 30, 10, "writes flowing")
            assert node5.freeze()
            assert five_nodes.kill_node("node1", signal.SIGKILL)
            await halts(five_nodes, capture)
        again, capture = runtime(settings)  # the same journal
        async with again:
            started_at = time.monotonic()
            halted_at = await halts(five_nodes, capture)
            halt = next(
                r for r in capture.of("decision") if r["rule"] == "UnreachableReplicaInDoubt"
            )
            assert "node1 was not read since the controller started" in halt["reason"]
            advice = "`hacontrol maintenance node5 on`"
            assert advice in halt["reason"], halt["reason"]
            answer = await again.command(
                OperatorCommand(time.monotonic(), "maintenance", "node5", True)
            )
            assert answer.ok and "consent recorded" in answer.message, answer.message
            consented_at = time.monotonic()
            finished_at = await failover_finished(capture)
            new = await writing_again(five_nodes, writes)
            assert new in ("node2", "node3", "node4")
        lost = await missing_on(five_nodes, new, writes)
        print(  # what node5 alone held is the consented loss: counted, not asserted
            f"\nrestart during the halt: start -> halt {halted_at - started_at:.3f} s; "
            f"consent -> failover finished {finished_at - consented_at:.3f} s ({new} promoted);"
            f" acknowledged {len(writes.acknowledged)}, not on {new}: {len(lost)}"
        )


async def failover_finished(capture) -> float:
    """Until the failover finished, and finished well: when (monotonic)."""
    done = await eventually(
        lambda: [r for r in capture.of("plan_finished") if r["kind"] == "failover"],
        30,
        "failover finished",
    )
    assert done[0]["ok"], done[0]["reason"]
    return time.monotonic()


async def writing_again(sandbox: Sandbox, writes: WriteLoop) -> str:
    """Until writes succeed again (the loop is stopped then): the new primary."""
    after = time.monotonic()
    await eventually(lambda: writes.acked_since(after) > 10, 20, "writes succeed again")
    await writes.stop()
    roles = await sandbox.live_roles()
    return next(n for n, role in roles.items() if role == "primary")


async def missing_on(sandbox: Sandbox, node: str, writes: WriteLoop) -> list[int]:
    """The acknowledged writes ``node`` does not hold."""
    rows = await sql(sandbox, node, "SELECT id FROM app.writes WHERE id >= 1000000")
    present = {r[0] for r in rows}
    return [i for i in writes.acknowledged if i not in present]


async def halts(sandbox: Sandbox, capture) -> float:
    """Until the failover halts on node5; no failover meanwhile, every replica read-only."""
    await eventually(
        lambda: "UnreachableReplicaInDoubt" in rules(capture), 20, "the failover halts"
    )
    halted_at = time.monotonic()
    # No failover meanwhile (the router takes the lost nodes out of the readers): every
    # replica still read-only.
    assert not failovers(capture)
    for node in ("node2", "node3", "node4"):
        rows = await sql(sandbox, node, "SELECT @@read_only")
        assert rows[0][0] == 1, f"{node} writable during the halt"
    halt = next(r for r in capture.of("decision") if r["rule"] == "UnreachableReplicaInDoubt")
    assert "node5" in halt["reason"] and "writes stay down" in halt["reason"]
    return halted_at
