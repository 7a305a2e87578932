"""A fleet's leader dies right after its failover's Promote made the candidate writable, and the
candidate is frozen before the next leader acts (five mariadbd, a fleet of two, node1's
semi-sync falling back after 1 s, so nothing makes the failover wait for it).

The next leader finds node3-5's IO threads stopped by that failover and node2 unreadable. It
used to start the IO threads, hear node3-5 testify node1 dead, and promote node3 beside the
writable node2: two writable nodes. Now it changes nothing and alerts until node2 answers; then
it recognises node2 as the primary, publishes it, routes writes to it and repoints the others to
it. "read-once": the next leader read node2 writable once before the freeze (it used to
quarantine node2 as an old primary when its view fell back to node1: after the thaw nothing
was published, the router had no writer, no alert)."""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.fleet import running_fleet
from tests.live import replica_status, sql
from tests.sandbox_fixtures import running_sandbox

pytestmark = pytest.mark.integration

UNREAD = "FailoverUnderWayCandidateUnread"


@pytest.mark.parametrize("read_once", [False, True], ids=["frozen-at-once", "read-once"])
async def test_a_new_leader_promotes_nobody_beside_a_frozen_half_promoted_candidate(
    tmp_path, read_once
):
    with running_sandbox(tmp_path / "sbx", nodes=5) as sb:
        await sql(sb, "node1", "SET GLOBAL rpl_semi_sync_master_timeout = 1000")
        with running_fleet(sb, tmp_path / "fleet", size=2) as fleet:
            c1 = fleet.start("c1", HACONTROL_TEST_CRASH_AFTER="Promote")
            fleet.wait(lambda: fleet.leaders() == ["c1"], 30, "c1 leads")
            c2 = fleet.start("c2")
            for m in (c1, c2):
                fleet.wait(lambda m=m: m.of("decision", rule="Nothing"), 40, f"{m.name} quiet")
            sb.kill_node("node1", signal.SIGKILL)
            fleet.wait(lambda: c1.process.proc.poll() is not None, 40, "c1's crash after Promote")
            candidate = next(a for a in c1.of("action") if a["action"] == "Promote")["node"]
            if read_once:  # c2 reads the candidate writable (a follower still) before the freeze
                seen = {"node": "node1", "new_primary": candidate}
                fleet.wait(lambda: c2.of("failover_seen", **seen), 20, "c2 reads it writable")
            sb.kill_node(candidate, signal.SIGSTOP)
            try:
                fleet.wait(lambda: c2.of("decision", rule=UNREAD), 45, "c2 holds, alerted")
                await asyncio.sleep(3)  # well past detection: nothing may change meanwhile
                assert not c2.of("plan_started", kind="failover"), c2.of("plan_started")
                assert not c2.of("plan_started", rule="ReplicaIOStopped")
                alerts = [a for a in c2.of("alert") if "a node unread" in a.get("summary", "")]
                assert alerts and f"maintenance {candidate} on" in alerts[0]["reason"], alerts
            finally:
                sb.kill_node(candidate, signal.SIGCONT)
            others = [n for n in ("node2", "node3", "node4", "node5") if n != candidate]

            async def one_writer() -> bool:
                ro = {n: (await sql(sb, n, "SELECT @@read_only"))[0][0] for n in others}
                return all(int(v) == 1 for v in ro.values())

            fleet.wait(lambda: c2.of("plan_finished", ok=True), 45, "c2 acts after the thaw")
            assert await one_writer(), "a second writable node"
            assert int((await sql(sb, candidate, "SELECT @@read_only"))[0][0]) == 0
            published = {"rule": "PublishPrimary", "ok": True}
            fleet.wait(lambda: c2.of("plan_finished", **published), 45, "c2 publishes it")
            port = sb.status().node(candidate).port
            for _ in range(300):  # every replica follows it, and writes go to it
                following = [n for n in others if await follows(sb, n, port)]
                if following == others and await c2.writers() == {candidate}:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail(f"after the thaw: {following} follow {candidate}\n{fleet.story()}")
            assert await one_writer(), "a second writable node"
            print(
                f"\nc2 held: {[d['reason'][:160] for d in c2.of('decision', rule=UNREAD)][:1]}; "
                f"after the thaw: {[(p['rule'], p.get('ok')) for p in c2.of('plan_finished')]}"
            )


async def follows(sb, node: str, port: int) -> bool:
    """``node`` replicates from the server on ``port``, its IO thread connected."""
    status = await replica_status(sb, node)
    return status.get("Master_Port") == port and status.get("Slave_IO_Running") == "Yes"
