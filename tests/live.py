"""Helpers for tests that run the real probes and controller against a sandbox."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from hacontrol.jsonlog import JsonLog
from hacontrol.sandbox import Sandbox
from hacontrol.service import Runtime, secrets_of
from hacontrol.settings import Settings, load_settings


def sandbox_settings(
    sandbox: Sandbox,
    *,
    interval: float = 0.3,
    timeout: float = 0.25,
    threshold: int = 3,
    **failover: Any,
) -> Settings:
    settings = load_settings(sandbox.status().settings).settings
    return settings.model_copy(
        update={
            "probes": settings.probes.model_copy(
                update={"interval": interval, "timeout": timeout, "failure_threshold": threshold}
            ),
            "failover": settings.failover.model_copy(update=failover),
        }
    )


class LogCapture:
    """A JsonLog stream that keeps every line, parsed, with the monotonic time it arrived."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                record = json.loads(line)
                record["_mono"] = time.monotonic()
                self.records.append(record)
        return len(text)

    def flush(self) -> None:
        pass

    def of(self, event: str, node: str | None = None) -> list[dict[str, Any]]:
        return [
            r for r in self.records if r["event"] == event and (node is None or r["node"] == node)
        ]


def runtime(settings: Settings) -> tuple[Runtime, LogCapture]:
    capture = LogCapture()
    log = JsonLog(settings.cluster.name, stream=capture, secrets=secrets_of(settings))
    return Runtime(settings, log), capture


async def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        await asyncio.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
