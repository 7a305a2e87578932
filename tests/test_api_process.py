"""The API in a process of its own (``hacontrol.api_process``), with a fake controller handle:
reads and commands cross the channel, the process is restarted when it dies, dies with its
parent, never holds the controller's secrets, and a stuck controller makes it answer 503."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import pytest

from hacontrol import api_process
from hacontrol.api_process import ApiProcess
from hacontrol.api_rpc import HEADER, FrameError, encode, read_frame
from hacontrol.jsonlog import JsonLog
from tests.fakes import TOKEN, FakeHandle, api_settings, log_lines
from tests.support import eventually

ROOT = Path(__file__).resolve().parent.parent


def gone(pid: int) -> bool:
    """The process exited (a zombie waiting for a reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, await r.text()


async def test_reads_and_commands_cross_to_the_controller(monkeypatch):
    monkeypatch.setenv("HACONTROL_MYSQL__PASSWORD", "database-password-never-in-the-api")
    handle, stream = FakeHandle(), io.StringIO()
    log = JsonLog("t", stream=stream, secrets=[TOKEN])
    api = ApiProcess(api_settings(), handle, log, nice=7)
    host, port = await api.start()
    pid = api.pid
    try:
        url = f"http://{host}:{port}"
        assert pid is not None and pid != os.getpid()
        assert (await get(url + "/health"))[0] == 200
        status, text = await get(url + "/status")
        assert status == 200 and '"primary":"node1"' in text and handle.status_calls == 1
        assert "hacontrol_node_up" in (await get(url + "/metrics"))[1]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/maintenance", json={"node": "node3", "on": True},
                                 headers=auth) as r:  # fmt: skip
                assert r.status == 200 and (await r.json())["detail"] == {
                    "node": "node3",
                    "on": True,
                }
            async with http.post(url + "/pause", headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
        assert [(c.command, c.node, c.on) for c in handle.commands] == [
            ("maintenance", "node3", True)
        ]
        # Niced as asked; no secret on its command line or in its environment.
        assert os.getpriority(os.PRIO_PROCESS, pid) == (os.getpriority(os.PRIO_PROCESS, 0) + 7)
        seen = await asyncio.to_thread(_command_line_and_environment, pid)
        assert TOKEN.encode() not in seen and b"database-password" not in seen
    finally:
        await api.stop()
    assert gone(pid) and api.pid is None
    events = [e["event"] for e in log_lines(stream)]
    assert events[0] == "api_listening" and events[-1] == "api_stopped", events
    assert "api_request" in events  # the process's log lines are written by the controller


async def test_every_field_of_a_command_crosses_the_channel():
    # A rebuild's dry run once arrived without its dry_run (and source): a rebuild started.
    handle = FakeHandle()
    api = ApiProcess(api_settings(), handle, JsonLog("t", stream=io.StringIO()))
    host, port = await api.start()
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        body = {"node": "node3", "from": "node2", "dry_run": True}
        url = f"http://{host}:{port}/rebuild"
        async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=auth) as r:
            assert r.status == 200, await r.text()
    finally:
        await api.stop()
    assert [(c.command, c.node, c.source, c.dry_run) for c in handle.commands] == [
        ("rebuild", "node3", "node2", True)
    ]
    message = {"command": "rebuild", "node": "node3", "source": None, "dry_run": "yes"}
    assert api_process._operator_command(message) is None  # a wrong type is refused


async def test_a_killed_api_process_is_restarted_on_the_same_address(monkeypatch):
    monkeypatch.setattr(api_process, "BACKOFF", 0.1)
    handle, stream, states = FakeHandle(), io.StringIO(), []
    api = ApiProcess(api_settings(), handle, JsonLog("t", stream=stream),
                     on_state=lambda up, restarts: states.append((up, restarts)))  # fmt: skip
    host, port = await api.start()
    try:
        first = api.pid
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: api.pid not in (None, first), 20, "a new API process")
        status, _ = await get(f"http://{host}:{port}/health")
        assert status == 200
        assert await asyncio.to_thread(gone, first)
        (exited,) = [e for e in log_lines(stream) if e["event"] == "api_process_exited"]
        assert exited["level"] == "error" and exited["exit_code"] == -9 and exited["pid"] == first
        assert states == [(True, 0), (False, 1), (True, 1)]
    finally:
        await api.stop()


async def test_an_address_in_use_is_an_oserror_and_leaves_no_process():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = api_settings().model_copy(update={"port": port})
        api = ApiProcess(settings, FakeHandle(), JsonLog("t", stream=io.StringIO()))
        with pytest.raises(OSError, match="address already in use"):
            await api.start()
    assert api.pid is None
    await api.stop()  # nothing to stop: no error


async def test_a_stuck_controller_makes_the_api_answer_503_not_hang():
    handle = FakeHandle()
    api = ApiProcess(api_settings(), handle, JsonLog("t", stream=io.StringIO()))
    host, port = await api.start()
    try:
        asked = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # started before the loop stops
            health = pool.submit(_blocking_get, f"http://{host}:{port}/health")
            openapi = pool.submit(_blocking_get, f"http://{host}:{port}/openapi.json")
            time.sleep(3.0)  # noqa: ASYNC251 (the controller's loop stuck: it reads nothing)
        (status, body, _), (o_status, _, o_at) = health.result(), openapi.result()
        assert status == 503 and "did not answer" in body
        assert o_status == 200 and o_at - asked < 2.5  # served by the API process alone
        assert (await get(f"http://{host}:{port}/health"))[0] == 200  # and back once it answers
    finally:
        await api.stop()


def _command_line_and_environment(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()


def _blocking_get(url: str) -> tuple[int, str, float]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode(), time.monotonic()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), time.monotonic()


PARENT = textwrap.dedent(
    """
    import asyncio, io
    from hacontrol.api_process import ApiProcess
    from hacontrol.jsonlog import JsonLog
    from tests.fakes import FakeHandle, api_settings

    async def main():
        api = ApiProcess(api_settings(), FakeHandle(), JsonLog("t", stream=io.StringIO()))
        await api.start()
        print(api.pid, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_the_api_process_dies_when_its_parent_is_killed():
    parent = subprocess.Popen(  # noqa: ASYNC220 (a parent to kill, not waited for here)
        [sys.executable, "-c", PARENT], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(parent.stdout.readline), 30)
        child = int(line)
        assert not gone(child)
        parent.kill()
        parent.wait()
        await eventually(lambda: gone(child), 10, "the API process gone with its parent")
    finally:
        parent.kill()
        parent.wait()


async def test_frames_round_trip_and_bad_frames_are_refused():
    reader = asyncio.StreamReader()
    message = {"t": "read", "id": 7, "path": "/status"}
    reader.feed_data(encode(message) + encode({"t": "log", "fields": {"x": "é"}}))
    assert await read_frame(reader, 1 << 10) == message
    assert (await read_frame(reader, 1 << 10))["fields"] == {"x": "é"}
    reader.feed_eof()
    assert await read_frame(reader, 1 << 10) is None  # a clean end
    for raw, problem in [
        (encode({"t": "x", "pad": "a" * 100}), "more than 64"),
        (HEADER.pack(2) + b"[]", "not an object"),
        (HEADER.pack(3) + b"\xff\xfe{", "not JSON"),
        (HEADER.pack(10) + b"{}", "inside a frame"),
        (b"\x00\x00", "inside a frame header"),
    ]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        with pytest.raises(FrameError, match=problem):
            await read_frame(reader, 64)


async def test_without_a_process_the_api_is_served_from_a_thread(monkeypatch, tmp_path):
    unrunnable = tmp_path / "python"
    unrunnable.write_text("")  # not executable: as a root-only interpreter is for nobody
    monkeypatch.setattr(sys, "executable", str(unrunnable))
    stream = io.StringIO()
    api = ApiProcess(api_settings(), FakeHandle(), JsonLog("t", stream=stream))
    host, port = await api.start()
    try:
        assert api.pid is None
        assert (await get(f"http://{host}:{port}/health"))[0] == 200
        (warning,) = [e for e in log_lines(stream) if e["event"] == "api_process_unavailable"]
        assert warning["level"] == "warning" and "Permission denied" in warning["error"]
    finally:
        await api.stop()
    assert [e["event"] for e in log_lines(stream)][-1] == "api_stopped"
