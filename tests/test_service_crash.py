"""A worker crash in one cluster of a process (``service.Service``), against the fake fleet: that
cluster alone halts (the crash logged with its exception, /ready and /status say so, the
halt metric is 1, commands to it answer at once why), the other goes on and fails over; the
crashed one restarts from its journal after its back-off and fails over again. With one
cluster a crash ends the process (non-zero), as before."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import hacontrol.controller as controller_mod
import hacontrol.runtime as runtime_mod
from hacontrol.actions.rebuild import to_its_end
from hacontrol.events import Event, OperatorCommand
from hacontrol.journal import Journal, JournalUnwritable
from hacontrol.mariabackup import Progress
from hacontrol.runtime import Runtime, WorkerCrashed
from hacontrol.service import RESTART_BACKOFF_MAX, RESTART_STABLE, Service, restart_delay
from tests.clusters import (
    TOKEN,
    InjectedBug,
    cluster_settings,
    crash_on_command,
    finished,
    idle,
    on_one_proxysql,
    serving,
    slow_promote,
)
from tests.fakefleet import FakeFleet, fleet
from tests.live import MailBox, service, with_mail
from tests.proxysql_real import pair_sql
from tests.support import eventually


def halt_metric(svc: Service) -> dict[str, float]:
    families = {f.name: f for f in text_string_to_metric_families(svc.metrics_text().decode())}
    return {s.labels["cluster"]: s.value for s in families["hacontrol_halt_active"].samples}


def api_up(svc: Service) -> dict[str, float]:
    families = {f.name: f for f in text_string_to_metric_families(svc.metrics_text().decode())}
    return {s.labels["cluster"]: s.value for s in families["hacontrol_api_process_up"].samples}


async def post(url: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    started = time.monotonic()
    async with aiohttp.ClientSession() as http, http.post(url + path, json=body, headers=auth) as r:
        return r.status, await r.json(), time.monotonic() - started


async def test_a_crash_halts_that_cluster_alone_it_restarts_and_the_other_fails_over(tmp_path):
    async with FakeFleet(fleet([3, 3], net_timeout=0.5)) as fake:
        svc, capture = service(*cluster_settings(fake, tmp_path, token=TOKEN), restart_backoff=3.0)
        async with svc:
            waiting = asyncio.create_task(svc.wait())
            await eventually(lambda: idle(svc), 20, "both clusters healthy and idle")
            crashed = svc.runtimes["c001"]
            crash_on_command(crashed)
            # The command that breaks it is answered at once, not after the API's timeout.
            started = time.monotonic()
            answer = await svc.command(OperatorCommand(time.monotonic(), "pause"), "c001")
            assert not answer.ok and "crashed (decision: InjectedBug" in answer.message, answer
            assert time.monotonic() - started < 5
            await eventually(lambda: capture.of("cluster_crashed"), 10, "the crash logged")
            (line,) = capture.of("cluster_crashed")
            assert line["cluster"] == "c001" and line["task"] == "decision", line
            assert "InjectedBug: injected: pause broke" in line["error"] and line["where"]
            assert line["restart_in"] == 3.0
            # Halted: /ready names it, /health stays up (the others run), status says why.
            ok, reason = svc.ready()
            assert not ok and reason.startswith("c001: halted: crashed (decision: InjectedBug")
            assert svc.alive()[0] and "c001: halted" in svc.alive()[1]
            assert "restarts from its journal" in svc.status()["clusters"]["c001"]["halted"]
            assert halt_metric(svc) == {"c001": 1.0, "c002": 0.0}
            # A command to the halted cluster, through the API: refused at once, with why.
            assert svc.api is not None and svc.api.address is not None
            url = "http://{}:{}".format(*svc.api.address)
            status, body, seconds = await post(url, "/pause", {"cluster": "c001"})
            assert status == 409 and "cluster c001 is halted: crashed" in body["message"], body
            assert seconds < 5, seconds
            # The other cluster goes on: it fails over.
            fake.kill("c002n1")
            await eventually(lambda: finished(capture, "c002"), 30, "c002's failover")
            (done,) = finished(capture, "c002")
            assert done["ok"], done
            # The crashed one restarts (a fresh Runtime from its journal) and acts again.
            await eventually(lambda: svc.runtimes["c001"] is not crashed, 20, "c001 restarted")
            restarted = svc.runtimes["c001"]
            await eventually(lambda: restarted.ready()[0], 20, "the restarted c001 ready")
            assert halt_metric(svc)["c001"] == 0.0
            assert api_up(svc) == {"c001": 1.0, "c002": 1.0}  # the fresh one's too
            fake.kill("c001n1")
            await eventually(lambda: finished(capture, "c001"), 30, "c001's failover")
            (done,) = finished(capture, "c001")
            assert done["ok"], done
            assert not waiting.done()  # the process goes on
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
    (restarting,) = capture.of("cluster_restarting")
    assert restarting["cluster"] == "c001" and "crashed" in restarting["after"]
    (alert,) = [a for a in capture.of("alert") if a["kind"] == "cluster_crashed"]
    assert alert["cluster"] == "c001"


async def test_with_one_cluster_a_crash_ends_the_process(tmp_path):
    async with FakeFleet(fleet([3])) as fake:
        (only,) = cluster_settings(fake, tmp_path)
        svc, capture = service(only)
        async with svc:
            waiting = asyncio.create_task(svc.wait())
            await eventually(lambda: idle(svc), 20, "the cluster healthy and idle")
            crash_on_command(svc.runtimes["c001"])
            answer = await svc.command(OperatorCommand(time.monotonic(), "pause"))
            assert not answer.ok
            with pytest.raises(WorkerCrashed, match="task decision crashed: InjectedBug"):
                await asyncio.wait_for(waiting, 10)
    (line,) = capture.of("cluster_crashed")
    assert line["restart_in"] is None
    assert not capture.of("cluster_restarting")


async def test_a_probe_worker_crash_halts_its_cluster_which_restarts(tmp_path):
    async with serving(tmp_path, (3, 3), restart_backoff=0.5) as (_, svc, capture, waiting):
        crashed = svc.runtimes["c002"]

        def broken_emit(event: Event) -> None:
            raise InjectedBug("injected: the probe's emit broke")

        crashed.probes["c002n2"]._emit = broken_emit  # its next probe's result raises
        await eventually(lambda: capture.of("cluster_crashed"), 10, "the crash logged")
        (line,) = capture.of("cluster_crashed")
        assert line["cluster"] == "c002" and line["task"] == "probe:c002n2", line
        await eventually(lambda: svc.runtimes["c002"] is not crashed, 10, "c002 restarted")
        await eventually(lambda: idle(svc), 20, "both clusters idle again")
        assert svc.runtimes["c001"].controller.decisions  # c001 went on throughout
        assert not waiting.done()
    stopped = [r for r in capture.of("stopped") if r["cluster"] == "c002"]
    assert stopped and not stopped[0]["tasks_not_finished"]  # the crashed one cleaned up


async def test_a_plan_left_running_by_a_crashed_decision_task_finishes(tmp_path):
    # c001's decision task crashes right after it started a failover: the plan is not cut
    # halfway (it finishes, within its budget), then the restarted c001 takes over from its
    # journal and the live topology; c001 ends with one of its replicas as its primary.
    async with serving(tmp_path, (3, 3), restart_backoff=0.5) as (fake, svc, capture, waiting):
        crashed = svc.runtimes["c001"]
        controller, handle = crashed.controller, crashed.controller.handle

        def buggy(event: Event) -> None:
            handle(event)
            if controller.running_plan is not None:
                raise InjectedBug("injected: a bug right after the plan started")

        controller.handle = buggy  # type: ignore[method-assign]
        fake.kill("c001n1")
        await eventually(lambda: capture.of("cluster_crashed"), 20, "the crash logged")
        await eventually(lambda: svc.runtimes["c001"] is not crashed, 60, "c001 restarted")
        fresh = svc.runtimes["c001"]
        await eventually(
            lambda: (
                fresh.controller.view.primary in ("c001n2", "c001n3")
                and fresh.controller.running_plan is None
                and not fresh.controller.view.problems
            ),
            60,
            "the restarted c001 healthy on a promoted replica",
        )
        assert not waiting.done()
    (started,) = [r for r in capture.of("plan_started") if r["cluster"] == "c001"][:1]
    plan = started["plan"]
    steps = [r for r in capture.of("action") if r.get("plan") == plan]
    assert steps and all(r["ok"] for r in steps), steps  # it ran on, to its end, and worked
    waited = [r for r in capture.of("stop_waits_for_plan") if r["cluster"] == "c001"]
    assert waited and waited[0]["plan"] == plan


async def test_a_crashed_cluster_on_a_shared_proxysql_restarts_and_routes_again(tmp_path):
    # Both clusters routed by one real ProxySQL (one admin link): the crashed cluster's rows
    # stay on the link, the fresh router takes their place and routes its failover.
    async with on_one_proxysql(tmp_path, restart_backoff=0.5) as (px, fake, clusters, svc, capture):
        waiting = asyncio.create_task(svc.wait())
        await eventually(lambda: idle(svc), 30, "both clusters healthy and idle")
        crashed = svc.runtimes["c001"]
        crash_on_command(crashed)
        assert not (await svc.command(OperatorCommand(0.0, "pause"), "c001")).ok
        await eventually(lambda: svc.runtimes["c001"] is not crashed, 10, "restarted")
        fresh = svc.runtimes["c001"]
        await eventually(lambda: fresh.ready()[0], 20, "the restarted c001 ready")
        assert len(svc.links) == 1 and len(next(iter(svc.links._links.values()))[0].layouts) == 2
        fake.kill("c001n1")
        await eventually(lambda: finished(capture, "c001"), 30, "c001's failover")
        (done,) = finished(capture, "c001")
        assert done["ok"], done
        await eventually(
            lambda: fresh.controller.view.primary in ("c001n2", "c001n3"),
            10,
            "c001's view names the promoted replica",
        )
        writers = await asyncio.to_thread(
            px.admin,
            "SELECT hostname, port FROM runtime_mysql_servers WHERE hostgroup_id = 10",
        )
        assert not waiting.done()
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    promoted = {
        (s.host, s.port) for s in clusters[0].nodes if s.name == fresh.controller.view.primary
    }
    assert {(h, int(p)) for h, p in writers} == promoted  # c001's writer, in hostgroup 10
    routed = [r for r in capture.of("router_statement") if r["cluster"] == "c001"]
    assert routed  # the fresh router's own lines, its cluster named


async def test_the_process_ends_when_no_cluster_runs_any_more(tmp_path):
    # c001 crashes (its restart 30 s away), then c002: no cluster runs, the process ends with
    # the last crash (non-zero), without waiting for c001's restart.
    async with FakeFleet(fleet([3, 3])) as fake:
        svc, capture = service(*cluster_settings(fake, tmp_path), restart_backoff=30.0)
        async with svc:
            waiting = asyncio.create_task(svc.wait())
            await eventually(lambda: idle(svc), 20, "both clusters healthy and idle")
            for name in ("c001", "c002"):
                crash_on_command(svc.runtimes[name])
                assert not (await svc.command(OperatorCommand(0.0, "pause"), name)).ok
                await eventually(lambda n=name: svc.runtimes[n].halted, 10, f"{name} halted")
            with pytest.raises(WorkerCrashed, match="cluster c002: task decision crashed"):
                await asyncio.wait_for(waiting, 10)
    first, last = capture.of("cluster_crashed")
    assert (first["cluster"], first["restart_in"]) == ("c001", 30.0)
    assert (last["cluster"], last["restart_in"]) == ("c002", None)
    assert not capture.of("cluster_restarting")


def crash_a_probe(runtime: Runtime, node: str) -> None:
    def broken(event: Event) -> None:
        raise InjectedBug("injected: the probe's emit broke")

    runtime.probes[node]._emit = broken  # type: ignore[method-assign]


def record_ends(runtime: Runtime) -> list[tuple[str, str]]:
    """The (plan, reason) of every ``end`` record ``runtime``'s journal writes (a fresh
    Runtime's load compacts the file: the records are gone from it by then)."""
    journal, ends = runtime.journal, []
    end = journal.end

    def recorded(plan_id: str, ok: bool, reason: str, promoted: str | None) -> None:
        end(plan_id, ok, reason, promoted)
        ends.append((plan_id, reason))

    journal.end = recorded  # type: ignore[method-assign]
    return ends


@pytest.fixture
def short_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every plan's budget is 1 s (a plan outlives it at once: a slow promote)."""
    monkeypatch.setattr(controller_mod, "plan_budget", lambda settings: 1.0)
    monkeypatch.setattr(runtime_mod, "plan_budget", lambda settings: 1.0)


async def failing_over_slowly(
    svc: Service, fake: FakeFleet, stubborn: float = 0.0, acts_first: bool = False
) -> tuple[Runtime, list[str], list[tuple[str, str]]]:
    """Both clusters idle, then c001's primary killed and its failover's promote slow (8 s):
    c001's Runtime once the promote started, what the promote did, its journal's ends."""
    await eventually(lambda: idle(svc), 20, "both clusters healthy and idle")
    old, calls = svc.runtimes["c001"], []
    slow_promote(old, 8.0, calls, stubborn, acts_first)
    ends = record_ends(old)
    fake.kill("c001n1")
    await eventually(lambda: calls, 20, "c001's failover promoting")
    return old, calls, ends


@pytest.mark.usefixtures("short_budget")
@pytest.mark.parametrize("acts_first", [False, True], ids=["cut_before_promote", "cut_inside"])
async def test_a_worker_crash_under_a_plan_past_its_budget_cancels_the_plan_before_the_restart(
    tmp_path, acts_first: bool
):
    # c001's failover outlives its budget (1 s here; its promote takes 8 s) when a probe of
    # c001 crashes: the stop cancels and awaits the plan, its journal record left open (the
    # fresh c001 resumes it, as after a kill -9: an end record would leave a failover cut
    # after its stops neither finished nor undone), the stopped line names nothing left, and
    # only then a fresh c001 starts: one executor at a time.
    async with FakeFleet(fleet([3, 3], net_timeout=0.5)) as fake:
        svc, capture = service(*cluster_settings(fake, tmp_path), restart_backoff=0.5)
        async with svc:
            waiting = asyncio.create_task(svc.wait())
            old, calls, ends = await failing_over_slowly(svc, fake, acts_first=acts_first)
            plan, plan_task = old.controller.running_plan, old.controller._task
            assert plan is not None and plan_task is not None
            crash_a_probe(old, "c001n2")
            await eventually(lambda: svc.runtimes["c001"] is not old, 20, "c001 restarted")
            promoted = ["promoted on the server"] if acts_first else []
            assert plan_task.done() and calls == ["called", *promoted, "cancelled"]
            assert ends == []  # no end record: the plan is left open for the fresh one
            unfinished = lambda: [  # noqa: E731
                r for r in capture.of("journal_unfinished") if r["cluster"] == "c001"
            ]
            found = await eventually(unfinished, 20, "the fresh c001 finding the plan open")
            assert found[0]["plan"] == plan, found
            # The fresh c001 finishes the failover (it is resumed, not dropped): one writable
            # primary, the other replica following it, the dead primary kept quarantined.
            fresh = svc.runtimes["c001"]
            await eventually(lambda: finished(capture, "c001"), 30, "the resumed failover")
            (done,) = finished(capture, "c001")
            assert done["ok"] and done["plan"] == plan, done
            await eventually(
                lambda: (
                    fresh.controller.view.primary in ("c001n2", "c001n3")
                    and fresh.controller.view.replicas_of(fresh.controller.view.primary)
                ),
                20,
                "c001 with a writable primary and a replica following it",
            )
            view = fresh.controller.view
            other = ({"c001n2", "c001n3"} - {view.primary}).pop()
            assert view.sources[other] == view.primary, view.sources
            assert "c001n1" in fresh.controller.state.quarantined
            assert not waiting.done()
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
    (stopped,) = [r for r in capture.of("stopped") if r["cluster"] == "c001"][:1]
    assert stopped["tasks_not_finished"] == [] and stopped["journal_flushed"], stopped
    (cancel,) = [r for r in capture.of("stop_cancels_plan") if r["cluster"] == "c001"]
    assert cancel["plan"] == plan
    (left,) = [r for r in capture.of("plan_left_open") if r["cluster"] == "c001"]
    assert left["plan"] == plan
    assert "acts" not in calls  # the old executor never acted after its stop


@pytest.mark.usefixtures("short_budget")
async def test_a_plan_that_outlives_the_stop_holds_its_cluster_halted_until_it_ends(tmp_path):
    # The plan does not end when cancelled (an undo that outlives the stop's grace, as a
    # rebuild's does: 8 s here): the stop names it, the cluster stays halted while it runs
    # (/ready and /status say what it waits for, the journal stays open for its records), is
    # alerted once it lasts past the patience (2 s), and restarts only once it has ended: the
    # fresh c001 resumes the failover from its journal. The other cluster goes on.
    async with FakeFleet(fleet([3, 3], net_timeout=0.5)) as fake:
        svc, capture = service(*cluster_settings(fake, tmp_path), restart_backoff=0.5)
        svc.leftover_patience = 2.0
        async with svc:
            waiting = asyncio.create_task(svc.wait())
            old, calls, _ = await failing_over_slowly(svc, fake, stubborn=8.0)
            plan, plan_task = old.controller.running_plan, old.controller._task
            assert plan is not None and plan_task is not None
            crash_a_probe(old, "c001n2")
            mine = lambda event: [r for r in capture.of(event) if r["cluster"] == "c001"]  # noqa: E731
            await eventually(lambda: mine("cluster_waits_for_leftovers"), 20, "it waits")
            assert svc.runtimes["c001"] is old and not plan_task.done()
            assert not old.journal._closed  # what the plan still writes lands
            ok, reason = svc.ready()
            assert not ok and "waiting first for plan:" in reason, reason
            status = svc.status()["clusters"]["c001"]
            assert status["waiting_for"] == [plan_task.get_name()], status
            assert svc.alive()[0]
            await eventually(lambda: mine("cluster_not_restarted"), 20, "alerted past patience")
            assert svc.runtimes["c001"] is old and not mine("cluster_restarting")
            fake.kill("c002n1")
            await eventually(lambda: finished(capture, "c002"), 30, "c002's failover")
            await eventually(lambda: svc.runtimes["c001"] is not old, 30, "c001 restarted")
            assert plan_task.done() and calls[-1] == "ended after the cancel"
            assert old.journal._closed and not old.left_running
            assert old._notifier_task is None  # the not-restarted alert's notifier closed
            fresh = svc.runtimes["c001"]
            await eventually(lambda: mine("journal_unfinished"), 20, "the plan found open")
            await eventually(
                lambda: (
                    fresh.controller.view.primary in ("c001n2", "c001n3")
                    and fresh.controller.running_plan is None
                ),
                60,
                "the restarted c001 on a promoted replica",
            )
            assert not waiting.done()
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
    events = [r["event"] for r in capture.records if r.get("cluster") == "c001"]
    order = [events.index(e) for e in ("stopped", "cluster_waits_for_leftovers",
                                       "cluster_not_restarted", "leftovers_ended",
                                       "cluster_restarting")]  # fmt: skip
    assert order == sorted(order), events
    (stopped,) = mine("stopped")[:1]
    assert stopped["tasks_not_finished"] == [plan_task.get_name()], stopped
    (ended,) = mine("leftovers_ended")
    assert ended["ended"] == [plan_task.get_name()], ended
    (resumed,) = mine("journal_unfinished")
    assert resumed["plan"] == plan, resumed
    alerts = [a for a in capture.of("alert") if a["cluster"] == "c001"]
    assert [a["kind"] for a in alerts[:2]] == ["cluster_crashed", "cluster_crashed"], alerts
    assert "not restarted" in alerts[1]["summary"], alerts[1]
    (done,) = finished(capture, "c001")  # the fresh one's: the old one's was left open
    assert done["ok"] and done["plan"] == plan, done


async def test_a_closed_journal_takes_no_record_any_more(tmp_path):
    # What a stopped Runtime's leftovers still send after its stop (the file is the fresh
    # Runtime's then): every write fails, and no writer thread starts again.
    journal = Journal(tmp_path / "journal.jsonl")
    await journal.write(journal.save_state, {"paused": False})
    journal.close()
    before = (tmp_path / "journal.jsonl").read_bytes()
    with pytest.raises(JournalUnwritable, match="closed"):
        await journal.write(journal.step, "p1", 0, True, "applied")
    with pytest.raises(JournalUnwritable, match="closed"):
        journal.post(journal.end, "p1", False, "late", None).result()
    with pytest.raises(JournalUnwritable, match="closed"):
        journal.save_state({"paused": True})  # the direct path (a boot-time record)
    assert await journal.flushed()  # nothing of it runs
    assert journal._pool is None and (tmp_path / "journal.jsonl").read_bytes() == before


async def test_a_cluster_refused_at_start_up_stays_under_the_check_before_every_load(tmp_path):
    # c002 is refused (its hostgroups under a replication hostgroup pair); the operator, by
    # hand and in memory only, drops the pair and writes two writers for c002. c001's failover
    # must not LOAD them (a LOAD publishes every cluster's rows): refused, c002 has no writer.
    async with on_one_proxysql(tmp_path, pair_sql(110, 120)) as (px, fake, clusters, svc, capture):
        c001 = svc.runtimes["c001"]
        await eventually(lambda: c001.ready()[0], 20, "c001 ready")
        assert svc.runtimes["c002"].halted
        nodes = {n.name: n for n in clusters[1].nodes}
        await asyncio.to_thread(
            px.admin,
            "DELETE FROM mysql_replication_hostgroups",
            *(
                "INSERT INTO mysql_servers (hostgroup_id, hostname, port) VALUES "
                f"(110, '{nodes[name].host}', {nodes[name].port})"
                for name in ("c002n1", "c002n2")
            ),
        )
        fake.kill("c001n1")
        await eventually(lambda: finished(capture, "c001"), 30, "c001's failover")
        rows = await asyncio.to_thread(
            px.admin, "SELECT hostname FROM runtime_mysql_servers WHERE hostgroup_id = 110"
        )
    done = finished(capture, "c001")[0]
    assert not done["ok"] and "refusing to LOAD" in done["reason"], done
    assert "hostgroup 110 of cluster c002" in done["reason"], done
    assert rows == []  # c002's two writers never went live


async def test_a_restart_that_fails_to_build_does_not_block_the_next_one(tmp_path):
    # c001's first restart fails after its router registered on the shared link (its journal
    # unreadable); once the journal is back, the next restart starts: no "managed for two
    # clusters" left behind.
    async with on_one_proxysql(tmp_path, restart_backoff=0.5) as (_, _, clusters, svc, _):
        old = svc.runtimes["c001"]
        await old.stop("crashed (test)")  # what a crash does before the restart
        old.halted = "crashed (test)"
        journal = clusters[0].controller.journal
        journal.unlink(missing_ok=True)
        journal.mkdir()  # unreadable for a moment
        same, error = await svc._restart(old)
        assert same is old and error is not None and "JournalError" in str(error)
        journal.rmdir()
        fresh, error = await svc._restart(same)
        assert error is None and fresh is not old, error
        await eventually(lambda: fresh.ready()[0], 20, "the restarted c001 ready")
        assert len(fresh.router.link.layouts) == 2


async def test_a_restart_keeps_the_operators_resume_of_a_paused_start(tmp_path):
    # ``run --paused``; the operator resumes c001, then c001 crashes: its restart reads the
    # resume from its journal and does not pause it again (no silent loss of failover). c002
    # was never resumed: after its crash its journal keeps it paused.
    async with FakeFleet(fleet([3, 3], net_timeout=0.5)) as fake:
        svc, capture = service(*cluster_settings(fake, tmp_path), restart_backoff=0.5, paused=True)
        async with svc:
            waiting = asyncio.create_task(svc.wait())
            await eventually(
                lambda: all(rt.controller.decisions for rt in svc.runtimes.values()), 20, "up"
            )
            assert (await svc.command(OperatorCommand(time.monotonic(), "resume"), "c001")).ok
            old = svc.runtimes["c001"]
            crash_on_command(old)
            await svc.command(OperatorCommand(time.monotonic(), "pause"), "c001")
            await eventually(lambda: svc.runtimes["c001"] is not old, 20, "restarted")
            fresh = svc.runtimes["c001"]
            await eventually(lambda: fresh.halted is None, 20, "started")
            assert not fresh.controller.state.paused
            # c002, never resumed, crashes too: paused again from its journal, not by the flag.
            other = svc.runtimes["c002"]
            crash_on_command(other)
            await svc.command(OperatorCommand(time.monotonic(), "resume"), "c002")
            await eventually(lambda: svc.runtimes["c002"] is not other, 20, "c002 restarted")
            await eventually(lambda: svc.runtimes["c002"].halted is None, 20, "c002 started")
            assert svc.runtimes["c002"].controller.state.paused
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
    for name in ("c001", "c002"):  # the process's start only
        paused_at_start = [r for r in capture.of("paused_at_start") if r["cluster"] == name]
        assert len(paused_at_start) == 1, paused_at_start


@pytest.mark.parametrize(
    ("last", "ran_for", "expected"),
    [
        (None, 0.0, 5.0),  # the first crash: the first wait
        (5.0, 1.0, 10.0),  # crashed again soon: doubled
        (10.0, 0.0, 20.0),  # a restart that failed at once: doubled
        (200.0, 30.0, RESTART_BACKOFF_MAX),  # capped
        (RESTART_BACKOFF_MAX, 0.0, RESTART_BACKOFF_MAX),
        (160.0, RESTART_STABLE, 5.0),  # it ran long enough: from the first again
        (160.0, RESTART_STABLE - 0.1, 300.0),
    ],
)
def test_the_restart_back_off_doubles_to_its_cap_and_resets_after_a_stable_run(
    last: float | None, ran_for: float, expected: float
) -> None:
    assert restart_delay(last, ran_for, first=5.0) == expected


async def test_every_crash_and_failed_restart_is_mailed_with_its_secrets_masked(tmp_path):
    # c001 crashes with its MySQL password in the exception text; its first restart cannot
    # build (the journal unreadable): each is mailed (the crashed controller's mail queue is
    # closed by then: a fresh one), no mail carries the password; the next restart starts.
    box = MailBox().start()
    try:
        async with FakeFleet(fleet([3, 3], net_timeout=0.5)) as fake:
            clusters = [with_mail(s, box.port) for s in cluster_settings(fake, tmp_path)]
            password = clusters[0].mysql.password
            assert password is not None and password.get_secret_value()
            svc, capture = service(*clusters, restart_backoff=1.0)
            async with svc:
                waiting = asyncio.create_task(svc.wait())
                await eventually(lambda: idle(svc), 20, "both clusters healthy and idle")
                old = svc.runtimes["c001"]
                crash_on_command(old, f" (login with {password.get_secret_value()})")
                await svc.command(OperatorCommand(time.monotonic(), "pause"), "c001")
                journal = clusters[0].controller.journal
                await eventually(lambda: capture.of("stopped"), 20, "the crashed c001 stopped")
                journal.unlink(missing_ok=True)
                journal.mkdir()  # the first restart cannot load it
                await eventually(lambda: len(capture.of("cluster_crashed")) == 2, 20, "2nd")
                journal.rmdir()
                await eventually(lambda: svc.runtimes["c001"] is not old, 20, "restarted")
                await eventually(lambda: len(box.messages) >= 2, 20, "both mails")
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
    finally:
        box.stop()
    first, failed = capture.of("cluster_crashed")
    assert first["task"] == "decision", first
    assert failed["task"] == "start-up" and "JournalError" in failed["error"], failed
    crashes = [a for a in capture.of("alert") if a["kind"] == "cluster_crashed"]
    assert [a["mail"] for a in crashes] == ["queued", "queued"], crashes
    bodies = box.bodies()
    assert len(bodies) == 2 and "(login with ********)" in bodies[0], bodies
    assert not any(password.get_secret_value() in body for body in bodies)
    assert all("controller crashed" in subject for subject in box.subjects())


async def test_a_plan_started_just_before_a_stop_gets_its_budget_then_is_cancelled(
    tmp_path, monkeypatch
):
    # A switchover queued ahead of the Stop starts after stop() was called (no plan ran
    # then): it still gets its budget (3 s here, its promote takes 8 s), then it is cancelled
    # and awaited; the stop leaves nothing running.
    monkeypatch.setattr(controller_mod, "plan_budget", lambda settings: 3.0)
    monkeypatch.setattr(runtime_mod, "plan_budget", lambda settings: 3.0)
    async with FakeFleet(fleet([3], net_timeout=0.5)) as fake:
        svc, capture = service(*cluster_settings(fake, tmp_path))
        async with svc:
            await eventually(lambda: idle(svc), 20, "the cluster healthy and idle")
            rt, calls = svc.runtimes["c001"], []
            slow_promote(rt, 8.0, calls)
            rt.emit(OperatorCommand(time.monotonic(), "switchover", node="c001n2"))
            assert rt.controller.running_plan is None
            started = time.monotonic()
            await rt.stop("test: stop right after a switchover")
            took = time.monotonic() - started
            plan = rt.controller._task
            assert plan is not None and plan.done() and "acts" not in calls
    assert took >= 3.0, took  # the plan had its budget, not only the idle grace
    (stopped,) = capture.of("stopped")[:1]
    assert stopped["tasks_not_finished"] == [], stopped
    assert capture.of("stop_cancels_plan") and capture.of("stop_waits_for_plan")


async def test_a_worker_that_ends_on_its_own_is_a_crash_of_its_cluster(tmp_path, monkeypatch):
    # c002's ticker returns after three ticks (it should run until cancelled): that is a bug,
    # c002 is halted and restarted like any crash; c001 is untouched.
    ticker = runtime_mod._ticker

    async def ends_in_c002(emit: Any, interval: float) -> None:
        if emit.__self__.name != "c002" or not first_c002:
            await ticker(emit, interval)
            return
        first_c002.pop()
        for _ in range(3):
            await asyncio.sleep(interval)

    first_c002 = [True]  # the restarted c002's ticker runs as it should
    monkeypatch.setattr(runtime_mod, "_ticker", ends_in_c002)
    async with FakeFleet(fleet([3, 3], net_timeout=0.5)) as fake:
        svc, capture = service(*cluster_settings(fake, tmp_path), restart_backoff=0.5)
        async with svc:
            waiting = asyncio.create_task(svc.wait())
            old = svc.runtimes["c002"]
            await eventually(lambda: svc.runtimes["c002"] is not old, 20, "c002 restarted")
            await eventually(lambda: idle(svc), 20, "both clusters idle")
            assert not waiting.done()
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
    (line,) = capture.of("cluster_crashed")
    assert (line["cluster"], line["task"]) == ("c002", "ticker"), line
    assert "ended on its own" in line["error"], line


class UndoesSlowly:
    """A node rebuilder cancelled as ``actions.rebuild.Rebuilder.rebuild`` is: the copy runs
    until cut, then its undo (``undo`` s: stopping the target and putting its old datadir
    back takes that long) runs to its end through every cancel (``to_its_end``), then the
    cancel goes on. The undo records its own start and end."""

    def __init__(self, undo: float) -> None:
        self.undo, self.calls = undo, []
        self.undone_at: float | None = None

    async def _undo(self, target: str, on_progress: Any) -> None:
        self.calls.append("undoing")
        await asyncio.sleep(self.undo)
        self.calls.append("undone")
        self.undone_at = time.monotonic()
        where = f"copy: cancelled; {target} untouched (test undo)"
        on_progress(Progress("failed", message=where))  # as Rebuilder's undo reports it

    async def rebuild(self, target, source, primary, on_progress=None, guard=None):
        self.calls.append("copying")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await to_its_end(self._undo(target, on_progress or (lambda _: None)))
            raise
        raise AssertionError("the copy never ends here")


@pytest.mark.usefixtures("short_budget")
async def test_a_crash_during_a_rebuild_waits_for_its_undo_then_restarts(tmp_path):
    # An operator's rebuild of c001n3 copies (it always outlives its budget: 1 s) when a probe of
    # c001 crashes: the stop cancels it, its undo goes on past the stop's grace (4 s), the
    # cluster waits for it, halted, then restarts from its journal (the rebuild is not resumed)
    # and fails over when its primary dies.
    box = MailBox().start()
    try:
        await crash_during_a_rebuild(tmp_path, box)
    finally:
        box.stop()


async def crash_during_a_rebuild(tmp_path: Path, box: MailBox) -> None:
    async with FakeFleet(fleet([3, 3], net_timeout=0.5)) as fake:
        clusters = [with_mail(s, box.port) for s in cluster_settings(fake, tmp_path)]
        svc, capture = service(*clusters, restart_backoff=0.5)
        async with svc:
            waiting = asyncio.create_task(svc.wait())
            await eventually(lambda: idle(svc), 20, "both clusters healthy and idle")
            old, rebuilder = svc.runtimes["c001"], UndoesSlowly(4.0)
            old.executor.rebuilder = rebuilder  # type: ignore[assignment]
            hide = OperatorCommand(time.monotonic(), "maintenance", "c001n3", on=True)
            assert (await svc.command(hide, "c001")).ok
            answer = await svc.command(
                OperatorCommand(time.monotonic(), "rebuild", "c001n3", source="c001n2"), "c001"
            )
            assert answer.ok, answer
            await eventually(lambda: rebuilder.calls, 20, "the rebuild copying")
            plan_task = old.controller._task
            assert plan_task is not None
            crash_a_probe(old, "c001n2")
            mine = lambda event: [r for r in capture.of(event) if r["cluster"] == "c001"]  # noqa: E731
            await eventually(lambda: mine("cluster_waits_for_leftovers"), 30, "it waits")
            assert rebuilder.calls == ["copying", "undoing"] and not plan_task.done()
            assert "waiting_for" in svc.status()["clusters"]["c001"]
            await eventually(lambda: svc.runtimes["c001"] is not old, 30, "c001 restarted")
            assert rebuilder.calls == ["copying", "undoing", "undone"]
            fresh = svc.runtimes["c001"]
            await eventually(lambda: fresh.ready()[0], 20, "the restarted c001 ready")
            await eventually(lambda: mine("plan_abandoned"), 20, "the rebuild not resumed")
            back = OperatorCommand(time.monotonic(), "maintenance", "c001n3", on=False)
            assert (await svc.command(back, "c001")).ok
            fake.kill("c001n1")
            await eventually(lambda: finished(capture, "c001"), 30, "c001's failover")
            cut = lambda: [t for t in box.subjects() if "rebuild of c001n3 cut" in t]  # noqa: E731
            await eventually(cut, 20, "the cut rebuild's mail")
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
    assert not mine("cluster_not_restarted")
    (stopped,) = mine("stopped")[:1]
    assert stopped["tasks_not_finished"] == [plan_task.get_name()], stopped
    rebuild = plan_task.get_name().removeprefix("plan:")
    assert [r["plan"] for r in mine("plan_left_open")] == [rebuild]
    assert [r["plan"] for r in mine("plan_abandoned")] == [rebuild]
    # No outcome of the cut rebuild follows: where its undo left the target is said at once.
    (cut,) = mine("rebuild_cut")
    assert cut["plan"] == rebuild and "c001n3 untouched (test undo)" in cut["where"], cut
    (alert,) = [a for a in mine("alert") if a["kind"] == "rebuild_failed"]
    assert "cut by a stop" in alert["reason"] and "untouched" in alert["reason"], alert
    assert alert["mail"] != "closed", alert  # its undo ended after the stop: still mailed
    (done,) = finished(capture, "c001")
    assert done["ok"], done


@pytest.mark.usefixtures("short_budget")
async def test_a_crash_while_a_preempted_rebuild_undoes_waits_for_the_undo(tmp_path):
    # c001's rebuild of c001n3 is preempted by a failover (c001n1 dies): its undo runs (6 s)
    # when a probe of c001 crashes. The stop's cancel is the plan's second one: the plan task
    # still ends only with the undo, so the stop names it, the cluster waits, and the fresh
    # c001 starts only after the undo's end (never beside it).
    async with serving(tmp_path, (4, 3), restart_backoff=0.5) as (fake, svc, capture, _):
        old, rebuilder = svc.runtimes["c001"], UndoesSlowly(6.0)
        old.executor.rebuilder = rebuilder  # type: ignore[assignment]
        hide = OperatorCommand(time.monotonic(), "maintenance", "c001n3", on=True)
        assert (await svc.command(hide, "c001")).ok
        rebuild = OperatorCommand(time.monotonic(), "rebuild", "c001n3", source="c001n2")
        assert (await svc.command(rebuild, "c001")).ok
        await eventually(lambda: rebuilder.calls, 20, "the rebuild copying")
        plan_task = old.controller._task
        assert plan_task is not None
        fake.kill("c001n1")
        await eventually(lambda: "undoing" in rebuilder.calls, 30, "preempted, undoing")
        crash_a_probe(old, "c001n2")
        await eventually(lambda: svc.runtimes["c001"] is not old, 40, "c001 restarted")
        restarted_at = time.monotonic()
        assert rebuilder.undone_at is not None and rebuilder.undone_at < restarted_at
        assert plan_task.done()
    mine = [r for r in capture.of("plan_preempted") if r["cluster"] == "c001"]
    assert mine, "the rebuild was preempted by the failover"
    (stopped,) = [r for r in capture.of("stopped") if r["cluster"] == "c001"][:1]
    assert stopped["tasks_not_finished"] == [plan_task.get_name()], stopped
    assert [r for r in capture.of("leftovers_ended") if r["cluster"] == "c001"]
