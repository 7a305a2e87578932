"""What one cluster's ``Runtime.stop`` ends, against the fake fleet: the background hooks
(``post_failover``, ``on_halt``) are cancelled (their process groups killed) and awaited, or
named in ``left_running`` with the journal kept open until they end (``leftovers_ended``); a
plan keeps what is left of its budget when the decision task dies while it handles the Stop;
``on_halt`` runs for a controller crash; a lease crash halts and restarts its cluster;
``router_probe_busy`` in /status."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import hacontrol.controller as controller_mod
import hacontrol.runtime as runtime_mod
import hacontrol.service as service_mod
from hacontrol.actions.rebuild import Rebuilder, RebuildFailed, _Job
from hacontrol.events import Event, OperatorCommand, Stop
from hacontrol.plan import AlertKind, Notify, Plan, PlanKind
from hacontrol.rebuild_commands import RebuildCommands
from hacontrol.settings import Settings
from tests import factories
from tests.clusters import (
    InjectedBug,
    cluster_settings,
    crash_on_command,
    deciding,
    idle,
    on_one_proxysql,
    slow_promote,
)
from tests.fakefleet import FakeFleet, fleet
from tests.live import LogCapture, runtime, service
from tests.support import eventually


def with_hooks(settings: Settings, **hooks: str) -> Settings:
    return settings.model_copy(update={"hooks": settings.hooks.model_copy(update=hooks)})


def hook_pid(marker: Path) -> int:
    """The pid a ``sleeper`` hook wrote, once it did (0 before)."""
    text = marker.read_text().strip() if marker.exists() else ""
    return int(text) if text else 0


def sleeper(marker: Path) -> str:
    """A hook that writes its pid and its kind, then sleeps a minute (longer than any stop)."""
    return f"sh -c 'echo $$ > {marker}; echo $HACONTROL_KIND > {marker}.kind; exec sleep 60'"


async def stubborn(after_cancel: float) -> None:
    """A background job that goes on ``after_cancel`` s when cancelled."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await asyncio.sleep(after_cancel)
        raise


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: not gone, not a zombie (killed, not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_the_stop_kills_and_awaits_a_background_hook(tmp_path):
    # An on_halt hook still running when the cluster stops (a minute long): the stop kills its
    # process (group) and awaits it; nothing of it outlives the stop.
    marker = tmp_path / "hook.pid"
    async with FakeFleet(fleet([3])) as fake:
        (settings,) = cluster_settings(fake, tmp_path)
        rt, capture = runtime(with_hooks(settings, on_halt=sleeper(marker), timeout=120.0))
        async with rt:
            halt = Notify(AlertKind.HALT, None, "HALT", "test: a halt")
            rt.executor.notify(
                halt, Plan("TwoWritableNodes", "x", kind=PlanKind.HALT), on_halt=True
            )
            pid = await eventually(lambda: hook_pid(marker), 10, "the hook running")
            (hook,) = rt.executor._background  # the hook, as the executor holds it
            await rt.stop("test: stop under a hook")
            assert hook.done() and not rt.executor._background
            assert not alive(pid), f"the hook (pid {pid}) outlived the stop"
    (stopped,) = capture.of("stopped")
    assert stopped["tasks_not_finished"] == [] and rt.left_running == [], stopped
    (killed,) = capture.of("hook_finished")  # the log says it was cut, not left silent
    assert not killed["ok"] and "controller stopped" in killed["killed"], killed


async def test_a_hook_that_outlives_the_stop_is_named_and_its_journal_kept_open(tmp_path):
    # A background job that does not end when cancelled (3 s more): the stop names it in
    # left_running and keeps the journal open; leftovers_ended returns once it ended, then
    # closes the journal.
    async with deciding(tmp_path) as (_, rt, capture):
        rt.executor._in_background(stubborn(3.0), "hook:post_failover")
        await rt.stop("test: stop under a stubborn hook")
        assert rt.left_running == ["hook:post_failover"]
        assert not rt.journal._closed
        assert rt.status()["waiting_for"] == ["hook:post_failover"]
        started = time.monotonic()
        await asyncio.wait_for(rt.leftovers_ended(), 20)
        assert time.monotonic() - started > 0.5  # it waited for the hook
        assert rt.journal._closed and rt.left_running == [] and not rt.executor.background()
    (stopped,) = capture.of("stopped")
    assert stopped["tasks_not_finished"] == ["hook:post_failover"], stopped
    (ended,) = capture.of("leftovers_ended")
    assert ended["ended"] == ["hook:post_failover"], ended


async def test_a_runtime_that_never_started_names_the_hook_its_stop_left(tmp_path):
    # A restart that failed at start-up (never started: no decision task) ran its crash's
    # on_halt hook; one that does not end when killed is named, the journal kept open until
    # it has ended.
    async with FakeFleet(fleet([3])) as fake:
        (settings,) = cluster_settings(fake, tmp_path)
        rt, _ = runtime(settings)
        rt.halted = "crashed (start-up: test)"
        rt.executor._in_background(stubborn(2.0), "hook:on_halt")
        await rt.stop("test: a failed restart", mail_grace=0.1)
        assert rt.left_running == ["hook:on_halt"] and not rt.journal._closed
        await asyncio.wait_for(rt.leftovers_ended(), 20)
        assert rt.journal._closed and rt.left_running == []


async def test_a_stuck_journal_writer_is_waited_for_before_the_journal_is_left(tmp_path):
    # The journal's writer thread hangs on a write (a dead disk) when the cluster stops: the
    # stop names it; leftovers_ended returns only once that write has returned.
    async with deciding(tmp_path) as (_, rt, capture):
        rt.journal.write_timeout = 0.3
        release = threading.Event()
        rt.journal.post(release.wait)  # a write that hangs
        rt.journal.post(rt.journal.save_state, {"paused": True, "mark": "queued behind"})
        try:
            await asyncio.sleep(0.5)  # past its write timeout: stuck
            await rt.stop("test: stop under a stuck journal writer")
            assert rt.left_running == ["journal writer"] and not rt.journal._closed
            ended = asyncio.ensure_future(rt.leftovers_ended(poll=0.1))
            await asyncio.sleep(1.0)
            assert not ended.done()  # the write still hangs
        finally:
            release.set()
        await asyncio.wait_for(ended, 10)
        assert rt.left_running == [] and rt.journal.busy_for() is None
        # Every record queued behind the stuck one is on disk by then (none lands after a
        # fresh Runtime loads the file).
        last = rt.journal.path.read_text().splitlines()[-1]
        assert "queued behind" in last, last
    (stopped,) = capture.of("stopped")
    assert not stopped["journal_flushed"], stopped
    (done,) = capture.of("leftovers_ended")
    assert done["ended"] == ["journal writer"], done


async def test_a_decision_task_that_dies_on_the_stop_leaves_the_plan_its_budget(
    tmp_path, monkeypatch
):
    # A failover runs (its promote takes 8 s, its budget is 3 s) when the stop comes; the
    # decision task raises as it handles the Stop: the plan is not cancelled at once, it gets
    # what is left of its budget, then it is cancelled.
    monkeypatch.setattr(controller_mod, "plan_budget", lambda settings: 3.0)
    monkeypatch.setattr(runtime_mod, "plan_budget", lambda settings: 3.0)
    async with deciding(tmp_path, net_timeout=0.5) as (fake, rt, capture):
        calls: list[str] = []
        slow_promote(rt, 8.0, calls)
        fake.kill("c001n1")
        await eventually(lambda: calls, 20, "the failover promoting")
        handle = rt.controller.handle

        def dies_on_stop(event: Event) -> None:
            if isinstance(event, Stop):
                raise InjectedBug("injected: the Stop broke the decision task")
            handle(event)

        rt.controller.handle = dies_on_stop  # type: ignore[method-assign]
        started = time.monotonic()
        await rt.stop("test: stop under a failover")
        took = time.monotonic() - started
    assert took >= 2.5, took  # the plan's budget (3 s), not an immediate cancel
    assert calls == ["called", "cancelled"]
    (waited,) = capture.of("stop_waits_for_plan")
    assert waited["budget_seconds"] > 2.5, waited
    assert capture.of("stop_cancels_plan")


async def crash_c001_under_an_on_halt_hook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, timeout: float
) -> tuple[LogCapture, float]:
    """Two clusters, c001's on_halt hook ``command`` (``timeout``); c001's decision task
    crashes (its crash mail grace 0.5 s here): the log, and when the fresh c001 started."""
    monkeypatch.setattr(service_mod, "CRASH_MAIL_GRACE", 0.5)
    async with FakeFleet(fleet([3, 3], net_timeout=0.5)) as fake:
        first, second = cluster_settings(fake, tmp_path)
        first = with_hooks(first, on_halt=command, timeout=timeout)
        svc, capture = service(first, second, restart_backoff=0.5)
        async with svc:
            waiting = asyncio.create_task(svc.wait())
            await eventually(lambda: idle(svc), 20, "both clusters healthy and idle")
            old = svc.runtimes["c001"]
            crash_on_command(old)
            await svc.command(OperatorCommand(time.monotonic(), "pause"), "c001")
            await eventually(lambda: svc.runtimes["c001"] is not old, 40, "c001 restarted")
            restarted = time.monotonic()
            assert not old.executor.background()  # nothing of it beside the fresh c001
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
    return capture, restarted


def hook_lines(capture: LogCapture, event: str) -> list[dict[str, Any]]:
    return [r for r in capture.of(event) if r["cluster"] == "c001" and r["phase"] == "on_halt"]


async def test_the_on_halt_hook_of_a_crash_runs_to_its_end_before_the_restart(
    tmp_path, monkeypatch
):
    # A pager that takes 2 s (its timeout 10 s), longer than the crash mail's grace: it runs
    # to its end (paged, hook_finished ok), then the restart comes.
    paged = tmp_path / "paged"
    command = f"sh -c 'sleep 2; echo $HACONTROL_KIND > {paged}'"
    capture, restarted = await crash_c001_under_an_on_halt_hook(
        tmp_path, monkeypatch, command, 10.0
    )
    assert paged.read_text().split() == ["cluster_crashed"]
    (finished_line,) = hook_lines(capture, "hook_finished")
    assert finished_line["ok"] and finished_line["_mono"] < restarted, finished_line


async def test_an_on_halt_hook_past_its_timeout_is_killed_and_logged_before_the_restart(
    tmp_path, monkeypatch
):
    marker = tmp_path / "hook.pid"
    capture, restarted = await crash_c001_under_an_on_halt_hook(
        tmp_path, monkeypatch, sleeper(marker), 1.0
    )
    pid = hook_pid(marker)
    assert pid and not alive(pid), "the old controller's hook runs beside the restarted one"
    assert (tmp_path / "hook.pid.kind").read_text().split() == ["cluster_crashed"]
    (finished_line,) = hook_lines(capture, "hook_finished")
    assert finished_line["timed_out"] and not finished_line["ok"], finished_line
    assert finished_line["_mono"] < restarted, finished_line


async def test_a_lease_crash_halts_its_cluster_which_restarts(tmp_path):
    # Both clusters in fleet mode (one instance here); c001's lease keeper breaks (its emit
    # raises): c001 alone is halted and restarted with a lease keeper of its own; c002 goes on.
    async with FakeFleet(fleet([3, 3], net_timeout=0.5)) as fake:
        clusters = [
            s.model_copy(update={"controller": s.controller.model_copy(update={"fleet": True})})
            for s in cluster_settings(fake, tmp_path)
        ]
        svc, capture = service(*clusters, restart_backoff=0.5)
        async with svc:
            waiting = asyncio.create_task(svc.wait())
            await eventually(lambda: idle(svc), 30, "both clusters deciding")
            old, other = svc.runtimes["c001"], svc.runtimes["c002"]
            assert old.lease is not None

            def broken(event: Event) -> None:
                raise InjectedBug("injected: the lease's emit broke")

            old.lease._emit = broken  # type: ignore[method-assign]
            await eventually(lambda: capture.of("cluster_crashed"), 20, "the crash logged")
            await eventually(lambda: svc.runtimes["c001"] is not old, 20, "c001 restarted")
            fresh = svc.runtimes["c001"]
            await eventually(lambda: fresh.halted is None and fresh.alive()[0], 20, "it runs")
            decided = len(fresh.controller.decisions)
            await eventually(lambda: len(fresh.controller.decisions) > decided, 20, "deciding")
            (lease,) = [t for t in fresh._workers if t.get_name() == "lease"]
            assert not lease.done() and fresh.lease is not old.lease
            assert svc.runtimes["c002"] is other and other.halted is None
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
    (line,) = capture.of("cluster_crashed")
    assert (line["cluster"], line["task"]) == ("c001", "lease"), line
    assert "first InjectedBug: injected: the lease's emit broke" in line["error"], line
    assert any("lease.py" in frame for frame in line["where"]), line
    stopped = [r for r in capture.of("stopped") if r["cluster"] == "c001"]
    assert stopped and stopped[0]["tasks_not_finished"] == [], stopped


async def test_status_says_when_the_router_probe_skips_a_busy_shared_admin(tmp_path):
    # Two clusters on one real ProxySQL: while the shared admin link is held by another call
    # (its lock taken here), each cluster's router probe skips its read and /status says so;
    # once the link is free again the next read runs and ``now`` clears.
    async with on_one_proxysql(tmp_path) as (_, _, _, svc, _):
        await eventually(lambda: idle(svc), 30, "both clusters healthy and idle")
        rt = svc.runtimes["c001"]
        assert "router_probe_busy" not in rt.status()
        link = rt.router.link  # type: ignore[union-attr]
        async with link.lock:
            busy = await eventually(lambda: rt.status().get("router_probe_busy"), 10, "skips")
        assert busy["skipped"] >= 1 and busy["now"], busy
        await eventually(
            lambda: rt.status()["router_probe_busy"]["now"] is None, 10, "a read ran again"
        )
        assert rt.status()["router_probe_busy"]["skipped"] >= 1


async def test_a_node_control_that_hangs_fails_the_rebuild_step_saying_it_timed_out() -> None:
    # The injected node control (the sandbox's) stops a node that never answers: the step fails
    # within its timeout and says so (not an empty "cannot stop node3: ").
    class Hangs:
        async def stop(self, node: str) -> None:
            await asyncio.sleep(60)

        async def start(self, node: str) -> None:
            await asyncio.sleep(60)

    rebuilder = Rebuilder(factories.settings(), RebuildCommands(), control=Hangs())
    job = _Job(rebuilder, "node3", "node2", "node1", lambda _: None)
    started = time.monotonic()
    with pytest.raises(RebuildFailed, match=r"cannot stop node3: timed out after 0\.2 s$"):
        await job.control_node("stop", 0.2)
    assert time.monotonic() - started < 5


async def test_a_crash_stop_caps_the_hooks_grace_and_names_the_hook_it_kills(tmp_path, monkeypatch):
    # An on_halt hook whose timeout is 120 s: the crash-stop gives it at most the cap (1 s
    # here, 30 s by default), kills it, logs it, and the restart comes (no 2-minute halt).
    monkeypatch.setattr(runtime_mod, "CRASH_HOOK_GRACE_MAX", 1.0)
    marker = tmp_path / "hook.pid"
    capture, _ = await crash_c001_under_an_on_halt_hook(
        tmp_path, monkeypatch, sleeper(marker), 120.0
    )
    pid = hook_pid(marker)
    assert pid and not alive(pid)
    (finished_line,) = hook_lines(capture, "hook_finished")
    assert "controller stopped" in finished_line["killed"], finished_line
    (stopped,) = [r for r in capture.of("stopped") if r["cluster"] == "c001"][:1]
    assert stopped["hooks_killed"] == ["hook:on_halt"], stopped


async def test_a_crashed_leader_lets_its_lease_go_before_its_hooks_end(tmp_path):
    # Fleet mode: c001's on_halt pager takes 6 s when its decision task crashes. The stop ends
    # the lease keeper (its sessions closed: another instance may lead) at once, not after the
    # hook; the hook still runs to its end before the restart.
    paged = tmp_path / "paged"
    async with FakeFleet(fleet([3, 3], net_timeout=0.5)) as fake:
        first, second = (
            s.model_copy(update={"controller": s.controller.model_copy(update={"fleet": True})})
            for s in cluster_settings(fake, tmp_path)
        )
        first = with_hooks(first, on_halt=f"sh -c 'sleep 6; echo done > {paged}'", timeout=10)
        svc, capture = service(first, second, restart_backoff=0.5)
        async with svc:
            waiting = asyncio.create_task(svc.wait())
            await eventually(lambda: idle(svc), 30, "both clusters deciding")
            old = svc.runtimes["c001"]
            (lease,) = [t for t in old._workers if t.get_name() == "lease"]
            crash_on_command(old)
            await svc.command(OperatorCommand(time.monotonic(), "pause"), "c001")
            await eventually(lambda: hook_lines(capture, "hook_started"), 10, "the pager runs")
            await eventually(lease.done, 4, "the lease keeper ended, the pager still running")
            assert not paged.exists() and not hook_lines(capture, "hook_finished")
            await eventually(lambda: svc.runtimes["c001"] is not old, 30, "c001 restarted")
            assert paged.read_text().strip() == "done"
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
