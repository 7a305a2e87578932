"""A fleet for real: three ``hacontrol run`` processes, each with its own HAProxy, on one
sandbox of real mariadbd nodes. Exactly one of them ever changes a node; every router follows
the primary the leader publishes. Timings are checked generously; the figures are the drill's.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from hacontrol.drill.report import outage
from tests.fleet import Fleet, Member, running_fleet
from tests.live import NOBODY, acked_after, as_nobody, iptables_available, nobody_dropped, sql
from tests.support import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(fresh_sandbox, tmp_path):
    with running_fleet(fresh_sandbox, tmp_path / "fleet") as f:
        yield f


@pytest.fixture
def nobody_dir():
    """A folder user nobody can reach (pytest's tmp_path is under a folder only root can)."""
    folder = Path(tempfile.mkdtemp(prefix="hacontrol-nobody-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def settled(fleet: Fleet, timeout: float = 20.0) -> str:
    """Wait for one leader that published node1 and a quiet fleet; the leader's name."""
    fleet.wait(lambda: len(fleet.leaders()) == 1, timeout, "one leader")
    (leader,) = fleet.leaders()
    fleet.wait(
        lambda: fleet.member(leader).of("plan_finished", rule="PublishPrimary", ok=True),
        timeout,
        "the primary published",
    )
    for m in fleet.members:
        fleet.wait(lambda m=m: m.of("decision", rule="Nothing"), timeout, f"{m.name} quiet")
    return leader


def status_of(member) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{member.api_port}/status", timeout=5) as r:
        return json.loads(r.read())


async def routed_to(members: list[Member], node: str) -> bool:
    """Every member's router has ``node`` as its one writer."""
    return all([await m.writers() == {node} for m in members])


async def agreeing_status(member: Member, primary: str = "node1") -> dict | None:
    """The fleet part of the member's GET /status once it names ``primary`` as published
    and seen, with its router agreeing (a follower learns it a probe round after the leader
    publishes), else None."""
    fleet = (await asyncio.to_thread(status_of, member))["fleet"]
    seen = fleet["published_primary"] == fleet["view_primary"] == primary
    return fleet if seen and fleet["router_agrees"] else None


async def test_three_instances_started_together_elect_one_leader_and_route_alike(fleet):
    fleet.start_all()
    t0 = time.monotonic()
    leader = settled(fleet)
    took = fleet.member(leader).of("lease", leader=True)[0]
    assert fleet.leaders() == [leader]
    for m in fleet.members:  # nobody else ever led, and no node was changed
        if m.name != leader:
            assert not m.of("lease", leader=True), m.name
        assert m.changes() == [], m.name
    # Each instance routes its own router after it reads the publication: a "Nothing" of a
    # follower may come from a round before that.
    await eventually(lambda: routed_to(fleet.members, "node1"), 20, "every router on node1")
    # The API process of each may start after the lease settled.
    await asyncio.to_thread(fleet.wait, lambda: all(m.of("api_listening") for m in fleet.members),
                            20, "every instance's API listening")  # fmt: skip
    for m in fleet.members:  # what each instance says of itself on GET /status
        fleet_status = await eventually(
            lambda m=m: agreeing_status(m), 20, f"{m.name}'s /status with its router agreeing"
        )
        assert fleet_status["leader"] == (m.name == leader), fleet_status
        assert fleet_status["instance"] == m.name
        if m.name == leader:
            assert set(fleet_status["locks_held"]) >= {"node1", "node2"}
    print(f"leader {leader} elected; quiet {time.monotonic() - t0:.2f} s after start; {took}")


async def test_primary_killed_one_failover_in_the_fleet_and_every_router_follows(fleet):
    fleet.start_all()
    leader = settled(fleet)
    loops = fleet.write_loops(fleet.members)
    await acked_after(loops.values(), time.monotonic(), count=20)  # an outage needs acks before
    killed = time.monotonic()
    fleet.sandbox.kill_node("node1", signal.SIGKILL)
    done = await asyncio.to_thread(
        fleet.wait,
        lambda: fleet.member(leader).of("plan_finished", kind="failover"),
        30,
        "the leader's failover",
    )
    assert done[0]["ok"], done[0]["reason"]
    promoted = next(a for a in fleet.member(leader).of("action") if a["action"] == "Promote")
    new = promoted["node"]

    await eventually(lambda: routed_to(fleet.members, new), 20, f"every router on {new}")
    await acked_after(loops.values(), time.monotonic(), count=20)  # writes on the new primary
    for loop in loops.values():
        await loop.stop()
    # Exactly one failover in the whole fleet, and nobody else touched a node.
    failovers = [(m.name, p) for m in fleet.members for p in m.of("plan_started", kind="failover")]
    assert [name for name, _ in failovers] == [leader]
    for m in fleet.members:
        if m.name != leader:
            assert m.changes() == [] and not m.of("plan_started", kind="publish"), m.name
    present = {row[0] for row in await sql(fleet.sandbox, new, "SELECT id FROM app.writes")}
    report = []
    for name, loop in loops.items():
        lost = sorted(set(loop.acknowledged) - present)
        assert lost == [], f"{name} lost {lost}"
        gap = outage(loop.ack_times, killed)
        assert gap is not None, f"no write through {name}'s router after the kill"
        role = "leader" if name == leader else "follower"
        report.append(f"{name} ({role}): outage {gap:.3f} s, {len(loop.acknowledged)} acked")
    print("; ".join(report))


async def test_leader_killed_a_follower_leads_and_routers_keep_routing(fleet):
    fleet.start_all()
    leader = settled(fleet)
    others = [m for m in fleet.members if m.name != leader]
    loops = fleet.write_loops(others)
    await acked_after(loops.values(), time.monotonic(), count=20)
    killed = fleet.signal(leader, signal.SIGKILL)
    seen: list[dict[str, frozenset[str]]] = []
    deadline = time.monotonic() + 15
    while not [m for m in others if m.leads()]:
        assert time.monotonic() < deadline, "no follower took the lease"
        seen.append({m.name: await m.writers() for m in others})
        await asyncio.sleep(0.05)
    (new,) = [m for m in others if m.leads()]
    took = new.of("lease", leader=True)[-1]["_mono"] - killed
    await asyncio.to_thread(
        fleet.wait,
        lambda: new.of("plan_finished", rule="PublishPrimary", ok=True),
        10,
        "the new leader publishing node1",
    )
    await acked_after(loops.values(), time.monotonic(), count=20)  # still routing after it
    for loop in loops.values():
        await loop.stop()
    assert all(w == {"node1"} for sample in seen for w in sample.values()), seen
    for m in others:
        assert m.changes() == [], m.name  # no node changed through the takeover
    for name, loop in loops.items():
        gap = outage(loop.ack_times, killed)
        assert gap is not None and gap < 1.0, (name, gap, len(loop.ack_times), loop.errors)
    assert took < 5.0, took
    print(f"{new.name} took the lease {took:.3f} s after the leader's SIGKILL")


async def test_frozen_leader_past_w_changes_nothing_when_it_resumes(fleet):
    fleet.start_all()
    leader = settled(fleet)
    old = fleet.member(leader)
    others = [m for m in fleet.members if m.name != leader]
    fleet.signal(leader, signal.SIGSTOP)
    await asyncio.sleep(int(old.env["HACONTROL_LEASE__WAIT_TIMEOUT"]) + 0.5)  # past W
    fleet.sandbox.kill_node("node1", signal.SIGKILL)

    def failed_over():
        return [m for m in others if m.of("plan_finished", kind="failover")]

    (new,) = await asyncio.to_thread(fleet.wait, failed_over, 30, "a follower's failover")
    assert new.of("plan_finished", kind="failover")[0]["ok"]
    promoted = next(a for a in new.of("action") if a["action"] == "Promote")["node"]
    resumed = fleet.signal(leader, signal.SIGCONT)
    await asyncio.to_thread(
        fleet.wait, lambda: old.of("lease", leader=False), 10, "the old leader stepping down"
    )

    await eventually(lambda: routed_to([old], promoted), 15, f"{leader}'s router on {promoted}")
    await asyncio.sleep(1.0)  # a window for a wrong act of the resumed instance: none may come
    after = [r for r in old.records() if r["_mono"] >= resumed]
    acted = [
        r
        for r in after
        if r["event"] in ("action", "rollback_action")
        and r["action"] not in ("Route", "RouteFence")
    ]  # its own router, yes; a node or the lock, never
    assert not acted, [(r["action"], r["node"], r["reason"]) for r in acted]
    assert not [r for r in after if r["event"] == "plan_started" and r["kind"] != "route"]
    assert old.changes() == [] and not old.of("plan_started", kind="failover")
    roles = await fleet.sandbox.live_roles()
    other = next(n for n in ("node2", "node3") if n != promoted)
    assert roles == {"node1": "unreachable", promoted: "primary", other: "replica"}
    source = await sql(fleet.sandbox, other, "SHOW SLAVE STATUS")
    assert source[0][3] == fleet.info.node(promoted).port


@pytest.mark.parametrize("crash_after", ["Promote", "SetIOThreads"])
async def test_leader_killed_in_the_middle_of_a_failover_the_new_leader_converges(
    fleet, crash_after
):
    """After Promote, before Repoint: the new leader recognises the promoted node from the
    live topology, publishes it and repoints the other replica. After the IO threads were
    stopped, before any promotion: it fails over itself."""
    first = fleet.start("c1", HACONTROL_TEST_CRASH_AFTER=crash_after)
    fleet.wait(lambda: first.of("plan_finished", rule="PublishPrimary", ok=True), 20, "c1 leads")
    fleet.start("c2")
    fleet.start("c3")
    assert settled(fleet) == "c1"
    fleet.sandbox.kill_node("node1", signal.SIGKILL)
    assert first.process is not None
    await asyncio.to_thread(
        fleet.wait, lambda: first.process.proc.poll() is not None, 30, "c1's injected crash"
    )
    followers = fleet.members[1:]
    if crash_after == "Promote":
        promoted = next(a for a in first.of("action") if a["action"] == "Promote")["node"]
        other = "node3" if promoted == "node2" else "node2"
        assert (await fleet.sandbox.live_roles())[other] == "replica"  # still on the dead node1

    def converged():
        done = "repoint" if crash_after == "Promote" else "failover"
        return [m for m in followers if m.of("plan_finished", kind=done, ok=True)]

    (new,) = await asyncio.to_thread(fleet.wait, converged, 30, "the new leader converging")
    assert new.leads()
    if crash_after == "Promote":
        assert not new.of("action", action="Promote")  # recognised, not promoted again
    else:
        # The IO threads were stopped on a dead primary: a stopped IO thread testifies nothing
        # whatever error it kept, so the new leader starts them again (the ReplicaIOStopped
        # rule, tests/test_fleet_step.py); failing on the dead node1, they testify.
        promoted = next(a for a in new.of("action") if a["action"] == "Promote")["node"]
        other = "node3" if promoted == "node2" else "node2"
    await asyncio.to_thread(
        fleet.wait,
        lambda: [a for a in new.of("action", action="Publish") if promoted in a["reason"]],
        20,
        f"{new.name} publishing {promoted}",
    )
    await eventually(lambda: routed_to(followers, promoted), 20, f"the routers on {promoted}")
    assert [m.name for m in followers if m.changes()] == [new.name]
    roles = await fleet.sandbox.live_roles()
    assert roles == {"node1": "unreachable", promoted: "primary", other: "replica"}
    source = await sql(fleet.sandbox, other, "SHOW SLAVE STATUS")
    assert source[0][3] == fleet.info.node(promoted).port


def test_leader_cut_off_from_a_majority_steps_down_and_a_follower_leads(fleet, nobody_dir):
    if reason := iptables_available():
        pytest.skip(reason)
    config, secrets = as_nobody(fleet.sandbox, nobody_dir)
    cut = fleet.start("c1", config=config, prefix=NOBODY, **secrets)
    fleet.wait(lambda: cut.of("plan_finished", rule="PublishPrimary", ok=True), 20, "c1 leads")
    fleet.start("c2")
    fleet.start("c3")
    assert settled(fleet) == "c1"
    rules = [nobody_dropped(fleet.info.node(n).port) for n in ("node2", "node3")]
    for rule in rules:
        subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        at = time.monotonic()
        down = fleet.wait(lambda: cut.of("lease", leader=False), 10, "c1 stepping down")
        stepped = down[0]["_mono"] - at
        others = fleet.members[1:]
        fleet.wait(lambda: [m for m in others if m.leads()], 10, "a follower leading")
        took = min(m.of("lease", leader=True)[0]["_mono"] for m in others if m.leads()) - at
        time.sleep(1.0)
    finally:
        for rule in rules:
            subprocess.run(["iptables", "-D", *rule], check=True)
    wait_timeout = int(cut.env["HACONTROL_LEASE__WAIT_TIMEOUT"])
    assert stepped < wait_timeout + 0.5, stepped  # within W (a probe round of slack)
    assert "lost the majority" in down[0]["reason"]
    assert not cut.leads() and len(fleet.leaders()) == 1
    assert all(m.changes() == [] for m in fleet.members)
    print(f"c1 stepped down {stepped:.3f} s after the cut; a follower led {took:.3f} s after it")


async def test_a_node_restarted_loses_its_locks_the_leader_keeps_leading_and_takes_it_back(fleet):
    fleet.start_all()
    leader = fleet.member(settled(fleet))

    def holds(node: str) -> bool:
        lines = leader.of("lock", node=node)
        return bool(lines) and lines[-1]["held"] is True

    fleet.wait(lambda: all(holds(n) for n in ("node1", "node2", "node3")), 10, "every lock held")
    fleet.sandbox.kill_node("node3", signal.SIGKILL)
    await asyncio.to_thread(fleet.wait, lambda: not holds("node3"), 10, "node3's lock gone")
    restarted = time.monotonic()
    await fleet.sandbox.start_node("node3")
    await asyncio.to_thread(fleet.wait, lambda: holds("node3"), 15, "node3's lock taken back")
    back = leader.of("lock", node="node3")[-1]["_mono"] - restarted
    await asyncio.sleep(1.0)
    assert fleet.leaders() == [leader.name]
    assert not leader.of("lease", leader=False)
    for m in fleet.members:
        if m is not leader:
            assert not m.of("lease", leader=True), m.name  # no takeover, false or not
        assert m.changes() == [], m.name
    print(f"the leader took node3's lock back {back:.3f} s after the restart began")


async def test_leader_and_primary_killed_together_a_follower_fails_over(fleet):
    fleet.start_all()
    leader = settled(fleet)
    others = [m for m in fleet.members if m.name != leader]
    loops = fleet.write_loops(others)
    await acked_after(loops.values(), time.monotonic(), count=20)
    killed = fleet.signal(leader, signal.SIGKILL)
    fleet.sandbox.kill_node("node1", signal.SIGKILL)

    def failed_over():
        return [m for m in others if m.of("plan_finished", kind="failover", ok=True)]

    (new,) = await asyncio.to_thread(fleet.wait, failed_over, 30, "a follower's failover")
    promoted = next(a for a in new.of("action") if a["action"] == "Promote")["node"]
    await eventually(lambda: routed_to(others, promoted), 20, f"the routers on {promoted}")
    await acked_after(loops.values(), time.monotonic(), count=20)  # writes on the new primary
    for loop in loops.values():
        await loop.stop()
    present = {row[0] for row in await sql(fleet.sandbox, promoted, "SELECT id FROM app.writes")}
    report = []
    for name, loop in loops.items():
        assert sorted(set(loop.acknowledged) - present) == [], name
        gap = outage(loop.ack_times, killed)
        assert gap is not None, name
        report.append(f"{name}: outage {gap:.3f} s")
    assert [m.name for m in others if m.changes()] == [new.name]
    print("; ".join(report))
