"""HTTP API of the running controller: health, readiness, status, metrics, commands.

Read-only endpoints need no token: ``GET /`` (the status page, ``hacontrol.statuspage``),
``GET /health`` (liveness), ``GET /ready`` (readiness),
``GET /status`` (the view as JSON), ``GET /metrics`` (Prometheus text format 0.0.4),
``GET /openapi.json`` (this API described, ``hacontrol.api_schema``).

Mutating endpoints need ``Authorization: Bearer <api.token>``, compared in constant time. Without
a configured token they are disabled (401), so a controller is never left open by omission.
Each one turns its body into an ``OperatorCommand`` for the decision task, which is the only
writer of topology and routing, and answers with the controller's ``CommandResult``:

=====================  ==============================  =====================================
endpoint               body (JSON object)              command
=====================  ==============================  =====================================
POST /switchover       ``{"to": "node2"}`` (optional)  switchover (to the best candidate)
POST /maintenance      ``{"node": "n3", "on": true}``  maintenance on/off
POST /rebuild          ``{"node": "n3", "from": "n2"}``  rebuild (``from``, ``dry_run``: optional)
POST /ack              none or ``{}``                  ack (clear halt / recovery block)
POST /pause            none or ``{}``                  pause automatic changes
POST /resume           none or ``{}``                  resume
=====================  ==============================  =====================================

Every command takes ``cluster``: a body field or a query parameter (``?cluster=orders``; both
given, they must agree). It is required only when the process runs several clusters: then a
command without it is refused (400, naming the clusters), and a cluster that is not run here is
404; with one cluster it may be left out.

``{"to": null}`` is refused (400): a client that writes a missing value as null must not move
the primary to a candidate it did not name; leave ``to`` out to let the controller choose.

Status codes: 200 done, 409 refused by the controller, 400 malformed request (nothing sent to
the controller), 404 no such cluster (nothing sent), 401 no or wrong token (nothing sent), 408
body not received in time, 413 body too large, 429 too many requests without a valid token
from this address (``Retry-After``), 503 the controller's event loop did not answer, 504 the
controller did not answer a command in time (it is queued and may still run: check
``/status`` and the log).

Isolation (docs/hardening.md): ``hacontrol run`` serves it from a process of its own
(``hacontrol.api_process``), so accepting, parsing and closing connections spends another
process's CPU and interpreter lock, never the decision loop's. Within that process the server
runs on its own event loop in its own thread (``hacontrol.api_loop``). Reads cross to the
main loop as one short callback (over the process's channel), cached for a fraction of a
second and shared by concurrent requests; commands cross as a coroutine on the main loop.
Connections are limited (``api_guard.ConnectionTable``), a connection must send a whole
request within ``api.idle_timeout``, bodies are at most 64 KiB, headers 8 KiB, and every
request without a valid token spends the client address's rate budget (``/health`` has its
own).

Every answered request is one ``api_request`` line at debug level (commands at info); requests
refused by the rate limit or the connection limit are summed up in one ``api_throttled``
warning a minute at most. The token is never logged nor echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from hacontrol.api_guard import ConnectionTable, RateLimiter, connection_cap, retry_after
from hacontrol.api_loop import CachedRead, LoopThread, MainLoop, MainUnavailable
from hacontrol.api_schema import CLUSTER_NAME, NODE_NAME, document
from hacontrol.api_sites import bound, site_for
from hacontrol.events import CommandResult, OperatorCommand
from hacontrol.jsonlog import JsonLog, dumps
from hacontrol.metrics import CONTENT_TYPE
from hacontrol.settings import ApiSettings
from hacontrol.statuspage import render_page

COMMAND_TIMEOUT = 60.0
"""Seconds the API waits for the controller's answer before replying 504."""
MAX_BODY = 64 * 1024
MAX_HEADER = 8190
"""Bytes of a request line or of one header, at most (aiohttp's own default)."""
MAX_AUTHORIZATION = 1024
BODY_TIMEOUT = 5.0
"""Seconds a client has to send a request body once its headers arrived."""
MAIN_TIMEOUT = 2.0
"""Seconds a read may wait for the main loop before the API answers 503."""
READ_TTL = 0.25
"""Seconds an answer read from the main loop is served again to other requests."""
START_TIMEOUT = 10.0
"""Seconds the API may take to listen at start-up."""
SUMMARY_EVERY = 60.0
"""Seconds between two ``api_throttled`` lines at most."""


class ControllerHandle(Protocol):
    """What the API needs from the running controller (``service.Runtime`` implements it).

    The synchronous methods are called on the main loop's thread, one at a time."""

    clusters: tuple[str, ...]
    """The names of the clusters this process runs (at least one)."""

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

    async def command(self, cmd: OperatorCommand, cluster: str) -> CommandResult:
        """Put ``cmd`` on ``cluster``'s decision task's queue and wait for its answer."""
        ...


class BadRequest(Exception):
    """The request body is malformed; the message says how."""


class NoSuchCluster(Exception):
    """The request names a cluster that this process does not run (404)."""


@dataclass(frozen=True)
class Request:
    """A parsed command: for which cluster (None: not named), and what."""

    cluster: str | None
    command: OperatorCommand


# ---------------------------------------------------------------------------------------------
# Request bodies -> commands. Pure: (body bytes) -> OperatorCommand or BadRequest.


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise BadRequest("a field appears twice in the body")
    return dict(pairs)


def _object(raw: bytes) -> dict[str, Any]:
    if not raw:  # no body; white space alone is not a JSON document
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8 text") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise BadRequest("body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or a number too long to convert
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"body must be a JSON object, got {type(data).__name__}")
    return data


def _only(data: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        expected = ", ".join(allowed) if allowed else "none"
        shown = ", ".join(u[:40] for u in unknown[:5])
        raise BadRequest(f"unknown field(s) {shown} (expected: {expected})")


def _node_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{field!r} must be a non-empty string (a node name)")
    if not re.fullmatch(NODE_NAME, value):
        raise BadRequest(f"{field!r} is not a node name (1 to 64 of A-Z a-z 0-9 _ . : -)")
    return value


def parse_command(command: str, raw: bytes, at: float) -> OperatorCommand:
    """The OperatorCommand for ``POST /<command>`` with body ``raw``; BadRequest if malformed."""
    return parse_request(command, raw, at).command


def parse_request(command: str, raw: bytes, at: float, query_cluster: str | None = None) -> Request:
    """``POST /<command>?cluster=<query_cluster>`` with body ``raw``; BadRequest if malformed.
    ``cluster`` may be a body field or the query parameter; both given, they must agree."""
    data = _object(raw)
    cluster = query_cluster
    if "cluster" in data:
        named = data.pop("cluster")
        if not isinstance(named, str):
            raise BadRequest("'cluster' must be a string (a cluster name)")
        if cluster is not None and named != cluster:
            raise BadRequest("'cluster' in the body and in the query differ")
        cluster = named
    if cluster is not None and not re.fullmatch(CLUSTER_NAME, cluster):
        raise BadRequest("'cluster' is not a cluster name (1 to 64 of A-Z a-z 0-9 _ . -)")
    return Request(cluster, _command_of(command, data, at))


def which_cluster(named: str | None, known: tuple[str, ...]) -> str:
    """The cluster a command is for: the named one, or the only one. BadRequest when none is
    named and there are several, NoSuchCluster when the named one is not run here."""
    if named is None:
        if len(known) == 1:
            return known[0]
        raise BadRequest(f"several clusters: name one with 'cluster' (one of: {', '.join(known)})")
    if named not in known:
        raise NoSuchCluster(f"no cluster {named!r} here (known: {', '.join(known)})")
    return named


def _command_of(command: str, data: dict[str, Any], at: float) -> OperatorCommand:
    if command == "switchover":
        _only(data, ("to",))
        if "to" not in data:
            return OperatorCommand(at=at, command="switchover")
        if data["to"] is None:
            raise BadRequest("'to' is null: name a node, or leave 'to' out to let it choose")
        return OperatorCommand(at=at, command="switchover", node=_node_name(data["to"], "to"))
    if command == "maintenance":
        _only(data, ("node", "on"))
        if "node" not in data or "on" not in data:
            raise BadRequest('maintenance needs {"node": "<name>", "on": true|false}')
        on = data["on"]
        if not isinstance(on, bool):
            raise BadRequest(f"'on' must be true or false, got {dumps(on)[:40]}")
        return OperatorCommand(
            at=at, command="maintenance", node=_node_name(data["node"], "node"), on=on
        )
    if command == "rebuild":
        return _rebuild(data, at)
    if command in ("ack", "pause", "resume"):
        _only(data, ())
        return OperatorCommand(at=at, command=command)
    raise BadRequest(f"unknown command {command!r}")


def _rebuild(data: dict[str, Any], at: float) -> OperatorCommand:
    _only(data, ("node", "from", "dry_run"))
    if "node" not in data:
        raise BadRequest('rebuild needs {"node": "<name>"} (and optionally "from", "dry_run")')
    dry_run = data.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise BadRequest(f"'dry_run' must be true or false, got {dumps(dry_run)[:40]}")
    if "from" in data and data["from"] is None:
        raise BadRequest("'from' is null: name a node, or leave 'from' out to let it choose")
    source = _node_name(data["from"], "from") if "from" in data else None
    node = _node_name(data["node"], "node")
    return OperatorCommand(at=at, command="rebuild", node=node, source=source, dry_run=dry_run)


def check_token(header: str | None, token: str | None) -> str | None:
    """None when ``header`` carries the right bearer token, else why not (never the token)."""
    if not token:
        return "no API token configured (api.token / api.token_file): commands are disabled"
    if not header:
        return "missing Authorization: Bearer <token>"
    if len(header) > MAX_AUTHORIZATION:
        return f"Authorization header longer than {MAX_AUTHORIZATION} characters"
    if not header.isascii() or not header.isprintable():
        return "Authorization header must be printable ASCII"
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return "Authorization must be: Bearer <token>"
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return "wrong token"
    return None


# ---------------------------------------------------------------------------------------------
# Answers


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


def _result(result: CommandResult) -> dict[str, Any]:
    return {"ok": result.ok, "message": result.message, "detail": result.detail}


def _parse_error(exc: BaseException | None) -> str:
    """What was wrong with a request aiohttp could not parse, without any of its bytes."""
    name = type(exc).__name__ if exc is not None else ""
    if name == "LineTooLong":
        return f"request line or header longer than {MAX_HEADER} bytes"
    if name == "BadHttpMethod":
        return "not an HTTP request"
    return "malformed HTTP request"


JSON = "application/json"
HTML = "text/html; charset=utf-8"
Answer = tuple[int, bytes, str]
"""A read's answer as it crosses from the main loop: status, body, content type."""


def _answer(answer: Answer) -> web.Response:
    status, body, content_type = answer
    return web.Response(status=status, body=body, headers={"Content-Type": content_type})


class _QuietHandler(RequestHandler):
    """aiohttp's connection handler, answering requests it cannot parse with a JSON 400 that
    echoes nothing of them (aiohttp's own message quotes the offending bytes: a token)."""

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        text = _parse_error(exc) if status < 500 else "internal error"
        response = _json(status, {"ok": False, "message": text})
        response.force_close()
        return response


def _peer_host(transport: asyncio.Transport) -> str:
    """The client's address (its host, not its port), "" on a unix socket."""
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class _Server(web.Server):
    """aiohttp's low-level server, with every connection admitted by a ConnectionTable."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        table: ConnectionTable[RequestHandler],
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._table = table
        self._handler_kwargs = kwargs

    def __call__(self) -> RequestHandler:
        return _QuietHandler(self, loop=asyncio.get_running_loop(), **self._handler_kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        close = self._table.admit(handler, _peer_host(transport))
        if close is not None:
            close.force_close()

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self._table.release(handler)
        super().connection_lost(handler, exc)


@dataclass(frozen=True)
class _Route:
    method: str
    budget: str
    """Rate-limit budget of requests without a valid token (``health`` keeps its own)."""


COMMANDS = ("switchover", "maintenance", "rebuild", "ack", "pause", "resume")
ROUTES: dict[str, _Route] = {
    "/": _Route("GET", "read"),
    "/health": _Route("GET", "health"),
    "/ready": _Route("GET", "read"),
    "/status": _Route("GET", "read"),
    "/metrics": _Route("GET", "read"),
    "/openapi.json": _Route("GET", "read"),
    **{f"/{command}": _Route("POST", "read") for command in COMMANDS},
}


READS = ("/health", "/ready", "/status", "/", "/metrics")
"""Endpoints answered from the controller's state (cached briefly, ``READ_TTL``)."""


def reads_of(handle: ControllerHandle) -> dict[str, Callable[[], Answer]]:
    """Each read endpoint's answer, computed from ``handle`` (on the main loop's thread)."""

    def probe(fn: Callable[[], tuple[bool, str]]) -> Callable[[], Answer]:
        def read() -> Answer:
            ok, reason = fn()
            return 200 if ok else 503, dumps({"ok": ok, "reason": reason}).encode(), JSON

        return read

    return {
        "/health": probe(handle.alive),
        "/ready": probe(handle.ready),
        "/status": lambda: (200, dumps(handle.status()).encode(), JSON),
        "/": lambda: (200, render_page(handle.status(), time.time()).encode(), HTML),
        "/metrics": lambda: (200, handle.metrics_text(), CONTENT_TYPE),
    }


# ---------------------------------------------------------------------------------------------
# The server


class ApiServer:
    """``start()`` (on the main loop) serves on ``settings.host:settings.port`` (over TLS when
    configured) or on ``settings.socket`` from a thread of its own and returns the bound
    address ((socket path, 0) for a unix socket); ``stop()`` closes it.

    ``hacontrol run`` runs it in a process of its own (``hacontrol.api_process``), where
    ``fetch(path)`` asks the controller for each read and ``handle.command`` forwards commands;
    tests may run it in-process on a handle's synchronous reads."""

    def __init__(
        self,
        settings: ApiSettings,
        handle: ControllerHandle,
        log: JsonLog,
        *,
        command_timeout: float = COMMAND_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        read_ttl: float = READ_TTL,
        main_timeout: float = MAIN_TIMEOUT,
        fetch: Callable[[str], Coroutine[Any, Any, Answer]] | None = None,
    ) -> None:
        self.settings = settings
        self.handle = handle
        self.log = log
        self.command_timeout = command_timeout
        self._clock = clock
        self._read_ttl = read_ttl
        self._main_timeout = main_timeout
        self._fetch = fetch
        self._token = settings.token.get_secret_value() if settings.token is not None else None
        self._thread: LoopThread | None = None
        self._runner: web.ServerRunner | None = None
        self._main: MainLoop | None = None
        self._reads: dict[str, CachedRead[Answer]] = {}
        self.limits = RateLimiter(settings.rate_limit, settings.rate_burst, clock=clock)
        self.connections: ConnectionTable[RequestHandler] = ConnectionTable(
            settings.max_connections
        )
        self.address: tuple[str, int] | None = None
        self.summary_every = SUMMARY_EVERY
        self.body_timeout = BODY_TIMEOUT

    async def start(self) -> tuple[str, int]:
        self._main = MainLoop(asyncio.get_running_loop())
        cap, fd_limit = connection_cap(self.settings.max_connections)
        self.connections.limit = cap
        thread = LoopThread("hacontrol-api")
        thread.start()
        try:
            # Waited for without yielding (a bind takes a millisecond): start() keeps the
            # old contract that nothing else runs on the main loop meanwhile; the service
            # installs its signal handlers right after it.
            self.address = thread.run(self._listen()).result(START_TIMEOUT)
        except BaseException:
            thread.stop()
            raise
        self._thread = thread
        host, port = self.address
        self.log.emit(
            "api_listening",
            None,
            "info",
            host=host,
            port=port,
            tls=self.settings.tls_cert is not None,
            socket=self.settings.socket is not None,
            commands_enabled=self._token is not None,
            max_connections=cap,
            open_files_limit=fd_limit,
        )
        return self.address

    async def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(thread.run(self._close()))
        await asyncio.to_thread(thread.stop)
        self.log.emit("api_stopped", None, "info")

    # -- on the API's own loop -----------------------------------------------------------------

    async def _listen(self) -> tuple[str, int]:
        quiet = logging.getLogger("hacontrol.api.aiohttp")
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
        server = _Server(
            self._dispatch,
            self.connections,
            keepalive_timeout=self.settings.idle_timeout,
            max_line_size=MAX_HEADER,
            max_field_size=MAX_HEADER,
            logger=quiet,
            access_log=None,
        )
        # shutdown_timeout: requests in flight get 1 s at stop, within the service's grace.
        runner = web.ServerRunner(server, shutdown_timeout=1.0, handle_signals=False)
        await runner.setup()
        try:
            await site_for(runner, self.settings).start()
            address = bound(runner, self.settings)
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._reads = self._cached_reads()
        self._summary = asyncio.create_task(self._summarize(), name="api:summary")
        return address

    async def _close(self) -> None:
        self._summary.cancel()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def _cached_reads(self) -> dict[str, CachedRead[Answer]]:
        local = reads_of(self.handle) if self._fetch is None else {}
        return {
            path: CachedRead(self._on_main(path, local.get(path)), self._read_ttl, self._clock)
            for path in READS
        }

    def _on_main(
        self, path: str, fn: Callable[[], Answer] | None
    ) -> Callable[[], Awaitable[Answer]]:
        """``fn`` run on the main loop: the handle's state is read, and serialized, between two
        of its steps; only the bytes cross back. Without ``fn``: ``fetch(path)`` awaited on the
        main loop (in the API process, a read asked of the controller)."""

        async def fetch() -> Answer:
            assert self._main is not None
            try:
                if fn is None:
                    assert self._fetch is not None
                    return await self._main.run(self._fetch(path), self._main_timeout)
                return await self._main.call(fn, self._main_timeout)
            except (MainUnavailable, TimeoutError) as exc:
                reason = (
                    str(exc) or f"the controller did not answer within {self._main_timeout:g} s"
                )
                key = "reason" if path in ("/health", "/ready") else "message"
                return 503, dumps({"ok": False, key: reason}).encode(), JSON

        return fetch

    # -- one request ---------------------------------------------------------------------------

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        started = self._clock()
        conn = request.protocol
        self.connections.busy(conn)
        try:
            response = await self._respond(request)
        except Exception as exc:  # a bug: answer 500, keep serving
            self.log.emit(
                "api_error", None, "error", path=request.path, error=f"{type(exc).__name__}: {exc}"
            )
            response = _json(500, {"ok": False, "message": f"internal error: {type(exc).__name__}"})
        finally:
            self.connections.idle(conn)
        if response.status != 429:  # refusals are summed up by _summarize, not one line each
            self._log_request(request, response.status, self._clock() - started)
        return response

    def _log_request(self, request: web.BaseRequest, status: int, seconds: float) -> None:
        if request.method == "POST" and request.path in ROUTES:
            level = "info" if status < 400 else "warning"
        else:
            level = "debug" if status < 500 else "warning"
        if not self.log.enabled(level):
            return
        self.log.emit(
            "api_request",
            None,
            level,
            method=request.method[:16],
            path=request.path[:100],
            status=status,
            seconds=round(seconds, 4),
            remote=request.remote,
        )

    async def _respond(self, request: web.BaseRequest) -> web.StreamResponse:
        route = ROUTES.get(request.path)
        if route is None:
            return _json(404, {"ok": False, "message": "not found"})
        if request.method != route.method and not (
            request.method == "HEAD" and route.method == "GET"
        ):
            allow = "GET, HEAD" if route.method == "GET" else route.method
            return _json(
                405, {"ok": False, "message": f"use {route.method}"}, headers={"Allow": allow}
            )
        denied = None
        if route.method == "POST":
            denied = check_token(request.headers.get("Authorization"), self._token)
        if route.method == "GET" or denied is not None:
            wait = self.limits.wait(request.remote or "unknown", route.budget)
            if wait > 0:
                message = "too many requests from this address; slow down"
                headers = {"Retry-After": retry_after(wait)}
                return _json(429, {"ok": False, "message": message}, headers=headers)
        if denied is not None:
            return _json(401, {"ok": False, "message": denied})
        if route.method == "POST":
            return await self._command(request.path[1:], request)
        if request.path == "/openapi.json":
            return _json(200, document())
        return _answer(await self._reads[request.path].get())

    async def _body(self, request: web.BaseRequest) -> bytes:
        """The body, at most MAX_BODY bytes, within BODY_TIMEOUT; BadRequest-like errors."""
        if (request.content_length or 0) > MAX_BODY:
            raise _TooLarge()
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(self.body_timeout):
            while chunk := await request.content.read(MAX_BODY + 1 - size):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_BODY:
                    raise _TooLarge()
        return b"".join(chunks)

    async def _command(self, command: str, request: web.BaseRequest) -> web.Response:
        try:
            raw = await self._body(request)
            query = request.query.getall("cluster", [])
            if len(query) > 1:
                raise BadRequest("'cluster' given more than once in the query")
            parsed = parse_request(command, raw, self._clock(), query[0] if query else None)
            cluster = which_cluster(parsed.cluster, tuple(self.handle.clusters))
            cmd = parsed.command
        except NoSuchCluster as exc:
            return _json(404, {"ok": False, "message": str(exc)})
        except _TooLarge:
            return _json(413, {"ok": False, "message": f"body larger than {MAX_BODY} bytes"})
        except TimeoutError:
            message = f"body not sent within {self.body_timeout:g} s"
            return _json(408, {"ok": False, "message": message})
        except BadRequest as exc:
            return _json(400, {"ok": False, "message": str(exc)})
        assert self._main is not None
        try:
            result = await self._main.run(self.handle.command(cmd, cluster), self.command_timeout)
        except TimeoutError:
            message = (
                f"the controller did not answer within {self.command_timeout:g} s; the command "
                "is queued and may still be carried out: check /status and the log"
            )
            return _json(504, {"ok": False, "message": message})
        except MainUnavailable as exc:
            return _json(503, {"ok": False, "message": str(exc)})
        for read in self._reads.values():  # the next read shows what the command changed
            read.invalidate()
        return _json(200 if result.ok else 409, _result(result))

    async def _summarize(self) -> None:
        """One ``api_throttled`` warning a minute at most, when anything was refused."""
        while True:
            await asyncio.sleep(self.summary_every)
            refused = self.limits.take_refused()
            evicted, rejected = self.connections.take_counts()
            if refused or evicted or rejected:
                self.log.emit(
                    "api_throttled",
                    None,
                    "warning",
                    seconds=self.summary_every,
                    requests_refused=sum(refused.values()),
                    clients_refused=len(refused),
                    top_clients=dict(refused.most_common(3)),
                    idle_connections_closed=evicted,
                    connections_refused=rejected,
                    open_connections=len(self.connections),
                )


class _TooLarge(Exception):
    pass
