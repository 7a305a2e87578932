"""The controllers a sandbox starts with ``--controllers N``: a fleet on one machine.

Controller i runs ``hacontrol run`` next to router i, with settings of its own (its router,
its API port, its journal, ``controller.instance_id = "c<i>"``), its JSON log lines appended to
``controllers/c<i>/hacontrol.log``. Each is a daemon in its own session, found again by pid
and its settings file (never by name), like the nodes and the routers.
"""

from __future__ import annotations

import asyncio
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

from hacontrol.sandbox import procs
from hacontrol.sandbox.model import HOST, ControllerInfo, SandboxError, SandboxInfo

READY_TIMEOUT = 30.0


def controller_argv(controller: ControllerInfo) -> list[str]:
    return [sys.executable, "-m", "hacontrol", "run", "--config", controller.settings]


async def start_controllers(info: SandboxInfo, *, only: str | None = None) -> SandboxInfo:
    """Start the controllers (or only the one named) and wait until each one's API answers."""
    started = []
    for controller in info.controllers:
        if only is not None and controller.name != only:
            continue
        pid = procs.spawn(controller_argv(controller), Path(controller.log))
        info = info.with_controller_pid(controller.name, pid)
        info.save()  # at once, so that `down` finds it whatever happens next
        started.append(replace(controller, pid=pid))
    await asyncio.gather(*(wait_ready(c) for c in started))
    return info


async def wait_ready(controller: ControllerInfo) -> None:
    """Until ``GET /health`` answers (the process exited: its log's end in the error)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT
    url = f"http://{HOST}:{controller.api_port}/health"
    while True:
        if not procs.is_alive(controller.pid, controller.settings):
            raise SandboxError(f"controller {controller.name} exited at start:\n{tail(controller)}")
        if await asyncio.to_thread(answers, url):
            return
        if loop.time() > deadline:
            raise SandboxError(f"controller {controller.name} not ready within {READY_TIMEOUT} s")
        await asyncio.sleep(0.05)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def tail(controller: ControllerInfo, lines: int = 15) -> str:
    try:
        text = Path(controller.log).read_text(errors="replace")
    except OSError:
        return f"(no {controller.log})"
    return "\n".join(text.splitlines()[-lines:])
