"""Automatic failover and recovery on a real sandbox: real mariadbd, HAProxy, SMTP; real faults.

Probes every 0.3 s (timeout 0.25 s, threshold 3); replicas' heartbeat 0.5 s, io_stall 1.5 s.
Waits are generous; timings are printed (for the notes), never asserted.
"""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import datetime

import pytest

from hacontrol.actions.notify import MailPolicy
from hacontrol.routing import Membership
from tests.live import (
    MailBox,
    WriteLoop,
    healthy_and_idle,
    runtime,
    sandbox_settings,
    sql,
    with_mail,
)
from tests.sandbox_fixtures import run_sync
from tests.support import eventually

pytestmark = pytest.mark.integration

FAST = {"io_stall": 1.5, "apply_timeout": 10.0, "action_timeout": 3.0}


def fast_settings(sandbox, mail: MailBox | None = None):
    settings = sandbox_settings(sandbox, **FAST)
    return with_mail(settings, mail.port) if mail else settings


def finished(capture, kind: str):
    return [r for r in capture.of("plan_finished") if r["kind"] == kind]


def ts(record) -> float:
    return datetime.fromisoformat(record["ts"]).timestamp()


async def router_membership(rt) -> Membership:
    assert rt.router is not None
    return await rt.router.read()


async def test_kill_primary_under_write_load(fresh_sandbox):
    mail = MailBox().start()
    try:
        rt, capture = runtime(fast_settings(fresh_sandbox, mail))
        async with rt:
            await healthy_and_idle(rt)
            writes = WriteLoop(fresh_sandbox).start()
            await eventually(lambda: len(writes.acknowledged) > 50, 10, "writes flowing")
            killed_at = time.time()
            assert fresh_sandbox.kill_node("node1", signal.SIGKILL)
            done = await eventually(lambda: finished(capture, "failover"), 30, "failover finished")
            assert done[0]["ok"], done[0]["reason"]
            resumed_at = time.monotonic()
            await eventually(
                lambda: writes.acked_since(resumed_at) > 20, 20, "writes succeed again"
            )
            await writes.stop()
            membership = await router_membership(rt)
            promoted = next(r for r in capture.of("plan_started") if r["kind"] == "failover")
            new = "node2" if "promoting node2" in promoted["reason"] else "node3"
            other = "node3" if new == "node2" else "node2"
            # The view follows the servers: the repointed replica's source once a probe after
            # the plan has been folded in.
            await eventually(
                lambda: rt.controller.view.sources.get(other) == new, 15, f"{other} under {new}"
            )
        roles = await fresh_sandbox.live_roles()
        assert roles == {"node1": "unreachable", new: "primary", other: "replica"}
        assert membership.writers == {new}
        assert "node1" in membership.broken and "node1" not in membership.readers
        # Exactly one failover, one failover mail.
        assert len(capture.of("plan_started")) >= 1
        assert len([r for r in capture.of("plan_started") if r["kind"] == "failover"]) == 1
        await eventually(lambda: any("failover" in s for s in mail.subjects()), 10, "failover mail")
        assert sum("failover" in s for s in mail.subjects()) == 1
        body = next(
            b for b, s in zip(mail.bodies(), mail.subjects(), strict=True) if "failover" in s
        )
        assert "candidates" in body and "timings" in body and new in body
        # Every acknowledged write is on the new primary (semi-sync, AFTER_SYNC).
        rows = await sql(fresh_sandbox, new, "SELECT id FROM app.writes WHERE id >= 1000000")
        present = {r[0] for r in rows}
        lost = [i for i in writes.acknowledged if i not in present]
        assert lost == [], f"{len(lost)} acknowledged writes lost: {lost[:10]}"
        # Timings for the notes (not asserted).
        dead = next(r for r in capture.of("problem") if r["code"] == "DeadPrimary")
        print(
            f"\nkill -9 -> DeadPrimary {ts(dead) - killed_at:.3f} s; -> failover finished "
            f"{ts(done[0]) - killed_at:.3f} s (plan {done[0]['seconds']} s); "
            f"acknowledged writes {len(writes.acknowledged)}, lost 0, errors {writes.errors}"
        )
    finally:
        mail.stop()


async def test_frozen_primary_fails_over_then_rejoins_as_reader(fresh_sandbox):
    rt, capture = runtime(fast_settings(fresh_sandbox))
    async with rt:
        await healthy_and_idle(rt)
        assert fresh_sandbox.kill_node("node1", signal.SIGSTOP)
        try:
            done = await eventually(lambda: finished(capture, "failover"), 30, "failover")
            assert done[0]["ok"], done[0]["reason"]
            dead = next(r for r in capture.of("problem") if r["code"] == "DeadPrimary")
            # Confirmed by the replicas: after failure_threshold probes (no replica has a
            # working link), or after one when every replica already lost its link to it.
            reason = dead["reason"]
            assert "has a working link" in reason or "lost its link to it" in reason, reason
        finally:
            assert fresh_sandbox.kill_node("node1", signal.SIGCONT)
        # The promoted node (the view names it once its next probe shows it writable).
        new = next(a["node"] for a in capture.of("action") if a["action"] == "Promote" and a["ok"])
        assert new in ("node2", "node3")
        # The returning old primary is fenced, rejoined and back among the readers.
        await eventually(
            lambda: any(r["rule"] == "FenceReturningPrimary" for r in capture.of("plan_started")),
            20,
            "fence planned",
        )
        await eventually(
            lambda: any(
                r["rule"] == "RejoinOldPrimary" and r["ok"] for r in capture.of("plan_finished")
            ),
            30,
            "rejoined",
        )
        await eventually(
            lambda: "node1" in (rt.controller.view.router.membership or Membership()).readers,
            30,
            "node1 back in readers",
        )
        rows = await sql(fresh_sandbox, "node1", "SELECT @@read_only")
        assert rows[0][0] == 1
        await eventually(
            lambda: rt.controller.view.sources.get("node1") == new, 15, f"node1 under {new}"
        )
    # Once the failover fenced it, the router never sent writes to node1 again. (A router
    # probe in flight when the plan started may still report node1 as the writer: the fence
    # is the plan's first step.)
    fenced_at = next(
        r["_mono"] for r in capture.of("action") if r["action"] == "RouteFence" and r["ok"]
    )
    for change in capture.of("router_membership"):
        if change["_mono"] > fenced_at:
            assert "node1" not in change["to"]["writers"]


@pytest.mark.parametrize("fleet", [False, True], ids=["alone", "fleet"])
async def test_two_of_three_down_changes_nothing(fresh_sandbox, fleet):
    """No node changes without quorum. A lone instance keeps its router's writer; an instance
    of a fleet takes it out (docs/fleet.md: it may be on the small side of a partition)."""
    settings = fast_settings(fresh_sandbox)
    settings = settings.model_copy(
        update={"controller": settings.controller.model_copy(update={"fleet": fleet})}
    )
    rt, capture = runtime(settings)
    async with rt:
        await healthy_and_idle(rt)
        started_before = len(capture.of("plan_started"))
        fresh_sandbox.kill_node("node2", signal.SIGKILL)
        fresh_sandbox.kill_node("node3", signal.SIGKILL)
        await eventually(
            lambda: any(r["rule"] == "NoQuorum" for r in capture.of("decision")),
            15,
            "NoQuorum decision",
        )
        await asyncio.sleep(2)  # a window for a wrong plan: none may start
        if fleet:  # its router change: a plan, NoQuorum's or, once no replica vouches for
            # node1 and nobody publishes it, RouteReconcile's even before quorum is lost
            await eventually(
                lambda: any(
                    r["action"] == "Route" and r["ok"] and "'writers': []" in r["reason"]
                    for r in capture.of("action")
                ),
                15,
                "the fleet instance's router change",
            )
        membership = await router_membership(rt)
    decision = next(r for r in capture.of("decision") if r["rule"] == "NoQuorum")
    # Before quorum was lost, the first dead replica may have left the readers (a router
    # change); once it is lost, only the fleet's router change, and never a failover.
    plans = capture.of("plan_started")[started_before:]
    assert all(p["kind"] == "route" for p in plans), plans
    after = [p for p in plans if p["_mono"] > decision["_mono"]]
    assert {p["rule"] for p in after} <= ({"NoQuorum"} if fleet else set())
    assert "1 of 3 recognized nodes reachable" in decision["reason"]
    assert membership.writers == (set() if fleet else {"node1"})
    assert (await fresh_sandbox.live_roles())["node1"] == "primary"


async def second_writer(settings, sandbox, node: str, *, on: bool) -> None:
    """An operator's mistake behind the controller's back: ``node`` made a writer in the
    router too (``on``), or taken out again."""
    if settings.router.kind == "haproxy":
        from hacontrol.actions.haproxy import SocketTransport

        send = SocketTransport(settings.router.haproxy.socket)
        await send(f"set server writer/{node} state {'ready' if on else 'maint'}")
        return
    import aiomysql

    px = settings.router.proxysql
    port = sandbox.status().node(node).port
    where = f"hostgroup_id = {px.writer_hostgroup} AND hostname = '127.0.0.1' AND port = {port}"
    change = (
        f"INSERT INTO mysql_servers (hostgroup_id, hostname, port) "
        f"VALUES ({px.writer_hostgroup}, '127.0.0.1', {port})"
        if on
        else f"DELETE FROM mysql_servers WHERE {where}"
    )
    conn = await aiomysql.connect(
        host=px.host, port=px.port, user=px.user, password=px.password.get_secret_value()
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute(change)
            await cur.execute("LOAD MYSQL SERVERS TO RUNTIME")
    finally:
        conn.close()


async def test_two_writers_in_the_router_halt_with_one_alert(fresh_sandbox):
    mail = MailBox().start()
    try:
        settings = fast_settings(fresh_sandbox, mail)
        rt, capture = runtime(settings)
        async with rt:
            await healthy_and_idle(rt)
            started = len(capture.of("plan_started"))
            await second_writer(settings, fresh_sandbox, "node2", on=True)
            await eventually(
                lambda: any(r["rule"] == "RouterHasTwoWriters" for r in capture.of("decision")),
                10,
                "halt",
            )
            await asyncio.sleep(2)  # more events, more decisions: still one alert, no change
            assert len(capture.of("plan_started")) == started
            assert rt.controller.state.halt is not None
            await eventually(lambda: len(mail.messages) >= 1, 10, "halt mail")
            await asyncio.sleep(0.5)
            assert [s for s in mail.subjects() if "HALT" in s] == mail.subjects()
            assert len(mail.messages) == 1
            await second_writer(settings, fresh_sandbox, "node2", on=False)
            await eventually(lambda: rt.controller.state.halt is None, 10, "halt cleared")
    finally:
        mail.stop()


async def test_errant_old_primary_is_quarantined_with_the_gtid_in_the_mail(fresh_sandbox):
    mail = MailBox().start()
    try:
        rt, capture = runtime(fast_settings(fresh_sandbox, mail))
        async with rt:
            await healthy_and_idle(rt)
            # node1 keeps semi-sync's fallback to asynchronous (the sandbox's servers never
            # fall back): the replicas stop receiving, a write then lands on node1 alone after
            # the timeout; after a failover it is an errant transaction on node1.
            await sql(fresh_sandbox, "node1", "SET GLOBAL rpl_semi_sync_master_timeout = 200")
            await eventually(
                lambda: rt.controller.view.nodes["node1"].status.semi_sync.source_timeout == 0.2,
                10,
                "the probe reading the new timeout",
            )
            for node in ("node2", "node3"):
                await sql(fresh_sandbox, node, "STOP SLAVE IO_THREAD")
            await sql(fresh_sandbox, "node1", "INSERT INTO app.writes (id, node) VALUES (7, 1)")
            gtid = (await sql(fresh_sandbox, "node1", "SELECT @@gtid_binlog_pos"))[0][0]
            fresh_sandbox.kill_node("node1", signal.SIGKILL)
            # IO threads stopped by an operator testify to nothing; restarted, they fail to
            # reach the dead primary, which confirms it.
            for node in ("node2", "node3"):
                await sql(fresh_sandbox, node, "START SLAVE IO_THREAD")
            done = await eventually(lambda: finished(capture, "failover"), 30, "failover")
            assert done[0]["ok"], done[0]["reason"]
            await asyncio.to_thread(run_sync, lambda: fresh_sandbox.start_node("node1"))
            alert = await eventually(
                lambda: next(
                    (r for r in capture.of("alert") if r.get("kind") == "errant_transactions"), None
                ),
                30,
                "errant alert",
            )
            await asyncio.sleep(1)
            membership = await router_membership(rt)
        seq = gtid.split("-")[-1]
        assert f"0-1-{seq}" in alert["summary"]  # by binlog state: the exact errant GTID
        failover = next(r for r in capture.of("alert") if r.get("kind") == "failover")
        at_risk = failover["sections"]["acknowledged writes at risk"]
        assert "after 0.2 s without an acknowledgement" in at_risk and at_risk in failover["reason"]
        assert "node1" in membership.broken and "node1" not in membership.readers
        assert (await sql(fresh_sandbox, "node1", "SELECT @@read_only"))[0][0] == 1
        assert not any(r["rule"] == "RejoinOldPrimary" for r in capture.of("plan_started"))
        await eventually(lambda: any("errant" in s for s in mail.subjects()), 10, "errant mail")
        body = next(b for b, s in zip(mail.bodies(), mail.subjects(), strict=True) if "errant" in s)
        assert f"0-1-{seq}" in body
    finally:
        mail.stop()


async def test_smtp_down_during_failover_mail_arrives_later(fresh_sandbox):
    mail = MailBox()  # port reserved in the settings, server not started: SMTP is down
    policy = MailPolicy(retry_initial=0.2, retry_max=0.5)
    rt, capture = runtime(fast_settings(fresh_sandbox, mail), mail_policy=policy)
    try:
        async with rt:
            await healthy_and_idle(rt)
            killed = time.monotonic()
            fresh_sandbox.kill_node("node1", signal.SIGKILL)
            done = await eventually(lambda: finished(capture, "failover"), 30, "failover")
            assert done[0]["ok"]
            took = done[0]["_mono"] - killed
            assert capture.of("mail_failed"), "the mail should have failed while SMTP was down"
            mail.start()
            await eventually(
                lambda: any("failover" in s for s in mail.subjects()),
                15,
                "mail delivered after SMTP came back",
            )
        print(f"\nfailover with SMTP down finished {took:.3f} s after the kill")
    finally:
        mail.stop()


async def test_failing_pre_failover_hook_aborts_the_failover_and_the_mail_says_so(
    fresh_sandbox, tmp_path
):
    mail = MailBox().start()
    marker = tmp_path / "on_halt.txt"
    try:
        settings = fast_settings(fresh_sandbox, mail)
        settings = settings.model_copy(
            update={
                "hooks": settings.hooks.model_copy(
                    update={
                        "pre_failover": "sh -c 'echo maintenance window, no failover; exit 3'",
                        "on_halt": f"sh -c 'echo $HACONTROL_KIND $HACONTROL_PHASE > {marker}'",
                        "timeout": 5.0,
                    }
                )
            }
        )
        rt, capture = runtime(settings)
        async with rt:
            await healthy_and_idle(rt)
            fresh_sandbox.kill_node("node1", signal.SIGKILL)
            done = await eventually(lambda: finished(capture, "failover"), 30, "failover attempt")
            assert not done[0]["ok"]
            assert "Hook failed" in done[0]["reason"] and "exited 3" in done[0]["reason"]
            await eventually(
                lambda: any("failover failed" in s for s in mail.subjects()), 10, "the halt mail"
            )
            await eventually(marker.exists, 10, "the on_halt hook")
            membership = await router_membership(rt)
        body = next(
            b for b, s in zip(mail.bodies(), mail.subjects(), strict=True) if "failover failed" in s
        )
        assert "pre_failover hook" in body and "maintenance window, no failover" in body
        assert marker.read_text().split() == ["halt", "on_halt"]
        # Nothing was changed: no promotion, the router untouched.
        roles = await fresh_sandbox.live_roles()
        assert roles == {"node1": "unreachable", "node2": "replica", "node3": "replica"}
        assert membership.writers == {"node1"}
        hook = next(r for r in capture.of("hook_finished") if r["phase"] == "pre_failover")
        assert hook["exit_code"] == 3 and "maintenance window" in hook["output"]
    finally:
        mail.stop()
