"""ProxySQL's own behaviour, on a real ProxySQL in front of the sandbox's real mariadbd nodes.

- the application's traffic: writes to the primary, SELECTs to the replicas (read/write split);
- drain: OFFLINE_SOFT lets a running transaction finish, holds new autocommit writes (a pause,
  not an error), and waits for ConnUsed 0 or the deadline;
- the monitor SHUNNING a dead writer before and after the controller moves it: ``read()``
  reports what ProxySQL will route, and the controller converges without fighting it;
- a replication hostgroup added by an operator later: the controller refuses to write over it
  (never fights ProxySQL's read_only monitor) until it is removed;
- ProxySQL's admin killed, restarted and frozen in the middle of the controller's applies: never
  two writers in runtime_mysql_servers (sampled every few ms from a second connection), and the
  controller converges when ProxySQL is back;
- what SAVE ... TO DISK leaves after a ProxySQL restart.

All skipped, with how to get ProxySQL, when no ``proxysql`` is on PATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator

import aiomysql
import pytest

from hacontrol.actions.proxysql import ProxySQLRouter
from hacontrol.events import OperatorCommand
from hacontrol.routing import Membership
from hacontrol.sandbox import Sandbox
from tests.live import WriteLoop, healthy_and_idle, runtime, sandbox_settings, sql
from tests.proxysql_real import (
    AdminTap,
    WriterSampler,
    admin_statements,
    pair_sql,
    writers_in,
)
from tests.support import eventually

pytestmark = pytest.mark.integration

ER_OPTION_PREVENTS_STATEMENT = 1290


# ---- helpers ----------------------------------------------------------------------------------


def admin(sandbox: Sandbox, *statements: str) -> list[tuple]:
    """Statements on the sandbox's ProxySQL admin port (blocking); rows of the last."""
    router = sandbox.status().router
    endpoint = (router.host, router.admin_port, "admin", sandbox.password("proxysql"))
    return admin_statements(endpoint, *statements)


def servers(sandbox: Sandbox, table: str = "runtime_mysql_servers") -> set[tuple[int, str, str]]:
    """(hostgroup, node name, status) of the sandbox's nodes in a mysql_servers table."""
    names = {n.port: n.name for n in sandbox.status().nodes}
    rows = admin(sandbox, f"SELECT hostgroup_id, port, status FROM {table}")
    return {(int(g), names[int(p)], str(s)) for g, p, s in rows if int(p) in names}


def managed(sandbox: Sandbox) -> list[tuple[str, int]]:
    return [(n.host, n.port) for n in sandbox.status().nodes]


def router_of(sandbox: Sandbox, timeout: float = 2.0) -> ProxySQLRouter:
    settings = sandbox_settings(sandbox)
    return ProxySQLRouter(
        settings.router.proxysql.model_copy(update={"timeout": timeout}), settings.nodes
    )


def fast(sandbox: Sandbox, **failover):
    return sandbox_settings(sandbox, io_stall=1.5, action_timeout=3.0, **failover)


def through(settings, tap: AdminTap):
    """The settings with the controller's ProxySQL admin connections going through ``tap``."""
    proxysql = settings.router.proxysql.model_copy(
        update={"host": tap.host, "port": tap.port, "timeout": 1.0}
    )
    router = settings.router.model_copy(update={"proxysql": proxysql})
    return settings.model_copy(update={"router": router})


async def query(conn: aiomysql.Connection, statement: str, args=None) -> list[tuple]:
    async with conn.cursor() as cur:
        await cur.execute(statement, args)
        return list(await cur.fetchall())


def unique_id() -> int:
    return time.time_ns() // 1000


ALL = Membership.of(["node1"], ["node1", "node2", "node3"])


# ---- the application's view -------------------------------------------------------------------


async def test_app_writes_land_on_the_primary_and_selects_on_replicas(proxysql_sandbox):
    sb = proxysql_sandbox
    info = sb.status()
    row_id = unique_id()
    writer = await sb.connect("writer", "app", db="app")
    try:
        await query(writer, "INSERT INTO writes (id, node) VALUES (%s, 0)", (row_id,))
    finally:
        writer.close()
    served = set()
    for _ in range(30):
        # A new session each time: `SELECT @@server_id` names a variable that is not in
        # mysql-keep_multiplexing_variables, so ProxySQL pins the session to the reader it
        # picked (at random, weight 1 each) for as long as the session lasts.
        conn = await sb.connect("writer", "app", db="app")
        try:
            [(server_id,)] = await query(conn, "SELECT @@server_id")
            served.add(server_id)
        finally:
            conn.close()
    # The insert is on the primary, read directly from it.
    assert await sql(sb, "node1", "SELECT id FROM app.writes WHERE id = %s", (row_id,))
    # Lone SELECTs went to the reader hostgroup: replicas answered (the primary is a reader
    # too, with router.primary_is_reader).
    assert served <= {1, 2, 3} and served & {2, 3}
    digests = admin(
        sb,
        "SELECT hostgroup, digest_text FROM stats_mysql_query_digest "
        "WHERE username = 'app' AND (digest_text LIKE 'INSERT INTO writes%' "
        "OR digest_text LIKE 'SELECT @@server_id%')",
    )
    by_kind = {(text.split()[0], int(hg)) for hg, text in digests}
    assert ("INSERT", 10) in by_kind and ("SELECT", 20) in by_kind
    assert ("INSERT", 20) not in by_kind and ("SELECT", 10) not in by_kind
    # ProxySQL's monitor logs in and pings every node without an error.
    errors = admin(
        sb,
        "SELECT hostname, port, ping_error FROM monitor.mysql_server_ping_log "
        "WHERE ping_error IS NOT NULL",
    )
    assert [e for e in errors if int(e[1]) in {n.port for n in info.nodes}] == []
    # Inside a transaction, everything stays on the writer (transaction_persistent).
    writer = await sb.connect("writer", "app", db="app")
    try:
        await query(writer, "START TRANSACTION")
        assert await query(writer, "SELECT @@server_id") == [(1,)]
        await query(writer, "COMMIT")
    finally:
        writer.close()


# ---- drain ------------------------------------------------------------------------------------


async def test_drain_waits_for_the_transaction_and_holds_new_writes(fresh_proxysql_sandbox):
    sb = fresh_proxysql_sandbox
    router = router_of(sb)
    in_tx = await sb.connect("writer", "app", db="app")
    autocommit = await sb.connect("writer", "app", db="app")
    try:
        await query(in_tx, "START TRANSACTION")
        await query(in_tx, "INSERT INTO writes (id, node) VALUES (%s, 1)", (unique_id(),))
        drain = asyncio.create_task(router.drain("node1", timeout=10.0))
        await eventually(
            lambda: "OFFLINE_SOFT" in str(admin(sb, "SELECT status FROM runtime_mysql_servers")),
            15,
            "node1 OFFLINE_SOFT",
        )
        # A new autocommit write finds no writer: ProxySQL holds it, no error.
        held_id = unique_id()
        held = asyncio.create_task(
            query(autocommit, "INSERT INTO writes (id, node) VALUES (%s, 2)", (held_id,))
        )
        await asyncio.sleep(0.5)
        assert not drain.done() and not held.done()
        # The running transaction goes on and commits on node1.
        await query(in_tx, "INSERT INTO writes (id, node) VALUES (%s, 1)", (unique_id(),))
        await query(in_tx, "COMMIT")
        drained = await asyncio.wait_for(drain, 5)
        assert drained.idle and drained.in_use == 0 and 0.5 <= drained.seconds < 5
        assert (10, "node1", "OFFLINE_SOFT") in servers(sb) and (20, "node1", "ONLINE") in servers(
            sb
        )
        assert not held.done()
        # The writer comes back (a switchover would route the new primary here): the held
        # write goes through, without an error.
        started = time.monotonic()
        assert await router.apply(ALL) is True
        await asyncio.wait_for(held, 15)
        print(f"\nheld write released {time.monotonic() - started:.3f} s after the apply")
        assert await sql(sb, "node1", "SELECT id FROM app.writes WHERE id = %s", (held_id,))
    finally:
        in_tx.close()
        autocommit.close()


async def test_drain_stops_at_the_deadline_for_a_pinned_session(fresh_proxysql_sandbox):
    sb = fresh_proxysql_sandbox
    router = router_of(sb)
    pinned = await sb.connect("writer", "app", db="app")
    try:
        # A user variable disables ProxySQL's multiplexing: the session keeps its backend
        # connection while idle, in no transaction.
        await query(pinned, "SET @pinned = 1")
        await query(pinned, "INSERT INTO writes (id, node) VALUES (%s, @pinned)", (unique_id(),))
        drained = await router.drain("node1", timeout=1.0)
        assert not drained.idle and drained.in_use == 1 and 1.0 <= drained.seconds < 2.0
    finally:
        pinned.close()
    await router.apply(ALL)


# ---- the monitor shunning a dead writer -------------------------------------------------------


async def test_monitor_shuns_the_frozen_writer_before_and_after_the_controller_moves_it(
    fresh_proxysql_sandbox,
):
    sb = fresh_proxysql_sandbox
    rt, capture = runtime(fast(sb), paused=True)  # observe only, until resumed
    async with rt:
        await eventually(lambda: rt.controller.view.router.membership == ALL, 15, "observing")
        assert sb.kill_node("node1", signal.SIGSTOP)
        try:
            # ProxySQL's monitor misses 3 pings of node1 and shuns it in every hostgroup.
            await eventually(
                lambda: {(10, "node1", "SHUNNED"), (20, "node1", "SHUNNED")} <= servers(sb),
                15,
                "node1 SHUNNED by ProxySQL's monitor",
            )
            shunned_at = time.monotonic()
            # A shunned writer is still the writer: ProxySQL routes to it again as soon as it
            # answers. read() says so; nothing was moved yet.
            assert await rt.router.read() == ALL
            await eventually(
                lambda: any(
                    r["_mono"] > shunned_at and r["membership"]["writers"] == ["node1"]
                    for r in capture.of("router_probe")
                ),
                5,
                "the router probe after the shun",
            )
            assert not capture.of("plan_started")
            # The controller moves it: the failover's rows show through the shun.
            await rt.command(OperatorCommand(time.monotonic(), "resume"))
            done = await eventually(
                lambda: [r for r in capture.of("plan_finished") if r["kind"] == "failover"],
                30,
                "failover",
            )
            assert done[0]["ok"], done[0]["reason"]
            moved = await rt.router.read()
            new = moved.writer
            assert new in ("node2", "node3") and "node1" in moved.broken
            assert "node1" not in moved.readers
            # node1's new row in the broken hostgroup gets shunned too: still read as broken.
            await eventually(
                lambda: (30, "node1", "SHUNNED") in servers(sb), 15, "node1 shunned in 30"
            )
            now = await rt.router.read()
            assert now.writer == new and "node1" in now.broken and "node1" not in now.readers
        finally:
            sb.kill_node("node1", signal.SIGCONT)
        # Back: fenced, rejoined as a replica, routed as a reader again; no RouterError loop.
        await eventually(
            lambda: "node1" in (rt.controller.view.router.membership or Membership()).readers,
            60,
            "node1 back in the readers",
        )
        await healthy_and_idle(rt, 30)
        assert await rt.router.read() == Membership.of([new], ["node1", "node2", "node3"])
        failed = [r for r in capture.of("plan_finished") if not r["ok"]]
        assert failed == [], failed


# ---- an operator adds a replication hostgroup later -------------------------------------------


async def test_a_replication_hostgroup_added_later_is_never_fought_over(fresh_proxysql_sandbox):
    sb = fresh_proxysql_sandbox
    rt, capture = runtime(fast(sb))
    async with rt:
        await healthy_and_idle(rt)
        admin(sb, pair_sql(10, 20), "LOAD MYSQL SERVERS TO RUNTIME")
        await eventually(
            lambda: any(p["code"] == "RouterConflict" for p in capture.of("problem")),
            10,
            "RouterConflict",
        )
        # The probe's one-connection read says what the two separate calls say.
        assert await rt.router.probe() == (await rt.router.read(), await rt.router.conflicts())
        sent = len(rt.router.statements_sent)
        # A routing change is now due: node3 dies and should leave the readers.
        assert sb.kill_node("node3", signal.SIGKILL)
        refused = await eventually(
            lambda: [
                r
                for r in capture.of("plan_finished")
                if r["kind"] == "route" and not r["ok"] and "monitor routes" in r["reason"]
            ],
            20,
            "the route refused",
        )
        await asyncio.sleep(2)  # retried, refused again: still not one statement sent
        assert len(rt.router.statements_sent) == sent
        assert "mysql_replication_hostgroups writer_hostgroup=10" in refused[0]["reason"]
        # The operator removes it: the controller routes at once.
        admin(
            sb,
            "DELETE FROM mysql_replication_hostgroups",
            "LOAD MYSQL SERVERS TO RUNTIME",
            "SAVE MYSQL SERVERS TO DISK",
        )
        await eventually(
            lambda: any(r["code"] == "RouterConflict" for r in capture.of("problem_cleared")),
            10,
            "conflict cleared",
        )
        await eventually(
            lambda: "node3" not in (rt.controller.view.router.membership or Membership()).readers,
            15,
            "node3 out of the readers",
        )
    assert len(rt.router.statements_sent) > sent


# ---- ProxySQL's admin killed, restarted, frozen during the controller's applies ----------------


@contextlib.asynccontextmanager
async def tapped(sb: Sandbox) -> AsyncIterator[tuple[AdminTap, WriterSampler]]:
    """The sandbox's ProxySQL admin behind a tap, its writer hostgroup sampled all along; both
    stopped at the end."""
    info = sb.status().router
    tap = await AdminTap((info.host, info.admin_port)).start()
    sampler = WriterSampler(
        info.host, info.admin_port, "admin", sb.password("proxysql"), managed(sb)
    ).start()
    try:
        yield tap, sampler
    finally:
        await sampler.stop()
        await tap.stop()


async def test_proxysql_killed_and_frozen_mid_apply_never_two_writers_and_converges(
    fresh_proxysql_sandbox,
):
    sb = fresh_proxysql_sandbox
    port = {n.name: n.port for n in sb.status().nodes}
    # An operator left node2 as the writer (memory, runtime and disk): the controller will move
    # the writer back to node1, the primary. Each apply is cut once by a fault.
    admin(
        sb,
        f"UPDATE mysql_servers SET port = {port['node2']} WHERE hostgroup_id = 10",
        "LOAD MYSQL SERVERS TO RUNTIME",
        "SAVE MYSQL SERVERS TO DISK",
    )
    async with tapped(sb) as (tap, sampler):
        faults: list[str] = []

        async def fault(sql_text: str, previous: str | None) -> None:
            if previous is None:
                return
            if not faults and previous.startswith(
                "DELETE FROM mysql_servers WHERE hostgroup_id = 10"
            ):
                faults.append("kill")  # node2's writer row deleted, not loaded yet
                assert await asyncio.to_thread(sb.kill_router, signal.SIGKILL)
            elif faults == ["kill", "restarted"] and previous == "LOAD MYSQL SERVERS TO RUNTIME":
                faults.append("freeze")  # the old writer loaded away, the new one not yet
                assert sb.kill_router(signal.SIGSTOP)
                asyncio.get_running_loop().call_later(3.0, sb.kill_router, signal.SIGCONT)

        tap.hooks.append(fault)
        rt, capture = runtime(through(fast(sb), tap))
        async with rt:
            await eventually(lambda: faults == ["kill"], 15, "the kill mid-apply")
            await eventually(
                lambda: any(p["code"] == "RouterUnreachable" for p in capture.of("problem")),
                10,
                "RouterUnreachable",
            )
            faults.append("restarted")  # arms the freeze for the next apply
            # From proxysql.db: node2 the writer again (stale), as the router probe reads it
            # before the controller moves it once more.
            await restart_with_stale_writer(sb, capture, sampler, tap, "node2")
            await eventually(lambda: "freeze" in faults, 20, "the freeze mid-apply")
            await eventually(lambda: rt.controller.view.router.membership == ALL, 30, "converged")
            await healthy_and_idle(rt)
        failed = [r for r in capture.of("plan_finished") if r["kind"] == "route" and not r["ok"]]
        assert len(failed) >= 2  # one apply cut by the kill, one by the freeze
    assert faults == ["kill", "restarted", "freeze"]
    assert writers_in(await runtime_of(sb), managed(sb)) == [("127.0.0.1", port["node1"], "ONLINE")]
    print(f"\n{len(sampler.samples)} samples of the writer hostgroup, {sampler.failures} failed")
    assert len(sampler.samples) > 200
    assert sampler.with_two_writers() == []
    # What was saved to disk is what a restart comes back with, before anyone touches it.
    assert sb.kill_router(signal.SIGKILL)
    await sb.start_router()
    assert servers(sb) == servers(sb, "disk.mysql_servers") == servers(sb, "mysql_servers")
    assert {(g, n) for g, n, _ in servers(sb)} == {
        (10, "node1"),
        (20, "node1"),
        (20, "node2"),
        (20, "node3"),
    }


def kill_after_the_promotion(sandbox: Sandbox, capture, killed: list[float], disk_rows=None):
    """A tap hook: once the controller logged a successful Promote, before the next admin
    statement, ProxySQL is killed (``disk_rows`` planted on its disk first, when given)."""

    async def hook(sql_text: str, previous: str | None) -> None:
        promoted = any(a["action"] == "Promote" and a["ok"] for a in capture.of("action"))
        if not promoted or killed:
            return
        killed.append(time.monotonic())
        if disk_rows is not None:
            plant = [
                f"INSERT INTO disk.mysql_servers (hostgroup_id, hostname, port) VALUES "
                f"({g}, '{h}', {p})"
                for g, h, p in disk_rows
            ]
            await asyncio.to_thread(admin, sandbox, "DELETE FROM disk.mysql_servers", *plant)
        assert await asyncio.to_thread(sandbox.kill_router, signal.SIGKILL)

    return hook


async def restart_with_stale_writer(
    sandbox: Sandbox, capture, sampler: WriterSampler, tap: AdminTap, writer: str
) -> None:
    """Start the killed ProxySQL again (from its proxysql.db) and wait until its stale writer
    ``writer`` was seen after the restart. Who sees it first is a race (the router probe, the
    sampler, or the controller's next apply, which then deletes that row once more): any of
    them is proof enough."""
    port = sandbox.status().node(writer).port
    delete = (
        "DELETE FROM mysql_servers WHERE hostgroup_id = 10 AND hostname = '127.0.0.1' "
        f"AND port = {port}"
    )
    deletes = tap.statements.count(delete)
    restarted = time.monotonic()
    await sandbox.start_router()

    def stale_writer_seen() -> bool:
        probed = any(
            r["_mono"] > restarted and r["membership"]["writers"] == [writer]
            for r in capture.of("router_probe")
            if r.get("membership")
        )
        sampled = any(
            t > restarted and any((h, p) == ("127.0.0.1", port) for h, p, _ in found)
            for t, found in sampler.samples
        )
        return probed or sampled or tap.statements.count(delete) > deletes

    await eventually(stale_writer_seen, 20, f"the stale writer {writer} seen after the restart")


async def runtime_of(sandbox: Sandbox) -> list[tuple[int, str, int, str]]:
    rows = await asyncio.to_thread(
        admin, sandbox, "SELECT hostgroup_id, hostname, port, status FROM runtime_mysql_servers"
    )
    return [(int(g), str(h), int(p), str(s)) for g, h, p, s in rows]


# ---- SAVE TO DISK across a restart, after a failover -------------------------------------------


async def test_a_failover_is_on_disk_when_proxysql_restarts(fresh_proxysql_sandbox):
    sb = fresh_proxysql_sandbox
    rt, capture = runtime(fast(sb))
    async with rt:
        await healthy_and_idle(rt)
        assert sb.kill_node("node1", signal.SIGKILL)
        done = await eventually(
            lambda: [r for r in capture.of("plan_finished") if r["kind"] == "failover"],
            30,
            "failover",
        )
        assert done[0]["ok"], done[0]["reason"]
        others = {"node2", "node3"}
        await eventually(
            lambda: (
                rt.controller.view.router.membership.readers == others
                and rt.controller.running_plan is None
                and rt.controller.decisions[-1]["rule"] == "Nothing"
            ),
            30,
            "routed and settled",
        )
        after = await rt.router.read()
    # The controller is stopped: whatever comes back after the restart is ProxySQL's own.
    router = router_of(sb)
    membership, _ = await router.probe()
    kept = router.link.session.connection
    assert (await router.probe())[0] == membership and router.link.session.connection is kept
    assert sb.kill_router(signal.SIGKILL)
    await sb.start_router()
    assert await router.read() == after
    # The probe's kept connection died with it: the next probe opens another, and succeeds.
    assert (await router.probe())[0] == after and router.link.session.connection is not kept
    await router.close()
    assert after.writer in ("node2", "node3") and "node1" in after.broken
    assert servers(sb, "disk.mysql_servers") == servers(sb, "mysql_servers")
    # And the controller, started again, finds nothing to change.
    rt, capture = runtime(fast(sb), acknowledge_block=True)
    async with rt:
        await eventually(lambda: rt.controller.decisions, 15, "a decision")
        await asyncio.sleep(1.5)
        assert rt.router.statements_sent == []


# ---- an errorless switchover: drain instead of cut --------------------------------------------


DRAIN_DEADLINE = 4.0


async def test_switchover_drains_running_transactions_and_holds_autocommit_writes(
    fresh_proxysql_sandbox,
):
    # The controller's switchover through ProxySQL: an autocommit writer sees a pause and no
    # error; a transaction that commits during the drain commits (on node1, then replicated);
    # a transaction still open at the drain deadline keeps working until then and is ended
    # by the fence only after it.
    sb = fresh_proxysql_sandbox
    # The deadline leaves the test 3 s after it saw the drain begin to commit one transaction
    # and write in the other before the deadline (a loaded machine stalls for a second).
    rt, capture = runtime(fast(sb, drain_timeout=DRAIN_DEADLINE))
    # Every write is held while the drain waits for the long transaction: the client's own
    # timeout must outlast the drain deadline and the switchover after it.
    writes = WriteLoop(sb, statement=WriteLoop.PLAIN, timeout=DRAIN_DEADLINE + 8.0)
    short = await sb.connect("writer", "app", db="app")
    long = await sb.connect("writer", "app", db="app")
    try:
        async with rt:
            await healthy_and_idle(rt)
            writes.start()
            await eventually(lambda: len(writes.acknowledged) > 30, 10, "writes flowing")
            short_id, long_id = unique_id(), unique_id() + 1
            for conn, row in ((short, short_id), (long, long_id)):
                await query(conn, "START TRANSACTION")
                await query(conn, "INSERT INTO writes (id, node) VALUES (%s, 1)", (row,))
            started = time.monotonic()
            switchover = asyncio.create_task(
                rt.command(OperatorCommand(started, "switchover", "node2"))
            )
            await eventually(
                lambda: (10, "node1", "OFFLINE_SOFT") in servers(sb), 15, "node1 drained"
            )
            await query(short, "COMMIT")  # during the drain: commits on node1
            await asyncio.sleep(1.0)
            # Still before the deadline: the long transaction is not cut.
            await query(long, "INSERT INTO writes (id, node) VALUES (%s, 1)", (long_id + 1,))
            assert not switchover.done()
            result = await asyncio.wait_for(switchover, 20)
            assert result.ok, result.message
            drain = next(s for s in result.detail["steps"] if s["action"] == "Drain")
            assert f"deadline of {DRAIN_DEADLINE:g} s passed with 1 still in use" in drain["reason"]
            assert time.monotonic() - started >= DRAIN_DEADLINE
            with pytest.raises(aiomysql.Error):  # the fence ended it, after the deadline
                await query(long, "COMMIT")
            since = time.monotonic()
            await eventually(lambda: writes.acked_since(since) > 20, 10, "writes again")
            await writes.stop()
            assert (await rt.router.read()).writers == {"node2"}
    finally:
        await writes.stop()
        short.close()
        long.close()
    assert writes.errors == {}, writes.errors  # a pause, not an error
    rows = await sql(sb, "node2", "SELECT id FROM app.writes WHERE id >= 1000000")
    present = {r[0] for r in rows}
    assert [i for i in writes.acknowledged if i not in present] == []
    assert short_id in present and long_id not in present
    pause = max(b - a for a, b in zip(writes.ack_times, writes.ack_times[1:], strict=False))
    print(f"\nlongest write pause {pause:.3f} s (drain deadline {DRAIN_DEADLINE} s, one open)")
    assert any(r["action"] == "Drain" for r in capture.of("action"))


# ---- a failover whose Route fails after the promotion -----------------------------------------


async def test_a_failover_whose_router_is_down_after_the_promotion_converges_without_an_ack(
    fresh_proxysql_sandbox,
):
    # kill -9 of node1; right after the promotion, before the Route step, ProxySQL is killed
    # (and its disk left with the pre-failover rows: node1 the writer). The failover is done
    # without the router: no halt, an alert. ProxySQL restarts with the stale writer node1 (dead
    # and quarantined); the routing rule moves the writer to the new primary, no ack needed,
    # never two writers.
    sb = fresh_proxysql_sandbox
    async with tapped(sb) as (tap, sampler):
        stale = admin(sb, "SELECT hostgroup_id, hostname, port FROM disk.mysql_servers")
        rt, capture = runtime(through(fast(sb), tap))
        killed: list[float] = []
        tap.hooks.append(kill_after_the_promotion(sb, capture, killed, stale))
        async with rt:
            await healthy_and_idle(rt)
            assert sb.kill_node("node1", signal.SIGKILL)
            done = await eventually(
                lambda: [r for r in capture.of("plan_finished") if r["kind"] == "failover"],
                30,
                "the failover",
            )
            assert killed, "ProxySQL was not killed after the promotion"
            assert done[0]["ok"], done[0]["reason"]
            steps = [a for a in capture.of("action") if a["plan"] == done[0]["plan"]]
            route = next(a for a in steps if a["action"] == "Route")
            assert not route["ok"] and route["_mono"] > killed[0], route
            assert [a["action"] for a in steps][-3:] == ["Route", "Repoint", "Notify"]
            (alert,) = [r for r in capture.of("alert") if r["kind"] == "router_not_updated"]
            new = alert["node"]
            assert new in ("node2", "node3")
            assert rt.controller.state.halt is None
            assert "node1" in rt.controller.state.quarantined
            await restart_with_stale_writer(sb, capture, sampler, tap, "node1")  # dead, on disk
            await eventually(
                lambda: (
                    rt.controller.view.router.membership is not None
                    and rt.controller.view.router.membership.writers == {new}
                ),
                30,
                f"the router's writer moved to {new} without an ack",
            )
            assert rt.controller.state.halt is None
            reconciled = [d for d in rt.controller.decisions if d["rule"] == "RouteReconcile"]
            assert reconciled
            await sql(
                sb,
                "writer",
                "INSERT INTO app.writes (id, node) VALUES (%s, 0)",
                (unique_id(),),
                role="app",
            )
    assert writers_in(await runtime_of(sb), managed(sb)) == [
        ("127.0.0.1", sb.status().node(new).port, "ONLINE")
    ]
    print(f"\n{len(sampler.samples)} samples of the writer hostgroup, {sampler.failures} failed")
    assert sampler.with_two_writers() == []


async def test_a_switchover_whose_router_is_down_after_the_promotion_finishes_and_converges(
    fresh_proxysql_sandbox,
):
    # ProxySQL killed right after the switchover's promotion: the replicas are repointed and
    # the old primary rejoined all the same; ProxySQL comes back from its disk with node1 (the
    # drain was never saved), fenced and now a replica, as its writer; the routing rule moves
    # the writer to node2 without an operator.
    sb = fresh_proxysql_sandbox
    async with tapped(sb) as (tap, sampler):
        rt, capture = runtime(through(fast(sb), tap))
        killed: list[float] = []
        tap.hooks.append(kill_after_the_promotion(sb, capture, killed))
        async with rt:
            await healthy_and_idle(rt)
            result = await rt.command(OperatorCommand(time.monotonic(), "switchover", "node2"))
            assert result.ok, result.message
            assert killed, "ProxySQL was not killed after the promotion"
            steps = {s["action"]: s for s in result.detail["steps"]}
            assert not steps["Route"]["ok"] and steps["Rejoin"]["ok"] and steps["Repoint"]["ok"]
            (alert,) = [r for r in capture.of("alert") if r["kind"] == "router_not_updated"]
            assert alert["node"] == "node2" and rt.controller.state.halt is None
            roles = await sb.live_roles()
            assert roles == {"node1": "replica", "node2": "primary", "node3": "replica"}
            await restart_with_stale_writer(sb, capture, sampler, tap, "node1")
            await eventually(
                lambda: (
                    rt.controller.view.router.membership is not None
                    and rt.controller.view.router.membership.writers == {"node2"}
                ),
                30,
                "the router's writer moved to node2 without an ack",
            )
            await healthy_and_idle(rt)
    assert writers_in(await runtime_of(sb), managed(sb)) == [
        ("127.0.0.1", sb.status().node("node2").port, "ONLINE")
    ]
    assert sampler.with_two_writers() == []
