"""The HTTP API on a real aiohttp server (127.0.0.1, any free port) with a fake controller
handle, and the operator CLI commands against that server."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hacontrol import operator_cli
from hacontrol.api import ApiServer, parse_command
from hacontrol.api_guard import ConnectionTable, RateLimiter, connection_cap, retry_after
from hacontrol.events import CommandResult, OperatorCommand
from hacontrol.jsonlog import JsonLog
from tests.fakes import (
    TOKEN,
    FakeHandle,
    api_settings,
    closed_by_peer,
    idle_connections,
    log_lines,
    raw_http,
    run_cli,
    start_api,
    threaded_api,
)

WRONG = "not-the-token-at-all"


class Api:
    def __init__(
        self, server: ApiServer, handle: FakeHandle, log: io.StringIO, url: str, http: Any
    ) -> None:
        self.server, self.handle, self.log, self.url, self.http = server, handle, log, url, http

    async def post(
        self, path: str, body: Any = None, *, token: str | None = TOKEN, raw: bytes | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        async with self.http.post(self.url + path, data=data, headers=headers) as r:
            return r.status, await r.json()

    async def get(self, path: str) -> tuple[int, Any, str]:
        async with self.http.get(self.url + path) as r:
            text = await r.text()
            return r.status, text, r.headers["Content-Type"]


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    handle = FakeHandle()
    server, stream, url = await start_api(handle)
    async with aiohttp.ClientSession() as http:
        yield Api(server, handle, stream, url, http)
    await server.stop()


# -- read-only endpoints ----------------------------------------------------------------------


async def test_listening_line_and_bound_port(api: Api):
    listening = [e for e in log_lines(api.log) if e["event"] == "api_listening"]
    assert len(listening) == 1
    assert listening[0]["host"] == "127.0.0.1"
    assert listening[0]["port"] == api.server.address[1] > 0
    assert listening[0]["commands_enabled"] is True


async def test_health_and_ready(api: Api):
    status, text, _ = await api.get("/health")
    assert (status, json.loads(text)) == (200, {"ok": True, "reason": "decision task running"})
    api.handle.alive_state = (False, "decision task finished")
    status, text, _ = await api.get("/health")
    assert (status, json.loads(text)) == (503, {"ok": False, "reason": "decision task finished"})

    status, text, _ = await api.get("/ready")
    assert status == 200 and json.loads(text)["ok"] is True
    api.handle.ready_state = (False, "node3 not probed yet")
    status, text, _ = await api.get("/ready")
    assert (status, json.loads(text)) == (503, {"ok": False, "reason": "node3 not probed yet"})


async def test_status_is_the_handles_json(api: Api):
    status, text, content_type = await api.get("/status")
    assert status == 200
    assert content_type.startswith("application/json")
    body = json.loads(text)
    assert body["view"]["primary"] == "node1"
    assert [n["name"] for n in body["view"]["nodes"]] == ["node1", "node2", "node3"]
    assert body["state"] == {"paused": False, "halt": None}


async def test_the_status_page_is_html_from_the_status(api: Api):
    """Served without a token, from the handle's status (a document of another shape than
    the runtime's here: what it lacks is shown empty, never a 500)."""
    calls = api.handle.status_calls
    status, text, content_type = await api.get("/")
    assert status == 200 and content_type == "text/html; charset=utf-8"
    assert text.startswith("<!doctype html>") and '<span id="primary">none</span>' in text
    assert api.handle.status_calls == calls + 1


async def test_metrics_parse_as_prometheus_text(api: Api):
    status, text, content_type = await api.get("/metrics")
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(text)}
    up = {s.labels["node"]: s.value for s in families["hacontrol_node_up"].samples}
    assert up == {"node1": 1.0, "node2": 1.0, "node3": 1.0}
    assert families["hacontrol_failovers"].type == "counter"


async def test_unknown_path_and_wrong_method_answer_json(api: Api):
    status, text, _ = await api.get("/nope")
    assert status == 404 and json.loads(text)["ok"] is False
    status, text, _ = await api.get("/switchover")
    assert status == 405 and json.loads(text)["ok"] is False
    assert api.handle.commands == []


# -- commands ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "command", "node", "on"),
    [
        ("/switchover", {"to": "node2"}, "switchover", "node2", None),
        ("/switchover", None, "switchover", None, None),
        ("/maintenance", {"node": "node3", "on": True}, "maintenance", "node3", True),
        ("/maintenance", {"node": "node3", "on": False}, "maintenance", "node3", False),
        ("/ack", None, "ack", None, None),
        ("/pause", {}, "pause", None, None),
        ("/resume", None, "resume", None, None),
    ],
)
async def test_each_command_reaches_the_controller(api: Api, path, body, command, node, on):
    status, answer = await api.post(path, body)
    assert status == 200
    assert answer == {
        "ok": True,
        "message": f"{command} accepted",
        "detail": {"node": node, "on": on},
    }
    [cmd] = api.handle.commands
    assert (cmd.command, cmd.node, cmd.on) == (command, node, on)
    assert cmd.at > 0


async def test_rebuild_reaches_the_controller_with_its_source_and_dry_run(api: Api):
    status, _ = await api.post("/rebuild", {"node": "node3", "from": "node2", "dry_run": True})
    assert status == 200
    status, _ = await api.post("/rebuild", {"node": "node1"})
    assert status == 200
    first, second = api.handle.commands
    assert (first.command, first.node, first.source, first.dry_run) == (
        "rebuild", "node3", "node2", True,
    )  # fmt: skip
    assert (second.node, second.source, second.dry_run) == ("node1", None, False)


async def test_refusal_is_409_with_the_controllers_message(api: Api):
    api.handle.answers["switchover"] = CommandResult(
        False, "refused: node2 is 12 s behind", {"candidates": ["node3"]}
    )
    status, answer = await api.post("/switchover", {"to": "node2"})
    assert status == 409
    assert answer == {
        "ok": False,
        "message": "refused: node2 is 12 s behind",
        "detail": {"candidates": ["node3"]},
    }


@pytest.mark.parametrize(
    "header",
    [
        None,
        f"Bearer {WRONG}",
        f"Basic {TOKEN}",
        "Bearer",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
    ],
)
async def test_no_or_wrong_token_is_401_and_nothing_is_sent(api: Api, header):
    headers = {"Authorization": header} if header is not None else {}
    async with api.http.post(api.url + "/pause", data=b"", headers=headers) as r:
        status, text = r.status, await r.text()
    assert status == 401
    assert json.loads(text)["ok"] is False
    assert TOKEN not in text
    assert api.handle.commands == []


async def test_commands_are_disabled_without_a_configured_token():
    handle = FakeHandle()
    server, stream, url = await start_api(handle, token=None)
    try:
        async with aiohttp.ClientSession() as http:
            for header in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer x"}):
                async with http.post(url + "/ack", headers=header) as r:
                    assert r.status == 401
                    assert "no API token configured" in (await r.json())["message"]
            async with http.get(url + "/health") as r:  # reads still work
                assert r.status == 200
    finally:
        await server.stop()
    assert handle.commands == []
    assert [e["commands_enabled"] for e in log_lines(stream) if e["event"] == "api_listening"] == [
        False
    ]


@pytest.mark.parametrize(
    ("path", "raw", "message"),
    [
        ("/switchover", b"{not json", "not valid JSON"),
        ("/switchover", b'["node2"]', "must be a JSON object"),
        ("/switchover", b'{"to": 2}', "'to' must be a non-empty string"),
        ("/switchover", b'{"to": ""}', "'to' must be a non-empty string"),
        ("/switchover", b'{"to": null}', "'to' is null"),
        ("/switchover", b'{"node": "node2"}', "unknown field(s) node"),
        ("/maintenance", b'{"node": "node3"}', "maintenance needs"),
        ("/maintenance", b'{"node": "node3", "on": "yes"}', "'on' must be true or false"),
        ("/maintenance", b'{"node": "node3", "on": 1}', "'on' must be true or false"),
        ("/maintenance", b'{"node": null, "on": true}', "'node' must be a non-empty string"),
        ("/ack", b'{"force": true}', "unknown field(s) force"),
        ("/rebuild", b"{}", "rebuild needs"),
        ("/rebuild", b'{"node": "node3", "from": null}', "'from' is null"),
        ("/rebuild", b'{"node": "node3", "from": 3}', "'from' must be a non-empty string"),
        ("/rebuild", b'{"node": "no de"}', "'node' is not a node name"),
        ("/rebuild", b'{"node": "node3", "dry_run": "yes"}', "'dry_run' must be true or false"),
        ("/rebuild", b'{"node": "node3", "yes": true}', "unknown field(s) yes"),
    ],
)
async def test_malformed_body_is_400_and_nothing_is_sent(api: Api, path, raw, message):
    status, answer = await api.post(path, raw=raw)
    assert status == 400
    assert answer["ok"] is False
    assert message in answer["message"]
    assert api.handle.commands == []


async def test_token_is_checked_before_the_body(api: Api):
    status, answer = await api.post("/switchover", raw=b"{not json", token=WRONG)
    assert (status, answer["message"]) == (401, "wrong token")


async def test_controller_that_never_answers_is_504():
    handle = FakeHandle(hang=True)
    server, stream, url = await start_api(handle, timeout=0.2)
    try:
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with http.post(url + "/resume", headers=headers) as r:
                status, answer = r.status, await r.json()
    finally:
        await server.stop()
    assert status == 504
    assert "did not answer within 0.2 s" in answer["message"]
    assert [c.command for c in handle.commands] == ["resume"]  # it was queued
    assert [e["status"] for e in log_lines(stream) if e["event"] == "api_request"] == [504]


async def test_one_log_line_per_request_and_never_the_token(api: Api):
    await api.post("/ack", None)
    await api.post("/ack", None, token=WRONG)
    await api.post("/maintenance", raw=b"{bad", token=TOKEN)
    await api.get("/metrics")
    text = api.log.getvalue()
    assert TOKEN not in text
    assert WRONG not in text
    requests = [
        (e["method"], e["path"], e["status"])
        for e in log_lines(api.log)
        if e["event"] == "api_request"
    ]
    assert requests == [
        ("POST", "/ack", 200),
        ("POST", "/ack", 401),
        ("POST", "/maintenance", 400),
        ("GET", "/metrics", 200),
    ]


def test_parse_command_is_pure():
    assert parse_command("maintenance", b' {"node": "n3", "on": true} ', 5.0) == OperatorCommand(
        at=5.0, command="maintenance", node="n3", on=True
    )
    assert parse_command("switchover", b"", 1.0) == OperatorCommand(at=1.0, command="switchover")


# -- the operator CLI against the real server ---------------------------------------------------


def settings_file(tmp_path: Path, *, port: int, token: str | None) -> Path:
    token_line = f'token = "{token}"' if token is not None else ""
    path = tmp_path / "settings.toml"
    path.write_text(
        f"""
[cluster]
name = "t"
[[nodes]]
name = "node1"
host = "127.0.0.1"
port = 3301
[[nodes]]
name = "node2"
host = "127.0.0.1"
port = 3302
[[nodes]]
name = "node3"
host = "127.0.0.1"
port = 3303
[mysql]
password = "controller-pw"
replication_password = "replication-pw"
[api]
host = "127.0.0.1"
port = {port}
{token_line}
"""
    )
    return path


@pytest.fixture
def no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(operator_cli.TOKEN_ENV, raising=False)
    monkeypatch.delenv("HACONTROL_CONFIG", raising=False)


async def test_cli_switchover_with_settings_file(api: Api, tmp_path, capsys, no_env_token):
    config = settings_file(tmp_path, port=api.server.address[1], token=TOKEN)
    code = await run_cli(["switchover", "--to", "node2", "--config", str(config)])
    assert code == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "switchover accepted"
    assert json.loads(out.split("\n", 1)[1]) == {"node": "node2", "on": None}
    [cmd] = api.handle.commands
    assert (cmd.command, cmd.node) == ("switchover", "node2")


async def test_cli_maintenance_with_url_and_env_token(api: Api, capsys, monkeypatch):
    monkeypatch.setenv(operator_cli.TOKEN_ENV, TOKEN)
    monkeypatch.setenv("HACONTROL_CONFIG", "/nonexistent/settings.toml")  # must not be read
    assert await run_cli(["maintenance", "node3", "off", "--url", api.url + "/"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "maintenance accepted"
    assert await run_cli(["maintenance", "node3", "on", "--url", api.url, "--json"]) == 0
    assert [(c.command, c.node, c.on) for c in api.handle.commands] == [
        ("maintenance", "node3", False),
        ("maintenance", "node3", True),
    ]
    assert json.loads(capsys.readouterr().out) == {
        "ok": True,
        "message": "maintenance accepted",
        "detail": {"node": "node3", "on": True},
    }


@pytest.mark.parametrize("command", ["ack", "pause", "resume"])
async def test_cli_simple_commands(api: Api, command, monkeypatch):
    monkeypatch.setenv(operator_cli.TOKEN_ENV, TOKEN)
    assert await run_cli([command, "--url", api.url]) == 0
    assert [c.command for c in api.handle.commands] == [command]


async def test_cli_refused_exits_1(api: Api, capsys, monkeypatch):
    monkeypatch.setenv(operator_cli.TOKEN_ENV, TOKEN)
    api.handle.answers["pause"] = CommandResult(False, "already paused")
    assert await run_cli(["pause", "--url", api.url]) == 1
    assert capsys.readouterr().out.strip() == "already paused"


async def test_cli_wrong_token_exits_2(api: Api, capsys, monkeypatch):
    monkeypatch.setenv(operator_cli.TOKEN_ENV, WRONG)
    assert await run_cli(["ack", "--url", api.url]) == 2
    assert "401: wrong token" in capsys.readouterr().err
    assert api.handle.commands == []


async def test_cli_without_any_token_exits_2_and_sends_nothing(
    api: Api, tmp_path, capsys, no_env_token
):
    config = settings_file(tmp_path, port=api.server.address[1], token=None)
    assert await run_cli(["ack", "--config", str(config)]) == 2
    assert "no API token" in capsys.readouterr().err
    assert api.handle.commands == []


async def test_cli_config_errors_exit_2(tmp_path, capsys, no_env_token):
    assert await run_cli(["ack", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "file not found" in capsys.readouterr().err
    config = settings_file(tmp_path, port=0, token=TOKEN)
    assert await run_cli(["ack", "--config", str(config)]) == 2
    assert "--url" in capsys.readouterr().err


async def test_cli_unreachable_api_exits_3(capsys, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(operator_cli.TOKEN_ENV, TOKEN)
    assert await run_cli(["resume", "--url", f"http://127.0.0.1:{port}"]) == 3
    assert "cannot reach the API" in capsys.readouterr().err


async def test_cli_controller_timeout_exits_3(capsys, monkeypatch):
    handle = FakeHandle(hang=True)
    server, _, url = await start_api(handle, timeout=0.2)
    monkeypatch.setenv(operator_cli.TOKEN_ENV, TOKEN)
    try:
        assert await run_cli(["switchover", "--url", url]) == 3
    finally:
        await server.stop()
    assert "504" in capsys.readouterr().err


class BrokenStatus(FakeHandle):
    def status(self) -> dict[str, Any]:
        raise RuntimeError("view not built")


async def test_a_failing_handle_is_500_and_the_server_keeps_serving():
    handle = BrokenStatus()
    server, stream, url = await start_api(handle)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/status") as r:
                assert r.status == 500
                assert (await r.json())["message"] == "internal error: RuntimeError"
            async with http.get(url + "/health") as r:
                assert r.status == 200
    finally:
        await server.stop()
    errors = [e for e in log_lines(stream) if e["event"] == "api_error"]
    assert [(e["path"], e["error"]) for e in errors] == [
        ("/status", "RuntimeError: view not built")
    ]


# -- malformed requests: a 4xx with the reason, never a 500, never an echo ---------------------


def post_raw(path: str, headers: bytes, body: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n".encode()
        + headers
        + b"\r\n"
        + body
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (b'{"to":' * 3000 + b'"x"' + b"}" * 3000, "nested too deeply"),
        (b'{"to": "node2", "to": "node3"}', "appears twice"),
        (b'{"to": "\xff\xfe"}', "not UTF-8"),
        (b'{"to": 1' + b"1" * 5000 + b"}", "not valid JSON"),
        (b'{"to": "node2; DROP"}', "is not a node name"),
        (b'{"to": NaN}', "must be a non-empty string"),
        ('{"to": "n\u00f6de"}'.encode(), "is not a node name"),
        (b"\x0b", "not valid JSON"),  # found by the fuzzer, as was the next one
        (b" ", "not valid JSON"),
    ],
)
async def test_hostile_bodies_are_400(api: Api, body, message):
    status, answer = await api.post("/switchover", raw=body)
    assert (status, answer["ok"]) == (400, False)
    assert message in answer["message"]
    assert api.handle.commands == []


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        ("Bearer s3cr\u00e9t".encode(), 401),  # UTF-8 bytes
        (b"Bearer \xff\xfe\x80", 401),  # not UTF-8 at all
        (b"Bearer " + TOKEN.encode() * 100, 401),  # 1,800 bytes: refused by us
        (b"Bearer " + TOKEN.encode() + b"\x01", 400),  # refused by the HTTP parser
    ],
)
async def test_hostile_authorization_headers_are_refused_without_echo(
    api: Api, authorization, expected
):
    request = post_raw("/pause", b"Authorization: " + authorization + b"\r\n")
    status, _, body = await asyncio.to_thread(raw_http, api.server.address[1], request)
    assert status == expected
    assert json.loads(body)["ok"] is False
    assert TOKEN.encode() not in body and b"s3cr" not in body
    assert api.handle.commands == []


async def test_oversize_authorization_is_400_and_no_token_text_anywhere(api: Api, capfd):
    request = post_raw("/pause", b"Authorization: Bearer " + TOKEN.encode() * 1000 + b"\r\n")
    status, _, body = await asyncio.to_thread(raw_http, api.server.address[1], request)
    assert status == 400
    assert json.loads(body) == {
        "ok": False,
        "message": "request line or header longer than 8190 bytes",
    }
    out, err = capfd.readouterr()
    for text in (body.decode(), out, err, api.log.getvalue()):
        assert TOKEN[:6] not in text
    assert api.handle.commands == []


async def test_body_limits(api: Api):
    port = api.server.address[1]
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    status, _, _ = await asyncio.to_thread(
        raw_http, port, post_raw("/switchover", auth, b"{" + b" " * 70_000 + b"}")
    )
    assert status == 413
    chunked = (
        b"POST /switchover HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n" + auth + b"\r\n"
    )
    chunk = b" " * 30_000
    chunked += (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 3 + b"0\r\n\r\n"
    status, _, _ = await asyncio.to_thread(raw_http, port, chunked)
    assert status == 413
    assert api.handle.commands == []


async def test_a_body_that_never_comes_is_408():
    handle = FakeHandle()
    server, _, _ = await start_api(handle, configure=lambda s: setattr(s, "body_timeout", 0.3))
    try:
        request = post_raw("/pause", f"Authorization: Bearer {TOKEN}\r\n".encode())
        request = request.replace(b"Content-Length: 0", b"Content-Length: 10")
        status, _, body = await asyncio.to_thread(raw_http, server.address[1], request)
    finally:
        await server.stop()
    assert status == 408 and "not sent within" in json.loads(body)["message"]
    assert handle.commands == []


async def test_head_options_and_wrong_methods(api: Api):
    port = api.server.address[1]
    status, headers, body = await asyncio.to_thread(
        raw_http, port, b"HEAD /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert (status, body) == (200, b"")
    status, headers, body = await asyncio.to_thread(
        raw_http, port, b"DELETE /status HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, _, body = await asyncio.to_thread(raw_http, port, b"\x16\x03\x01\x02\x00\r\n\r\n")
    assert status == 400 and json.loads(body)["ok"] is False


async def test_openapi_document_is_served(api: Api):
    status, text, content_type = await api.get("/openapi.json")
    assert status == 200 and content_type.startswith("application/json")
    doc = json.loads(text)
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/", "/health", "/ready", "/status", "/metrics", "/openapi.json",
        "/switchover", "/maintenance", "/rebuild", "/ack", "/pause", "/resume",
    }  # fmt: skip


# -- limits: rate, connections, idle time ------------------------------------------------------


async def test_requests_without_a_token_are_rate_limited_per_client():
    handle = FakeHandle()
    server, stream, url = await start_api(
        handle, rate_limit=1.0, rate_burst=5, configure=lambda s: setattr(s, "summary_every", 0.3)
    )
    try:
        async with aiohttp.ClientSession() as http:
            statuses = []
            for _ in range(8):
                async with http.get(url + "/metrics") as r:
                    statuses.append(r.status)
                    if r.status == 429:
                        assert int(r.headers["Retry-After"]) >= 1
            assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
            async with http.get(url + "/health") as r:  # a budget of its own
                assert r.status == 200
            bad = {"Authorization": "Bearer wrong"}
            async with http.post(url + "/pause", headers=bad) as r:  # a wrong token spends it
                assert r.status == 429
            good = {"Authorization": f"Bearer {TOKEN}"}
            for _ in range(3):  # the right token is never limited
                async with http.post(url + "/pause", headers=good) as r:
                    assert r.status == 200
            await asyncio.sleep(0.6)
    finally:
        await server.stop()
    lines = log_lines(stream)
    requests = [e for e in lines if e["event"] == "api_request"]
    assert all(e["status"] != 429 for e in requests)  # not one line per refusal
    [summary, *_] = [e for e in lines if e["event"] == "api_throttled"]
    assert summary["level"] == "warning"
    assert summary["requests_refused"] >= 4 and summary["top_clients"]["127.0.0.1"] >= 4


async def test_past_the_connection_limit_the_longest_idle_connection_makes_room():
    handle = FakeHandle()
    server, _, url = await start_api(handle, max_connections=8)
    port = server.address[1]
    try:
        async with idle_connections(port, 8) as socks:
            await asyncio.sleep(0.2)
            async with aiohttp.ClientSession() as http, http.get(url + "/health") as r:
                assert r.status == 200
            await asyncio.sleep(0.2)
            assert closed_by_peer(socks[0])  # the oldest idle one
            assert not closed_by_peer(socks[-1])
            assert len(server.connections) <= 8
    finally:
        await server.stop()


async def test_busy_connections_are_never_evicted_and_newcomers_are_refused():
    handle = FakeHandle(hang=True)
    server, _, url = await start_api(handle, max_connections=4, timeout=2.0)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with aiohttp.ClientSession() as http:

            async def command() -> int:
                async with http.post(url + "/pause", headers=headers) as r:
                    return r.status

            busy = [asyncio.create_task(command()) for _ in range(4)]
            await wait_until(lambda: len(handle.commands) == 4)
            status, _, _ = await asyncio.to_thread(
                raw_http, server.address[1], b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            assert status == 0  # closed at once: every slot answers a request
            assert await asyncio.gather(*busy) == [504] * 4  # and those were answered
    finally:
        await server.stop()


async def test_idle_and_slow_connections_are_closed_after_idle_timeout():
    handle = FakeHandle()
    server, _, _ = await start_api(handle, idle_timeout=0.5)
    port = server.address[1]
    try:
        async with idle_connections(port, 2) as (idle, slow):
            slow.send(b"GET /health HTTP/1.1\r\nHost: t\r\n")  # headers never finished
            await wait_until(lambda: closed_by_peer(idle) and closed_by_peer(slow), 5)
    finally:
        await server.stop()


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


# -- isolation from the main loop --------------------------------------------------------------


async def test_reads_are_cached_briefly_and_shared_and_a_command_refreshes_them():
    handle = FakeHandle()
    server, _, url = await start_api(handle, read_ttl=30.0, rate_burst=100)
    try:
        async with aiohttp.ClientSession() as http:

            async def status() -> int:
                async with http.get(url + "/status") as r:
                    return r.status

            assert await asyncio.gather(*(status() for _ in range(20))) == [200] * 20
            assert handle.status_calls == 1
            async with http.post(url + "/ack", headers={"Authorization": f"Bearer {TOKEN}"}):
                pass
            assert await status() == 200
            assert handle.status_calls == 2
    finally:
        await server.stop()


async def test_health_says_when_the_main_loop_is_stuck():
    handle = FakeHandle()
    stream = io.StringIO()
    server = ApiServer(
        api_settings(), handle, JsonLog("t", stream=stream), read_ttl=0.0, main_timeout=0.3
    )
    _, port = await server.start()
    try:
        request = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
        asked = asyncio.get_running_loop().run_in_executor(None, raw_http, port, request)
        time.sleep(1.0)  # noqa: ASYNC251 - the main loop (this test's) is blocked: nobody runs the read
        status, _, body = await asked
    finally:
        await server.stop()
    assert status == 503
    assert json.loads(body) == {
        "ok": False,
        "reason": "the controller's event loop did not answer within 0.3 s",
    }


def test_the_api_serves_from_a_thread_of_its_own():
    handle = FakeHandle()
    with threaded_api(handle) as (server, _, _):
        status, _, _ = raw_http(server.address[1], b"GET /ready HTTP/1.1\r\nHost: t\r\n\r\n")
        assert status == 200
        assert {t.name for t in threading.enumerate()} >= {"hacontrol-api", "fake-main"}
    assert "hacontrol-api" not in {t.name for t in threading.enumerate()}


class InfiniteStatus(FakeHandle):
    def status(self) -> dict[str, Any]:
        return {"recovery_block_seconds_left": float("inf"), "lag": float("nan")}


async def test_status_is_always_strict_json():
    server, _, url = await start_api(InfiniteStatus())
    try:
        async with aiohttp.ClientSession() as http, http.get(url + "/status") as r:
            text = await r.text()
    finally:
        await server.stop()

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    assert json.loads(text, parse_constant=refuse) == {
        "recovery_block_seconds_left": "inf",
        "lag": "nan",
    }


# -- the limits as plain values (hacontrol.api_guard) -----------------------------------------


def test_rate_limiter_buckets_per_client_and_budget():
    now = [0.0]
    limiter = RateLimiter(2.0, 3, clock=lambda: now[0], max_clients=2)
    assert [limiter.wait("a") for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
    assert limiter.wait("a", "health") == 0.0  # a budget of its own
    now[0] = 0.5  # one token back
    assert limiter.wait("a") == 0.0 and limiter.wait("a") > 0
    assert limiter.take_refused() == {"a": 2}
    assert limiter.take_refused() == {}
    limiter.wait("b")
    limiter.wait("c")  # past max_clients: the least recently seen bucket is forgotten
    assert len(limiter._buckets) == 2
    assert retry_after(0.01) == "1" and retry_after(2.5) == "3"


def test_connection_table_evicts_the_longest_idle_and_never_a_busy_one():
    table: ConnectionTable[str] = ConnectionTable(3)
    assert [table.admit(c) for c in "abc"] == [None, None, None]
    table.busy("a")
    assert table.admit("d") == "b"  # a is busy: b is the longest idle
    table.idle("a")  # a answered: now the most recently active
    assert table.admit("e") == "c"
    table.busy("d")
    table.busy("a")
    table.busy("e")
    assert table.admit("f") == "f"  # everyone busy: the newcomer is refused
    assert table.take_counts() == (2, 1)
    table.release("a")
    assert len(table) == 2 and table.admit("g") is None


def test_connection_table_makes_room_out_of_the_heaviest_address():
    table: ConnectionTable[str] = ConnectionTable(5)
    assert table.admit("op", "10.0.0.1") is None
    assert [table.admit(c, "10.0.0.9") for c in "xyzu"] == [None] * 4
    # A newcomer from the operator's address evicts the flood's oldest, not the operator's.
    assert table.admit("op2", "10.0.0.1") == "x"
    assert table.admit("w", "10.0.0.9") == "y"  # the flood evicts its own
    for conn in "zuw":
        table.busy(conn)
    # The flood's connections are all busy: room comes from an address with an idle one.
    assert table.admit("v", "10.0.0.9") == "op"
    assert table.take_counts() == (3, 0)
    table.release("v")
    assert len(table) == 4 and table._per_address == {"10.0.0.1": 1, "10.0.0.9": 3}


def test_connection_cap_keeps_a_reserve_and_raises_the_soft_limit():
    import resource

    cap, soft = connection_cap(10_000, reserve=512)
    now_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == now_soft and (soft == hard or soft >= 65536)
    assert 4 <= cap <= min(10_000, soft - 512)
    assert connection_cap(100)[0] <= 100
