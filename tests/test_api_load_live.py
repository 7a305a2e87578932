"""Serving HTTP never delays a probe, a decision or an action: a real runtime on the sandbox
(its API in a process of its own), flooded from another process (unauthenticated GETs, and
thousands of idle connections re-opened as soon as they are closed), keeps probing on time,
answers /health and operator commands.

The flood is bench/api_load.py's (the figures in bench/README.md come from the same code); the
bounds here are generous, this checks behaviour, not speed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.live import sandbox_settings, service
from tests.support import eventually

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parent.parent / "bench" / "api_load.py"
TOKEN = "load-test-token-0123456789"
INTERVAL = 0.3


def bench():
    spec = importlib.util.spec_from_file_location("api_load", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("get_rate", "idle"), [(800, 0), (0, 3000)], ids=["get-flood", "idle-connections"]
)
async def test_probes_health_and_commands_keep_their_pace_under_an_api_flood(
    sandbox, get_rate, idle
):
    load = bench()
    settings = sandbox_settings(sandbox, interval=INTERVAL)
    api = settings.api.model_copy(update={"token": SecretStr(TOKEN), "max_connections": 128})
    svc, _ = service(settings.model_copy(update={"api": api}))
    rt = svc.runtime(None)
    async with svc:
        await eventually(lambda: rt.controller.view.quorum.ok, 10, "quorum")
        host, port = svc.api.address
        url = f"http://{host}:{port}"
        obs = load.Observer(url, TOKEN)
        original = rt.controller.handle

        def handle(event):
            obs.on_event(event)
            return original(event)

        rt.controller.handle = handle
        sampler = asyncio.create_task(obs.sample_lag())
        flood = load.start_flood(url, get_rate=get_rate, idle=idle, seconds=60, source="127.0.0.2")
        try:
            await asyncio.sleep(1.5)  # the flood reaches its pace
            obs.reset()
            clients = obs.clients()
            await asyncio.sleep(4.0)
            await asyncio.to_thread(obs.stop_clients, clients)
            open_files = len(os.listdir("/proc/self/fd"))
            api_open_files = len(os.listdir(f"/proc/{svc.api.pid}/fd"))
        finally:
            got = await asyncio.to_thread(load.stop_flood, flood)
            sampler.cancel()
    result = load.summary(obs, INTERVAL, 0.0, 4.0)
    if get_rate:  # the rate limit refused most GETs
        assert got["get_answers"].get("429", 0) > 5 * got["get_answers"].get("200", 0) > 0, got
    else:  # the connection limit held: the server closed idle ones to make room
        assert got["connections_closed_by_server"] > 1000, got
    # The API process held at most its 128 connections; the controller holds none of them.
    assert api_open_files < 128 + 64 and open_files < 200, (api_open_files, open_files)
    # Every /health and every command answered, promptly.
    assert obs.health and all(status == 200 and t < 2.0 for status, t in obs.health), obs.health
    assert obs.commands and all(s == 200 and t < 2.0 for s, t in obs.commands), obs.commands
    # The main loop kept its pace: probes on time, no long stall.
    assert result["probes_failed"] == 0
    assert result["probe_gap_max_s"] < 1.6 * INTERVAL, result
    assert result["loop_lag_max_ms"] < 250, result
