"""The HTTP API of a real runtime on a real sandbox: status, metrics, auth, a command."""

from __future__ import annotations

import os
import signal

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from hacontrol import api_process
from tests.live import healthy_and_idle, sandbox_settings, service
from tests.support import eventually

pytestmark = pytest.mark.integration

TOKEN = "live-api-token"


async def test_api_on_a_real_runtime(sandbox):
    settings = sandbox_settings(sandbox)
    settings = settings.model_copy(
        update={"api": settings.api.model_copy(update={"token": SecretStr(TOKEN)})}
    )
    svc, capture = service(settings)
    rt = svc.runtime(None)
    async with svc:
        host, port = svc.api.address
        base = f"http://{host}:{port}"
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                async with http.get(f"{base}/ready") as r:
                    return r.status == 200

            # Quorum comes with the first probes; the router's membership and the candidates
            # with later ones, and the API answers reads from a cache of READ_TTL: wait for
            # the controller's whole view, then for the API to show it.
            await healthy_and_idle(rt)
            await eventually(ready, 10, "/ready answering 200")
            async with http.get(f"{base}/health") as r:
                assert r.status == 200 and (await r.json())["ok"] is True
            live = await sandbox.live_roles()

            async def whole() -> dict | None:
                async with http.get(f"{base}/status") as r:
                    status = await r.json()
                roles = {n["name"]: n["role"] for n in status["nodes"]}
                membership = status["router"]["membership"] or {}
                return status if roles == live and membership.get("writers") else None

            status = await eventually(whole, 10, "/status with every role and the router")
            assert status["primary"] == "node1"
            assert status["router"]["membership"]["writers"] == ["node1"]
            assert status["if_primary_died_now"]["would_promote"] in ("node2", "node3")
            assert status["controller"]["halt"] is None
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
            families = {f.name: f for f in text_string_to_metric_families(text)}
            up = {s.labels["node"]: s.value for s in families["hacontrol_node_up"].samples}
            assert up == {"node1": 1.0, "node2": 1.0, "node3": 1.0}
            assert "hacontrol_probe_rtt_seconds" in families
            before = len(capture.of("operator_command"))
            async with http.post(f"{base}/pause") as r:
                assert r.status == 401
            async with http.post(f"{base}/pause", headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            assert len(capture.of("operator_command")) == before  # nothing reached it
            assert rt.controller.state.paused is False
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with http.post(f"{base}/pause", headers=auth) as r:
                assert r.status == 200 and (await r.json())["ok"] is True
            assert rt.controller.state.paused is True
            async with http.post(f"{base}/resume", headers=auth) as r:
                assert r.status == 200
    assert TOKEN not in "".join(str(r) for r in capture.records)


async def test_a_killed_api_process_is_restarted_while_probes_go_on(sandbox, monkeypatch):
    monkeypatch.setattr(api_process, "BACKOFF", 0.2)
    svc, capture = service(sandbox_settings(sandbox))
    rt = svc.runtime(None)
    async with svc:
        await eventually(lambda: rt.controller.view.quorum.ok, 10, "quorum")
        host, port = svc.api.address
        first = svc.api.pid
        probes_before = rt.controller.view.nodes["node1"].probes
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: capture.of("api_process_exited"), 10, "the death noticed")
        await eventually(lambda: svc.api.pid not in (None, first), 20, "a new API process")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{host}:{port}/health") as r:
                assert r.status == 200
            async with http.get(f"http://{host}:{port}/metrics") as r:
                text = await r.text()
        # The controller went on probing meanwhile, and counted the restart.
        assert rt.controller.view.nodes["node1"].probes > probes_before
        assert rt.controller.view.quorum.ok
        assert "hacontrol_api_process_restarts_total" in text
        restarts = next(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "hacontrol_api_process_restarts_total"
        )
        assert restarts == 1.0
        (exited,) = capture.of("api_process_exited")
        assert exited["level"] == "error" and exited["pid"] == first
