"""Several clusters in one process (``service.Service``), against the fake fleet: one decision
task per cluster, two primaries killed together both fail over (each with its own plan, its
own lines), a long failover in one cluster never delays another's probes or decisions; one
API for all (``/status`` with ``clusters``, ``/ready``, one metrics exposition), commands go
to the named cluster."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hacontrol.service import UnknownCluster
from hacontrol.settings import Settings
from tests.clusters import INTERVAL, TOKEN, cluster_settings, finished, idle, proxysql_router
from tests.fakefleet import FakeFleet, fleet
from tests.live import service
from tests.proxysql_real import RealProxySQL, pair_sql
from tests.support import eventually


async def test_two_primaries_killed_together_both_fail_over(tmp_path):
    async with FakeFleet(fleet([3, 3], net_timeout=0.5)) as fake:
        svc, capture = service(*cluster_settings(fake, tmp_path))
        async with svc:
            await eventually(lambda: idle(svc), 20, "both clusters healthy and idle")
            fake.kill("c001n1")
            fake.kill("c002n1")
            await eventually(
                lambda: finished(capture, "c001") and finished(capture, "c002"), 30, "2 failovers"
            )
            for cluster in ("c001", "c002"):
                (done,) = finished(capture, cluster)
                assert done["ok"], done
                view = lambda c=cluster: svc.runtimes[c].controller.view  # noqa: E731
                await eventually(
                    lambda c=cluster, v=view: v().primary in (f"{c}n2", f"{c}n3"),
                    10,
                    f"{cluster}'s view names the promoted replica",
                )
        started = {r["cluster"]: r for r in capture.of("plan_started")}
    # Each cluster planned alone: its own plan, naming only its own nodes.
    assert set(started) == {"c001", "c002"}
    assert started["c001"]["plan"] != started["c002"]["plan"]
    for cluster, line in started.items():
        mentioned = {word for word in str(line).replace('"', " ").split() if "n" in word}
        assert not any(w.startswith("c00") and not w.startswith(cluster) for w in mentioned)
    # Every line of a cluster says which; the node lines name that cluster's nodes only.
    for record in capture.records:
        node = record.get("node")
        if node:
            assert record["cluster"] == node[:4], record


async def test_a_long_failover_in_one_cluster_delays_nothing_in_the_other(tmp_path):
    async with FakeFleet(fleet([3, 3], net_timeout=0.5)) as fake:
        slow, quick = cluster_settings(fake, tmp_path)
        # c001's failover runs its pre_failover hook for 4 s: seconds of plan.
        slow = slow.model_copy(
            update={"hooks": slow.hooks.model_copy(update={"pre_failover": "sleep 4"})}
        )
        svc, capture = service(slow, quick)
        async with svc:
            await eventually(lambda: idle(svc), 20, "both clusters healthy and idle")
            first = svc.runtimes["c001"].controller
            fake.kill("c001n1")
            await eventually(lambda: first.running_plan is not None, 20, "c001's failover runs")
            since = time.monotonic()
            fake.kill("c002n1")  # while c001's plan runs: c002 detects, decides, fails over
            await eventually(lambda: finished(capture, "c002"), 20, "c002's failover done")
            assert first.running_plan is not None, "c002 waited for c001's plan"
            (done,) = finished(capture, "c002")
            assert done["ok"], done
            await eventually(lambda: first.running_plan is None, 30, "c001's plan over")
            until = time.monotonic()
            await eventually(lambda: finished(capture, "c001"), 20, "c001's failover done")
        # c002's replicas were probed at their pace all along (its old primary left out).
        skip = [n.name for n in fake.spec.clusters[0].nodes] + ["c002n1"]
        cadence = fake.cadence(since, until, skip=skip)
    assert finished(capture, "c001")[0]["ok"]
    gaps = [n["max_gap"] for n in cadence["nodes"].values()]
    assert len(gaps) == 2 and all(g is not None and g < INTERVAL + 1.0 for g in gaps), cadence


async def test_one_api_for_every_cluster(tmp_path):
    async with FakeFleet(fleet([3, 3])) as fake:
        clusters = cluster_settings(fake, tmp_path, token=TOKEN)
        svc, capture = service(*clusters)
        async with svc:
            await eventually(lambda: idle(svc), 20, "both clusters healthy and idle")
            assert svc.api is not None and svc.api.address is not None
            host, port = svc.api.address
            url = f"http://{host}:{port}"
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with aiohttp.ClientSession() as http:
                async with http.get(url + "/ready") as r:
                    ready = await r.json()
                assert r.status == 200 and "c001" in ready["reason"] and "c002" in ready["reason"]
                async with http.get(url + "/status") as r:
                    status = await r.json()
                assert set(status["clusters"]) == {"c001", "c002"} and "primary" not in status
                assert status["clusters"]["c002"]["primary"] == "c002n1"
                async with http.get(url + "/metrics") as r:
                    text = await r.text()
                async with http.post(url + "/pause", headers=auth) as r:
                    assert r.status == 400 and "c001, c002" in (await r.json())["message"]
                async with http.post(url + "/pause", json={"cluster": "c002"}, headers=auth) as r:
                    assert r.status == 200, await r.text()
                async with http.get(url + "/") as r:
                    page = await r.text()
            assert svc.runtimes["c002"].controller.state.paused
            assert not svc.runtimes["c001"].controller.state.paused
    assert 'id="cluster-c001"' in page and 'id="primary-c002">c002n1<' in page
    assert text.count("# HELP hacontrol_node_up ") == 1
    families = {f.name: f for f in text_string_to_metric_families(text)}
    up = {(s.labels["cluster"], s.labels["node"]) for s in families["hacontrol_node_up"].samples}
    assert up == {(c, f"{c}n{k}") for c in ("c001", "c002") for k in (1, 2, 3)}
    assert TOKEN not in "".join(str(r) for r in capture.records)
    (listening,) = capture.of("api_listening")
    assert listening["cluster"] is None  # the process's line, not a cluster's


async def test_one_cluster_keeps_its_status_fields_and_several_are_named(tmp_path):
    # Not started: built only, from settings with the fleet's bound ports.
    async with FakeFleet(fleet([3, 3])) as fake:
        one, two = cluster_settings(fake, tmp_path)
    alone, _ = service(one)
    status = alone.status()
    assert status["cluster"] == "c001" and set(status["clusters"]) == {"c001"}
    assert {k: v for k, v in status.items() if k != "clusters"} == status["clusters"]["c001"]
    assert alone.runtime(None) is alone.runtimes["c001"]
    assert alone.alive() == (False, "the decision task is not running")
    both, _ = service(one, two)
    assert both.alive() == (
        False,
        "c001: the decision task is not running; c002: the decision task is not running",
    )
    with pytest.raises(UnknownCluster, match="several clusters: name one of c001, c002"):
        both.runtime(None)
    with pytest.raises(UnknownCluster, match=r"no cluster 'c9' \(known: c001, c002\)"):
        both.runtime("c9")
    with pytest.raises(ValueError, match="two clusters named 'c001'"):
        service(one, one)
    shared = two.model_copy(update={"controller": one.controller})
    with pytest.raises(ValueError, match="clusters 'c001' and 'c002' share the journal"):
        service(one, shared)


async def test_a_router_conflict_halts_that_cluster_alone_and_unreachable_halts_none(tmp_path):
    # c002's hostgroups are under ProxySQL's own read_only monitor (a replication hostgroup
    # pair): it would fight hacontrol, so c002 alone stays halted (not ready, the reason logged
    # and named by /ready). c003's admin does not answer at start-up: it starts, like c001.
    with RealProxySQL(tmp_path / "proxysql") as px:
        await asyncio.to_thread(px.reset, (), [pair_sql(110, 120)])
        async with FakeFleet(fleet([3, 3, 3], net_timeout=0.5)) as fake:
            first, conflicted, unreachable = cluster_settings(fake, tmp_path)
            routers = ((first, px.port, 0), (conflicted, px.port, 100), (unreachable, 1, 200))
            clusters = [
                s.model_copy(update={"router": Settings(
                    **{**s.model_dump(), "router": proxysql_router(px, port, base)}
                ).router})
                for s, port, base in routers
            ]  # fmt: skip
            svc, capture = service(*clusters)
            async with svc:
                running = [svc.runtimes[name] for name in ("c001", "c003")]
                await eventually(
                    lambda: all(rt.ready()[0] for rt in running), 20, "c001 and c003 ready"
                )
                ok, reason = svc.ready()
                assert not ok and reason.startswith("c002: halted: refused at start-up:")
                assert "writer_hostgroup=110 reader_hostgroup=120" in reason
                assert svc.alive()[0]  # held on purpose: no restart of the whole process
                assert svc.status()["clusters"]["c002"]["halted"] in reason
                fake.kill("c001n1")  # the others keep their failover
                await eventually(lambda: finished(capture, "c001"), 30, "c001's failover")
                (done,) = finished(capture, "c001")
                assert done["ok"], done
        (refused,) = capture.of("startup_refused")
        assert refused["cluster"] == "c002" and "fights hacontrol" in refused["reason"]
        assert not [r for r in capture.records if r.get("cluster") == "c002" and
                    r["event"] in ("started", "decision", "plan_started")]  # fmt: skip
