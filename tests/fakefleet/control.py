"""Scripting a running fake fleet over HTTP on loopback, and a small client for it.

    GET  /nodes                      every node: state, role, source, IO thread, GTID
    GET  /nodes/NAME                 one node
    POST /nodes/NAME/kill            close its listener and every connection at once
    POST /nodes/NAME/freeze          accept connections, answer nothing, close nothing
    POST /nodes/NAME/revive          restart a killed node, thaw a frozen one
    POST /nodes/NAME/lose-link       its IO thread reports a lost link to its source
    POST /nodes/NAME/restore-link
    GET  /cadence?since=T&until=T&skip=NODE,...&stamp=loop|kernel
                                     probes per node and the largest gap between two probes,
                                     by the time the fleet read them or the kernel received
                                     them (``--kernel-stamps``)
    GET  /stats                      the fleet process's own CPU, memory, queries, connections

Times (``since``, ``until``, ``now`` in /stats) are the fleet's monotonic clock, which on Linux
is the same CLOCK_MONOTONIC every process on the machine reads.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from aiohttp import web

from tests.fakefleet.model import FakeError
from tests.fakefleet.server import FakeFleet

ACTIONS = {
    "kill": lambda fleet, name: fleet.kill(name),
    "freeze": lambda fleet, name: fleet.freeze(name),
    "lose-link": lambda fleet, name: fleet.lose_link(name),
    "restore-link": lambda fleet, name: fleet.restore_link(name),
}


def application(fleet: FakeFleet) -> web.Application:
    routes = web.RouteTableDef()

    def node_name(request: web.Request) -> str:
        name = request.match_info["name"]
        if fleet.model is None or name not in fleet.model.nodes:
            raise web.HTTPNotFound(text=f"no node {name!r}")
        return name

    @routes.get("/nodes")
    async def nodes(request: web.Request) -> web.Response:
        assert fleet.model is not None
        return web.json_response([fleet.describe(name) for name in fleet.model.nodes])

    @routes.get("/nodes/{name}")
    async def node(request: web.Request) -> web.Response:
        return web.json_response(fleet.describe(node_name(request)))

    @routes.post("/nodes/{name}/{action}")
    async def act(request: web.Request) -> web.Response:
        name, action = node_name(request), request.match_info["action"]
        try:
            if action == "revive":
                await fleet.revive(name)
            elif action in ACTIONS:
                ACTIONS[action](fleet, name)
            else:
                raise web.HTTPNotFound(text=f"no action {action!r}")
        except (ValueError, FakeError) as exc:
            raise web.HTTPConflict(text=str(exc)) from None
        return web.json_response(fleet.describe(name))

    @routes.get("/cadence")
    async def cadence(request: web.Request) -> web.Response:
        try:
            since = float(request.query.get("since", "0"))
            until = float(request.query.get("until", "inf"))
        except ValueError:
            raise web.HTTPBadRequest(text="since and until are numbers (seconds)") from None
        skip = {s for s in request.query.get("skip", "").split(",") if s}
        try:
            figures = fleet.cadence(
                since, until, skip=skip, stamp=request.query.get("stamp", "loop")
            )
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return web.json_response(figures)

    @routes.get("/stats")
    async def stats(request: web.Request) -> web.Response:
        return web.json_response(fleet.stats())

    app = web.Application()
    app.add_routes(routes)
    return app


async def serve(fleet: FakeFleet, host: str = "127.0.0.1", port: int = 0) -> web.AppRunner:
    """Start the control channel; the runner's ``addresses`` hold the bound port."""
    runner = web.AppRunner(application(fleet), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner


class FleetControl:
    """Blocking client of the control channel (for benchmarks and other processes)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(self.url + path, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: {exc.code} {exc.read().decode()}") from None

    def nodes(self) -> list[dict[str, Any]]:
        return self._call("GET", "/nodes")

    def node(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/nodes/{name}")

    def act(self, name: str, action: str) -> dict[str, Any]:
        return self._call("POST", f"/nodes/{name}/{action}")

    def cadence(
        self,
        since: float = 0.0,
        until: float | None = None,
        skip: list[str] = (),
        stamp: str = "loop",
    ) -> dict[str, Any]:
        query = f"?since={since}&stamp={stamp}" + (f"&until={until}" if until is not None else "")
        return self._call("GET", "/cadence" + query + (f"&skip={','.join(skip)}" if skip else ""))

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")
