"""The lease edge on real mariadbd nodes: two instances' keepers on the same nodes, the server
freeing an idle session's locks after W, a killed session, the publication of the primary."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from hacontrol.actions.mysql import ActionError, MySQLActions, _Session
from hacontrol.events import LeaseObserved
from hacontrol.flavors.base import Sql
from hacontrol.model import LeaseMode
from hacontrol.mysqlconn import ColumnCache, endpoint_for, execute, fetch_all, fetch_text
from hacontrol.plan import LEASE_LOST
from hacontrol.probes.lease import LeaseKeeper, LeaseSql, lock_names
from tests.fakes import slow_relay
from tests.live import sandbox_settings, sql
from tests.support import eventually

pytestmark = pytest.mark.integration

NODES = ("node1", "node2", "node3")
WAIT_TIMEOUT = 1


def keeper(sandbox, clock=time.monotonic) -> LeaseKeeper:
    settings = sandbox_settings(sandbox)
    settings = settings.model_copy(
        update={
            "controller": settings.controller.model_copy(update={"fleet": True}),
            "lease": settings.lease.model_copy(
                update={
                    "wait_timeout": WAIT_TIMEOUT,
                    "keepalive": 0.2,
                    "validity": 0.7,
                    "margin": 0.2,
                }
            ),
        }
    )
    return LeaseKeeper(settings, lambda event: None, clock=clock)


async def rounds(k: LeaseKeeper, mode: LeaseMode | None = None) -> dict[str, LeaseObserved]:
    if mode is not None:
        k.set_mode(mode)
    return dict(zip(NODES, await asyncio.gather(*(k.round(n) for n in NODES)), strict=True))


async def nobody_leads(k: LeaseKeeper) -> dict[str, LeaseObserved] | None:
    """A round of ``k`` (holding) when every node answers and none has a leader, else None."""
    seen = await rounds(k, LeaseMode.HOLD)
    return seen if all(e.ok and e.leader is None for e in seen.values()) else None


@pytest.fixture
async def two(sandbox):
    a, b = keeper(sandbox), keeper(sandbox)
    yield a, b
    a.close()
    b.close()


async def test_one_instance_takes_the_locks_and_another_sees_who_holds_them(two):
    a, b = two
    mine = await rounds(a, LeaseMode.ACQUIRE)
    assert all(e.ok and e.leader == e.session for e in mine.values())
    theirs = await rounds(b, LeaseMode.ACQUIRE)  # nothing to take: held
    for node in NODES:
        seen = theirs[node]
        assert seen.ok and seen.leader == mine[node].session != seen.session
        assert seen.holder is not None and seen.holder.startswith("127.0.0.1:")
    a.set_mode(LeaseMode.RELEASE)  # closes the sessions: the server frees the locks at once
    # "At once" is when the server has handled the closed socket: soon, not by a given time.
    await eventually(lambda: nobody_leads(b), 10, "every leader lock free")


async def test_a_keepalive_read_in_one_pass_gives_what_aiomysql_gives(two):
    """The lease session's statements go through the one-pass reader: on a session that sees
    another instance's leader lock and publication, its rows are aiomysql's, and the session
    was opened with ``wait_timeout`` W."""
    a, b = two
    await rounds(a, LeaseMode.ACQUIRE)
    assert (await a.publish("node1", timeout=2)).ok
    seen = await b.round("node1")
    assert seen.ok and seen.leader is not None and seen.primary == seen.leader
    session = b._sessions["node1"]
    assert session.conn is not None and session.sql is not None and session.columns is not None
    conn, statements = session.conn, session.sql
    for text in (statements.read, statements.take_and_read):
        one_pass = await fetch_text(conn, text, session.columns, timeout=2)
        assert one_pass == await fetch_all(conn, text, timeout=2)
        assert one_pass[-1][0]["leader"] == seen.leader and one_pass[-1][0]["holder"]
    (row,) = await execute(conn, "SELECT @@session.wait_timeout AS w", timeout=2)
    assert row["w"] == WAIT_TIMEOUT


async def test_lock_names_are_quoted_by_the_sessions_connection(two):
    """A name that would end the literal stays one literal (names are checked at load too)."""
    a, _ = two
    await a.round("node1")
    conn = a._sessions["node1"].conn
    assert conn is not None
    names = {"leader": "x'); DO SLEEP(3); -- \\", "primary": "y\\'"}
    rendered = LeaseSql.render(names, conn.escape)
    started = time.monotonic()
    (rows,) = await fetch_text(conn, rendered.read, ColumnCache(conn.encoding), timeout=2)
    assert rows == [{"session": rows[0]["session"], "leader": None, "primary_lock": None,
                     "holder": None}]  # fmt: skip
    assert time.monotonic() - started < 2


async def test_the_server_frees_the_locks_of_a_session_idle_for_w(two):
    a, b = two
    taken = await rounds(a, LeaseMode.ACQUIRE)
    await asyncio.sleep(WAIT_TIMEOUT)  # no keepalive: a frozen instance
    # The server closes an idle session once it notices W passed: wait for that, not a slack.
    await eventually(lambda: nobody_leads(b), 10, "the server freeing the idle session's locks")
    again = await rounds(a, LeaseMode.HOLD)  # a's sessions were closed by the server
    assert all(e.session != taken[n].session and e.leader is None for n, e in again.items())


async def test_a_killed_session_is_reported_and_replaced_by_one_that_holds_nothing(two, sandbox):
    a, _ = two
    taken = await rounds(a, LeaseMode.ACQUIRE)
    await sql(sandbox, "node2", f"KILL CONNECTION {taken['node2'].session}")
    broken = await a.round("node2")
    assert not broken.ok and broken.error
    a.set_mode(LeaseMode.HOLD)
    fresh = await a.round("node2")
    assert fresh.ok and fresh.session != taken["node2"].session and fresh.leader is None


async def test_a_publish_cut_by_its_timeout_drops_its_session_and_says_so(two):
    """A publish cut mid-statement closes its connection (the server frees the locks at once):
    the session must not be believed to hold them, and the break is reported, never healed
    quietly by the next keepalive."""
    a, _ = two
    await rounds(a, LeaseMode.ACQUIRE)
    seen: list[LeaseObserved] = []
    a._emit = seen.append
    for timeout in (0.0005, 0.0002, 0.0001, 0.0):  # a quiet machine may answer in 0.5 ms
        session = a._sessions["node1"]
        seen.clear()
        cut = await a.publish("node1", timeout=timeout)
        if not cut.ok:
            break
    assert not cut.ok and "timed out" in cut.reason
    if session.conn is not None:  # cut before its statement went out: intact, still holding
        assert not session.conn.closed and session.holds
    else:  # cut mid-statement: the server freed the locks, and the instance knows and says so
        assert not session.holds and session.id is None
        assert [e.node for e in seen if e.error] == ["node1"], seen
    again = await a.round("node1")
    assert again.ok and again.session is not None


async def test_the_primary_is_published_only_where_the_leader_lock_is_held_and_only_once(two):
    a, b = two
    await rounds(a, LeaseMode.ACQUIRE)
    await rounds(b, LeaseMode.HOLD)
    refused = await b.publish("node1", timeout=2)
    assert not refused.ok and "does not hold the leader lock" in refused.reason
    assert (await a.publish("node1", timeout=2)).ok
    assert (await a.publish("node1", timeout=2)).ok  # again: not a second hold of it
    moved = await a.publish("node2", timeout=2)
    assert moved.ok and "node1" in moved.detail["releasing_on"]

    async def carriers() -> list[str]:
        seen = await rounds(b, LeaseMode.HOLD)
        return [n for n, e in seen.items() if e.primary is not None and e.primary == e.leader]

    # The releases run beside the publication: wait for them to land, not a fixed time.
    async def node2_alone() -> bool:
        return await carriers() == ["node2"]

    await eventually(node2_alone, 10, "the publication held on node2 alone")
    assert await carriers() == ["node2"]  # released on node1 for good, though published twice


async def test_a_statement_is_checked_against_the_lease_after_its_connection_is_reopened(sandbox):
    """The statement guard runs after the (re)connect, right before the write: an action's
    connection closed by an error (an optional statement the server refuses) is reopened for
    the next statement, and a reconnect that outlasts the lease must not send it late."""
    settings = sandbox_settings(sandbox)
    node = settings.node("node1")
    password = settings.mysql.password.get_secret_value() if settings.mysql.password else ""
    delay, name = 0.6, "hacontrol.test.late_statement"
    until = [float("inf")]
    async with slow_relay(node.host, node.port, delay) as port:
        endpoint = endpoint_for(
            "127.0.0.1", port, settings.mysql.user, password, settings.mysql.tls
        )
        session = _Session(endpoint, time.monotonic() + 30, 5.0, lambda: until[0], 0.1)
        try:
            await session.open()
            await session.change(Sql("SET GLOBAL hacontrol_no_such_variable = 1"), optional=True)
            assert session.skipped  # refused by the server: the connection is closed
            until[0] = time.monotonic() + delay / 2  # valid now, expired once reconnected
            with pytest.raises(ActionError) as refused:
                await session.change(Sql("DO GET_LOCK(%s, 0)", (name,)))
            assert refused.value.detail.get(LEASE_LOST), refused.value.reason
            (holder,) = await sql(sandbox, "node1", "SELECT IS_USED_LOCK(%s)", (name,))
            assert holder == (None,), "the statement went out after the lease had ended"
            assert not any(name in step for step in session.steps)
        finally:
            session.close()


async def test_a_lock_taken_while_the_mode_turned_to_release_is_let_go(sandbox):
    """The rules ask to let go (RELEASE) while a take is on the wire: the edge closed only the
    sessions that held a lock at that moment, so the lock that take got was kept, renewed by
    every keepalive, while the rules waited for the edge to close it (stuck in RELEASE, the
    lock never free for anyone)."""
    hooks: list = []

    def clock() -> float:
        while hooks:
            hooks.pop()()
        return time.monotonic()

    a, b = keeper(sandbox, clock), keeper(sandbox)
    try:
        assert (await a.round("node1")).ok  # a session, holding nothing
        a.set_mode(LeaseMode.ACQUIRE)
        hooks.append(lambda: a.set_mode(LeaseMode.RELEASE))  # once the take is decided
        await a.round("node1")
        await a.round("node1")  # a keepalive in RELEASE mode
        seen = await b.round("node1")
        assert seen.ok and seen.leader is None, f"still held by connection {seen.leader}"
    finally:
        a.close()
        b.close()


async def test_a_node_is_made_writable_only_while_this_instances_lease_session_holds_its_lock(
    sandbox,
):
    """A leader paused with its clock (a paused VM: CLOCK_MONOTONIC stops with it) resumes
    believing its lease valid, while the servers freed its locks after W and a new leader
    acts. Making a node writable is the step that makes a second writer: the server itself
    checks, as it runs the statement, that this instance's lease session still holds that
    node's leader lock (the local clock is not trusted for it)."""
    settings = sandbox_settings(sandbox)
    name = lock_names(settings.cluster.name)["leader"]
    holder: list[int] = []
    k = keeper(sandbox)
    actions = MySQLActions(
        settings.model_copy(
            update={"controller": settings.controller.model_copy(update={"fleet": True})}
        ),
        timeout=5,
        lease_fence=lambda node: (name, holder[0]) if node == "node1" and holder else None,
    )
    try:
        taken = await rounds(k, LeaseMode.ACQUIRE)
        await sql(sandbox, "node1", "SET GLOBAL read_only = ON")
        holder.append(taken["node1"].session + 1000)  # a session that is not the holder
        stale = await actions.set_writable("node1", True)
        assert not stale.ok and stale.detail.get(LEASE_LOST), stale.reason
        assert await sql(sandbox, "node1", "SELECT @@global.read_only") == ((1,),)
        holder[0] = taken["node1"].session
        done = await actions.set_writable("node1", True)
        assert done.ok, done.reason
        assert await sql(sandbox, "node1", "SELECT @@global.read_only") == ((0,),)
    finally:
        await sql(sandbox, "node1", "SET GLOBAL read_only = OFF")
        k.close()


async def test_running_keeper_confirms_every_node_each_keepalive_one_round_at_a_time(sandbox):
    """The keeper as it runs: one clock asks every node at once, every K (0.2 s); each node is
    confirmed every K, and the confirmations of a round reach the queue together, in one
    callback of the loop (the decision task wakes once per round, not once per node)."""
    batches: list[list[LeaseObserved]] = []
    open_batch = False

    def close() -> None:
        nonlocal open_batch
        open_batch = False

    def emit(event: LeaseObserved) -> None:  # what one run of the loop's callbacks emits
        nonlocal open_batch
        if not open_batch:
            batches.append([])
            open_batch = True
            asyncio.get_running_loop().call_soon(close)
        batches[-1].append(event)

    k = keeper(sandbox)
    k._emit = emit
    task = asyncio.create_task(k.run())
    try:
        await asyncio.sleep(2.1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    got = [e for batch in batches for e in batch]
    assert all(e.ok for e in got), [e for e in got if not e.ok]
    for node in NODES:
        sent = [e.at for e in got if e.node == node]
        gaps = [b - a for a, b in itertools.pairwise(sent)]
        assert len(sent) >= 8, (node, sent)  # 2.1 s at K 0.2 s: about 10
        assert max(gaps) < 0.2 + 0.15, (node, gaps)  # a generous bound on a busy machine
    rounds = batches[3:-1]  # past the first words (one at a time) and the cut at the end
    whole = [b for b in rounds if sorted(e.node for e in b) == list(NODES)]
    assert len(whole) >= len(rounds) // 2, [[e.node for e in b] for b in batches]
