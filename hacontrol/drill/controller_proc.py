"""``hacontrol run`` as a process of its own, for the chaos drill: killed (SIGKILL, in the
middle of a plan too), stopped (SIGTERM) and started again from its journal, as in
production; its operator API called over HTTP like ``hacontrol switchover`` does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from hacontrol.drill.errors import FaultError


class ControllerProcess:
    def __init__(
        self,
        config: Path,
        api: str,
        token: str,
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.api = api.rstrip("/")
        self.token = token
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.pid: int | None = None
        self.starts = 0

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "hacontrol", "run", "--config", str(self.config)]

    def alive(self) -> bool:
        if self.pid is None:
            return False
        with contextlib.suppress(ChildProcessError, OSError):
            done, _ = os.waitpid(self.pid, os.WNOHANG)
            if done == self.pid:
                self.pid = None
                return False
        return self.pid is not None and os.path.exists(f"/proc/{self.pid}")

    async def start(self, timeout: float = 30.0) -> None:
        if self.alive():
            raise FaultError(f"the controller is already running (pid {self.pid})")
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.pid = os.posix_spawn(  # noqa: ASYNC221 - returns at once (a daemon)
                self.argv[0],
                self.argv,
                self.env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, fd, 1),
                    (os.POSIX_SPAWN_DUP2, fd, 2),
                ],
                setsid=True,
            )
        finally:
            os.close(fd)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise FaultError(f"the controller exited at start; see {self.log_path}")
            with contextlib.suppress(OSError, ValueError):
                await self.get("/health")
                return
            if time.monotonic() > deadline:
                raise FaultError(f"the controller's API did not answer within {timeout:g} s")
            await asyncio.sleep(0.1)

    def send(self, sig: int) -> bool:
        if not self.alive():
            return False
        assert self.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        return True

    async def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        """SIGTERM (or SIGKILL) and wait until it is gone; SIGKILL after ``grace``."""
        if not self.send(sig):
            return
        deadline = time.monotonic() + grace
        while self.alive():
            if time.monotonic() > deadline:
                self.send(signal.SIGKILL)
                deadline = time.monotonic() + 5
            await asyncio.sleep(0.02)

    # -- the API --------------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        request = urllib.request.Request(self.api + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=90) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
        answer = json.loads(raw)
        return answer if isinstance(answer, dict) else {"answer": answer}

    async def get(self, path: str) -> dict[str, Any]:
        return await asyncio.to_thread(self._call, "GET", path, None)

    async def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """An operator command; ``{"ok": False, "message": ...}`` when unreachable."""
        try:
            return await asyncio.to_thread(self._call, "POST", path, body or {})
        except (OSError, ValueError) as exc:
            return {"ok": False, "message": f"API unreachable: {exc}"}
