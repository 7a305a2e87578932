"""Where a drill runs: a sandbox of its own, started when needed and removed afterwards unless
``--dir`` asked to keep it. Shared by the drill of one controller and that of a fleet."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from hacontrol.sandbox import Sandbox


@contextlib.asynccontextmanager
async def drill_sandbox(
    keep_in: Path | None, make: Callable[[Path], Sandbox], progress: Callable[[str], None]
) -> AsyncIterator[Sandbox]:
    """The sandbox in ``keep_in`` (started with ``make`` when not running, and kept), or a new
    one in a temporary directory, removed on the way out."""
    tmp = None if keep_in is not None else tempfile.TemporaryDirectory(prefix="hacontrol-drill-")
    directory = keep_in if keep_in is not None else Path(tmp.name) / "sandbox"  # type: ignore[union-attr]
    sandbox, started = Sandbox.at(directory), False
    try:
        if not sandbox.is_running():
            progress(f"starting a sandbox in {directory}")
            sandbox = make(directory)
            await sandbox.up()
            started = True
        yield sandbox
    finally:
        if started and keep_in is None:
            progress("removing the sandbox")
            await sandbox.down()
        if tmp is not None:
            tmp.cleanup()
