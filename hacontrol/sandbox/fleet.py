"""The controllers a sandbox starts with ``--controllers N``: a fleet on one machine.

Controller i runs ``hacontrol run`` next to router i, with settings of its own (its router,
its API port, its journal, ``controller.instance_id = "c<i>"``), its JSON log lines appended to
``controllers/c<i>/hacontrol.log``. Each is a daemon in its own session, found again by pid
and its settings file (never by name), like the nodes and the routers. With ``--netns`` each
runs on its router's host (``hacontrol.sandbox.netns.sandbox_hosts``), its API there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

from hacontrol.sandbox import procs
from hacontrol.sandbox.model import HOST, ControllerInfo, SandboxError, SandboxInfo
from hacontrol.sandbox.netns import router_host
from hacontrol.sandbox.netns_host import Network

READY_TIMEOUT = 30.0


def controller_argv(controller: ControllerInfo) -> list[str]:
    return [sys.executable, "-m", "hacontrol", "run", "--config", controller.settings]


async def start_controllers(info: SandboxInfo, *, only: str | None = None) -> SandboxInfo:
    """Start the controllers (or only the one named) and wait until each one's API answers."""
    started = []
    network = Network.load(Path(info.dir)) if info.netns else None
    for controller in info.controllers:
        if only is not None and controller.name != only:
            continue
        prefix = network.prefix(router_host(controller.router)) if network else None
        pid = procs.spawn(controller_argv(controller), Path(controller.log), prefix)
        info = info.with_controller_pid(controller.name, pid)
        info.save()  # at once, so that `down` finds it whatever happens next
        started.append(replace(controller, pid=pid))
    await asyncio.gather(*(wait_ready(c, network) for c in started))
    return info


async def wait_ready(controller: ControllerInfo, network: Network | None = None) -> None:
    """Until ``GET /health`` answers (the process exited: its log's end in the error); with
    ``network``, asked from the controller's own host."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT
    url = f"http://{HOST}:{controller.api_port}/health"
    while True:
        if not procs.is_alive(controller.pid, controller.settings):
            raise SandboxError(f"controller {controller.name} exited at start:\n{tail(controller)}")
        if await asyncio.to_thread(answers, url, network, router_host(controller.router)):
            return
        if loop.time() > deadline:
            raise SandboxError(f"controller {controller.name} not ready within {READY_TIMEOUT} s")
        await asyncio.sleep(0.05)


def answers(url: str, network: Network | None = None, host: str = "") -> bool:
    """``url`` answers 200; with ``network``, asked from ``host`` (this thread enters its
    namespace for the request)."""
    try:
        with (
            network.entered(host) if network else contextlib.nullcontext(),
            urllib.request.urlopen(url, timeout=1.0) as response,
        ):
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def tail(controller: ControllerInfo, lines: int = 15) -> str:
    try:
        text = Path(controller.log).read_text(errors="replace")
    except OSError:
        return f"(no {controller.log})"
    return "\n".join(text.splitlines()[-lines:])
