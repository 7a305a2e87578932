"""HTTP API of the running controller (aiohttp): health, readiness, status, metrics, commands.

Read-only endpoints need no token: ``GET /health`` (liveness), ``GET /ready`` (readiness),
``GET /status`` (the view as JSON), ``GET /metrics`` (Prometheus text format 0.0.4).

Mutating endpoints need ``Authorization: Bearer <api.token>``, compared in constant time. Without
a configured token they are disabled (401), so a controller is never left open by omission.
Each one turns its body into an ``OperatorCommand`` for the decision task, which is the only
writer of topology and routing, and answers with the controller's ``CommandResult``:

=====================  ==============================  =====================================
endpoint               body (JSON object)              command
=====================  ==============================  =====================================
POST /switchover       ``{"to": "node2"}`` (optional)  switchover (to the best candidate)
POST /maintenance      ``{"node": "n3", "on": true}``  maintenance on/off
POST /ack              none or ``{}``                  ack (clear halt / recovery block)
POST /pause            none or ``{}``                  pause automatic changes
POST /resume           none or ``{}``                  resume
=====================  ==============================  =====================================

Status codes: 200 done, 409 refused by the controller, 400 malformed request (nothing sent to
the controller), 401 no or wrong token (nothing sent), 504 the controller did not answer in
time (the command is queued and may still run: check ``/status`` and the log).

Every request is one ``api_request`` log line (method, path, status, seconds, remote); the
token is never logged nor echoed.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from hacontrol.events import CommandResult, OperatorCommand
from hacontrol.jsonlog import JsonLog
from hacontrol.metrics import CONTENT_TYPE
from hacontrol.settings import ApiSettings

COMMAND_TIMEOUT = 60.0
"""Seconds the API waits for the controller's answer before replying 504."""
MAX_BODY = 64 * 1024


class ControllerHandle(Protocol):
    """What the API needs from the running controller (``service.Runtime`` implements it)."""

    def alive(self) -> tuple[bool, str]:
        """The event loop and the decision task are alive (and why not)."""
        ...

    def ready(self) -> tuple[bool, str]:
        """Every node probed at least once and quorum reached (and why not)."""
        ...

    def status(self) -> dict[str, Any]:
        """JSON-ready status: the view (``status.to_json``) plus controller state."""
        ...

    def metrics_text(self) -> bytes:
        """Prometheus exposition text."""
        ...

    async def command(self, cmd: OperatorCommand) -> CommandResult:
        """Put ``cmd`` on the decision task's queue and wait for its answer."""
        ...


class BadRequest(Exception):
    """The request body is malformed; the message says how."""


# ---------------------------------------------------------------------------------------------
# Request bodies -> commands. Pure: (body bytes) -> OperatorCommand or BadRequest.


def _object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"body must be a JSON object, got {type(data).__name__}")
    return data


def _only(data: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        expected = ", ".join(allowed) if allowed else "none"
        raise BadRequest(f"unknown field(s) {', '.join(unknown)} (expected: {expected})")


def _node_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{field!r} must be a non-empty string (a node name)")
    if len(value) > 64:
        raise BadRequest(f"{field!r} is too long for a node name")
    return value


def parse_command(command: str, raw: bytes, at: float) -> OperatorCommand:
    """The OperatorCommand for ``POST /<command>`` with body ``raw``; BadRequest if malformed."""
    data = _object(raw)
    if command == "switchover":
        _only(data, ("to",))
        target = data.get("to")
        node = None if target is None else _node_name(target, "to")
        return OperatorCommand(at=at, command="switchover", node=node)
    if command == "maintenance":
        _only(data, ("node", "on"))
        if "node" not in data or "on" not in data:
            raise BadRequest('maintenance needs {"node": "<name>", "on": true|false}')
        on = data["on"]
        if not isinstance(on, bool):
            raise BadRequest(f"'on' must be true or false, got {json.dumps(on)}")
        return OperatorCommand(
            at=at, command="maintenance", node=_node_name(data["node"], "node"), on=on
        )
    if command in ("ack", "pause", "resume"):
        _only(data, ())
        return OperatorCommand(at=at, command=command)
    raise BadRequest(f"unknown command {command!r}")


def check_token(header: str | None, token: str | None) -> str | None:
    """None when ``header`` carries the right bearer token, else why not (never the token)."""
    if not token:
        return "no API token configured (api.token / api.token_file): commands are disabled"
    if not header:
        return "missing Authorization: Bearer <token>"
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return "Authorization must be: Bearer <token>"
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return "wrong token"
    return None


# ---------------------------------------------------------------------------------------------
# The server


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, default=str))


def _result(result: CommandResult) -> dict[str, Any]:
    return {"ok": result.ok, "message": result.message, "detail": result.detail}


class ApiServer:
    """``start()`` listens on ``settings.host:settings.port`` and returns the bound address."""

    def __init__(
        self,
        settings: ApiSettings,
        handle: ControllerHandle,
        log: JsonLog,
        *,
        command_timeout: float = COMMAND_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.handle = handle
        self.log = log
        self.command_timeout = command_timeout
        self._clock = clock
        self._token = settings.token.get_secret_value() if settings.token is not None else None
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._log_requests], client_max_size=MAX_BODY)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        for command in ("switchover", "maintenance", "ack", "pause", "resume"):
            app.router.add_post(f"/{command}", self._command_handler(command))
        return app

    async def start(self) -> tuple[str, int]:
        # shutdown_timeout: requests in flight get 1 s at stop, within the service's grace.
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.address = (host, port)
        self.log.emit(
            "api_listening",
            None,
            "info",
            host=host,
            port=port,
            commands_enabled=self._token is not None,
        )
        return host, port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            self.log.emit("api_stopped", None, "info")

    # -- middleware ----------------------------------------------------------------------------

    @web.middleware
    async def _log_requests(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        started = self._clock()
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # 404, 405, 413 from aiohttp: answer in JSON too
            response = _json(exc.status, {"ok": False, "message": exc.reason})
        except Exception as exc:  # a bug: answer 500, keep serving
            self.log.emit(
                "api_error", None, "error", path=request.path, error=f"{type(exc).__name__}: {exc}"
            )
            response = _json(500, {"ok": False, "message": f"internal error: {type(exc).__name__}"})
        status = response.status
        if request.method in ("GET", "HEAD"):
            level = "debug" if status < 500 else "warning"
        else:
            level = "info" if status < 400 else "warning"
        self.log.emit(
            "api_request",
            None,
            level,
            method=request.method,
            path=request.path,
            status=status,
            seconds=round(self._clock() - started, 4),
            remote=request.remote,
        )
        return response

    # -- read-only endpoints -------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        ok, reason = self.handle.alive()
        return _json(200 if ok else 503, {"ok": ok, "reason": reason})

    async def _ready(self, request: web.Request) -> web.Response:
        ok, reason = self.handle.ready()
        return _json(200 if ok else 503, {"ok": ok, "reason": reason})

    async def _status(self, request: web.Request) -> web.Response:
        return _json(200, self.handle.status())

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.handle.metrics_text())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    # -- commands ------------------------------------------------------------------------------

    def _command_handler(self, command: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return await self._command(command, request)

        return handler

    async def _command(self, command: str, request: web.Request) -> web.Response:
        denied = check_token(request.headers.get("Authorization"), self._token)
        if denied is not None:
            return _json(401, {"ok": False, "message": denied})
        try:
            cmd = parse_command(command, await request.read(), self._clock())
        except BadRequest as exc:
            return _json(400, {"ok": False, "message": str(exc)})
        try:
            async with asyncio.timeout(self.command_timeout):
                result = await self.handle.command(cmd)
        except TimeoutError:
            message = (
                f"the controller did not answer within {self.command_timeout:g} s; the command "
                "is queued and may still be carried out: check /status and the log"
            )
            return _json(504, {"ok": False, "message": message})
        return _json(200 if result.ok else 409, _result(result))
