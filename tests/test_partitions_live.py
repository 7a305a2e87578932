"""Real network faults on a sandbox with hosts of its own (``sandbox up --netns``): every node,
the router and the controller in a network namespace of its own, cut from each other or
degraded on the sandbox's bridge. The controller runs in-process on the controller's host; the
application writes through the router's unix socket (an application next to its ProxySQL).

Root only (network namespaces): skipped with the reason otherwise. Behaviour with generous
timeouts; the timings are the drill's (``hacontrol drill --fault partition-primary`` ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from hacontrol.sandbox import Sandbox
from hacontrol.sandbox.netns import CONTROLLER_HOST, ROUTER_HOST, NetworkError
from hacontrol.sandbox.netns_host import Network
from hacontrol.service import Runtime
from hacontrol.view import Code, Health
from tests.live import LogCapture, WriteLoop, healthy_and_idle, runtime, sandbox_settings, sql
from tests.support import cancel_and_wait, eventually

pytestmark = pytest.mark.integration

REPLICAS_AND_ROUTER = ("node2", "node3", ROUTER_HOST)


@contextlib.asynccontextmanager
async def controller(
    sandbox: Sandbox, **failover: Any
) -> AsyncIterator[tuple[Runtime, LogCapture]]:
    """The controller in-process on its own host, with fast probes, healthy and idle."""
    network = sandbox.network()
    with network.entered(CONTROLLER_HOST):
        settings = sandbox_settings(sandbox, **failover)
        rt, capture = runtime(settings)
        async with rt:
            await healthy_and_idle(rt, timeout=30)
            yield rt, capture


class Sampler:
    """The router's writer group read from the router itself every 50 ms (not the controller's
    view of it, which lags by a router probe), while a test runs."""

    def __init__(self, rt: Runtime) -> None:
        assert rt.router is not None
        self.router = rt.router
        self.writers: list[tuple[float, frozenset[str]]] = []
        self._task = asyncio.create_task(self._run(), name="sampler")

    async def _run(self) -> None:
        while True:
            asked = time.monotonic()
            with contextlib.suppress(Exception):  # a router that does not answer: no sample
                membership = await self.router.read()
                self.writers.append((asked, frozenset(membership.writers)))
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def writers_since(self, at: float) -> set[frozenset[str]]:
        return {w for t, w in self.writers if t >= at}


def plans(capture: LogCapture, since: float, kind: str | None = None) -> list[dict[str, Any]]:
    return [
        r
        for r in capture.of("plan_started")
        if r["_mono"] >= since and (kind is None or r["kind"] == kind)
    ]


def finished_failover(capture: LogCapture) -> Callable[[], list[dict[str, Any]]]:
    return lambda: [r for r in capture.of("plan_finished") if r["kind"] == "failover"]


async def ids_on(sandbox: Sandbox, node: str) -> set[int]:
    return {row[0] for row in await sql(sandbox, node, "SELECT id FROM app.writes")}


async def read_only(sandbox: Sandbox, node: str) -> bool:
    return bool((await sql(sandbox, node, "SELECT @@read_only"))[0][0])


def converged(rt: Runtime) -> bool:
    """One primary, the router's writer; every other node its healthy replica and a reader, or
    held in quarantine with its errant GTIDs named (and nothing else wrong); no plan running."""
    view, state = rt.controller.view, rt.controller.state
    primary = view.primary
    held = {n for n, q in state.quarantined.items() if q.errant}
    membership = view.router.membership
    healthy = {n for n in view.nodes if n not in held and view.nodes[n].health is Health.HEALTHY}
    return (
        rt.controller.running_plan is None
        and primary is not None
        and not [p for p in view.problems if p.node not in held]
        and all(view.sources.get(n) == primary for n in view.nodes if n not in (primary, *held))
        and membership is not None
        and set(membership.writers) == {primary}
        and set(membership.readers) == healthy
    )


def settled_old_primary(rt: Runtime, new: str) -> bool:
    """The old primary is back, read-only, and either a replica of the new primary or held in
    quarantine with its errant GTIDs named; no plan running."""
    view, state = rt.controller.view, rt.controller.state
    quarantine = state.quarantined.get("node1")
    return (
        rt.controller.running_plan is None
        and view.nodes["node1"].health is not Health.UNREACHABLE
        and "node1" not in view.writable
        and (
            (view.sources.get("node1") == new and quarantine is None)
            or (quarantine is not None and bool(quarantine.errant))
        )
    )


async def test_isolated_primary_fails_over_and_acknowledges_nothing_on_its_side(netns_sandbox):
    sb, network = netns_sandbox, netns_sandbox.network()
    async with controller(sb) as (rt, capture):
        writes = WriteLoop(sb).start()  # through the router
        local = WriteLoop(sb, period=0.05, start_id=9_000_000, target="node1").start()
        sampler = Sampler(rt)
        try:
            await eventually(lambda: len(local.acknowledged) >= 5, 10, "writes on node1's host")
            cut_at = time.monotonic()
            network.partition((("node1",),))  # node1 against every other host
            done = await eventually(finished_failover(capture), 30, "the failover")
            assert done[0]["ok"], done[0]["reason"]
            # The view's primary is what the servers say: the promoted node once probes after
            # the plan have been folded in (plan_finished comes first).
            new = await eventually(
                lambda: (p := rt.controller.view.primary) in ("node2", "node3") and p,
                15,
                "the promoted node as the view's primary",
            )
            resumed = time.monotonic()
            await eventually(lambda: writes.acked_since(resumed) >= 20, 20, "writes on " + new)
            # node1, cut off, acknowledged nothing to the client on its own host.
            assert not [t for t in local.ack_times if t > cut_at + 0.05]
            healed_at = time.monotonic()
            network.heal()
            await eventually(
                lambda: any(
                    r["rule"] == "FenceReturningPrimary" for r in plans(capture, healed_at)
                ),
                30,
                "the old primary fenced",
            )
            await eventually(lambda: settled_old_primary(rt, new), 30, "node1 rejoined or held")
        finally:
            await asyncio.gather(writes.stop(), local.stop(), sampler.stop())
        # Never a writer again: not in the router's writer group from the failover on, and the
        # new primary alone there at the end.
        fenced_at = next(
            a["_mono"] for a in capture.of("action") if a["action"] == "RouteFence" and a["ok"]
        )
        assert not [w for w in sampler.writers_since(fenced_at) if "node1" in w]
        assert sampler.writers[-1][1] == {new}
        assert await read_only(sb, "node1")
        # Nothing acknowledged is lost: through the router, nor on node1's own host.
        present = await ids_on(sb, new)
        assert set(writes.acknowledged) <= present
        assert set(local.acknowledged) <= present
        assert local.errors, "the client on node1's host saw its writes fail or time out"


async def test_controller_isolated_with_the_primary_changes_nothing(netns_sandbox):
    sb, network = netns_sandbox, netns_sandbox.network()
    async with controller(sb) as (rt, capture):
        cut_at = time.monotonic()
        network.partition(((CONTROLLER_HOST, "node1"),))  # the controller alone with the primary
        await eventually(lambda: rt.controller.view.has(Code.NO_QUORUM), 20, "NoQuorum")
        alert = await eventually(
            lambda: [r for r in capture.of("alert") if r.get("kind") == "no_quorum"], 20, "alert"
        )
        await asyncio.sleep(3)  # well past detection: nothing may happen
        network.heal()
        await healthy_and_idle(rt, timeout=30)
    assert "1 of 3 recognized nodes reachable" in alert[0]["reason"]
    # No failover, no fence, nothing on a database node: at most the router's rows, and the
    # primary published again (its user lock, for a fleet's routers) once the link is back.
    changing = [p for p in plans(capture, cut_at) if p["kind"] not in ("route", "publish")]
    assert changing == [], [(p["rule"], p["kind"], p["reason"]) for p in changing]
    touched = [
        a
        for a in capture.of("action")
        if a["_mono"] >= cut_at
        and a["action"] not in ("Route", "Publish", "Notify")  # the alert: no change
    ]
    assert touched == [], touched
    assert rt.controller.view.primary == "node1"
    assert await sb.live_roles() == {"node1": "primary", "node2": "replica", "node3": "replica"}


async def test_controller_cut_off_from_the_primary_alone_alerts_unreachable_primary(
    netns_sandbox,
):
    # Only the controller's link to the primary breaks; the replicas still replicate.
    sb, network = netns_sandbox, netns_sandbox.network()
    async with controller(sb) as (rt, capture):
        cut_at = time.monotonic()
        network.partition(((CONTROLLER_HOST,), ("node1",)))
        alert = await eventually(
            lambda: [r for r in capture.of("alert") if r.get("kind") == "unreachable_primary"],
            20,
            "the UnreachablePrimary alert",
        )
        await asyncio.sleep(3)
        assert not rt.controller.view.has(Code.DEAD_PRIMARY)
        network.heal()
        await healthy_and_idle(rt, timeout=30)
    assert "still replicate from it" in alert[0]["reason"]
    assert plans(capture, cut_at, "failover") == []
    assert rt.controller.view.primary == "node1"


async def test_isolated_replica_leaves_the_readers_and_comes_back(netns_sandbox):
    sb, network = netns_sandbox, netns_sandbox.network()
    async with controller(sb) as (rt, capture):
        cut_at = time.monotonic()
        network.partition((("node3",),))

        def readers() -> frozenset[str]:
            membership = rt.controller.view.router.membership
            return frozenset(membership.readers) if membership else frozenset()

        await eventually(lambda: "node3" not in readers(), 20, "node3 out of the readers")
        assert rt.controller.view.primary == "node1"
        network.heal()
        await eventually(lambda: "node3" in readers(), 30, "node3 back in the readers")
        await healthy_and_idle(rt, timeout=30)
    assert plans(capture, cut_at, "failover") == []
    assert await sb.live_roles() == {"node1": "primary", "node2": "replica", "node3": "replica"}


async def test_flapping_primary_fails_over_once_at_most_without_a_plan_storm(netns_sandbox):
    sb, network = netns_sandbox, netns_sandbox.network()
    async with controller(sb) as (rt, capture):
        writes = WriteLoop(sb, period=0.05).start()
        started = time.monotonic()
        cuts = 0
        try:
            while time.monotonic() - started < 20:  # cut 0.3 to 1.8 s in turn, up 0.3 s
                network.partition((("node1",),))
                await asyncio.sleep(0.3 * (1 + cuts % 6))
                network.heal()
                cuts += 1
                await asyncio.sleep(0.3)
            await eventually(lambda: converged(rt), 90, "a converged cluster")
            settled = time.monotonic()
            await asyncio.sleep(3)  # settled: no plan may start any more
        finally:
            await writes.stop()
    failovers = plans(capture, started, "failover")
    every = plans(capture, started)
    assert len(failovers) <= 1, [f["reason"] for f in failovers]
    assert len(every) <= 20, [p["rule"] for p in every]  # no storm: a handful, not hundreds
    late = plans(capture, settled)
    assert not late, [(p["rule"], p["reason"]) for p in late]
    primary = rt.controller.view.primary
    assert set(writes.acknowledged) <= await ids_on(sb, primary)
    others = {n for n in ("node1", "node2", "node3") if n != primary}
    for node in others:  # each a replica of the primary, or the old one held back with its GTIDs
        q = rt.controller.state.quarantined.get(node)
        assert rt.controller.view.sources.get(node) == primary or (q is not None and q.errant)


def degrade(network: Network, loss: float, delay_ms: float) -> None:
    """The primary's links lose ``loss`` % of their packets and, where the kernel has tc netem,
    carry ``delay_ms`` more each way (without it: the loss alone, said on stderr)."""
    try:
        network.partition((("node1",),), loss=loss, delay_ms=delay_ms)
    except NetworkError as exc:
        if "sch_netem" not in str(exc):
            raise
        print(f"no delay, the loss alone: {exc}", file=sys.stderr)
        network.partition((("node1",),), loss=loss)


async def test_degraded_primary_link_does_not_fail_over(netns_sandbox):
    sb, network = netns_sandbox, netns_sandbox.network()
    async with controller(sb) as (rt, capture):
        writes = WriteLoop(sb, period=0.05).start()
        cut_at = time.monotonic()
        try:
            degrade(network, loss=20, delay_ms=50)  # heavy, yet replication keeps up
            await asyncio.sleep(15)
            assert not rt.controller.view.has(Code.DEAD_PRIMARY)
            network.heal()
            await healthy_and_idle(rt, timeout=30)
        finally:
            await writes.stop()
    assert plans(capture, cut_at, "failover") == []
    assert not [
        p for p in capture.of("problem") if p["_mono"] >= cut_at and p["code"] == "DeadPrimary"
    ]
    assert writes.acked_since(cut_at) > 0
    assert set(writes.acknowledged) <= await ids_on(sb, "node1")
