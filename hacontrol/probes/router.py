"""Router probe: reads what the router really does, every interval. Never raises.

A read skipped because the router's admin is busy with another call (``RouterBusy``: another
cluster's apply on a shared ProxySQL admin) emits nothing: the router did not fail, and the
view keeps its last read (with its time: nothing takes it for a fresh one). ``busy`` and
``skipped`` say so (the cluster's status)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from hacontrol.events import Event, RouterProbeResult
from hacontrol.routing import Router, RouterBusy


class RouterProbe:
    def __init__(
        self,
        router: Router,
        *,
        interval: float,
        timeout: float,
        emit: Callable[[Event], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._router = router
        self._interval = interval
        self._timeout = timeout
        self._emit = emit
        self._clock = clock
        self.busy: str | None = None
        """Why the last read was skipped (the admin busy with another call), until one ran."""
        self.skipped = 0
        """Reads skipped because the admin was busy."""

    async def run(self) -> None:
        while True:
            started = self._clock()
            result = await self.probe()
            if result is not None:
                self._emit(result)
            await asyncio.sleep(max(0.0, started + self._interval - self._clock()))

    async def probe(self) -> RouterProbeResult | None:
        """The router's state, or None when the read was skipped (``busy``)."""
        at = self._clock()
        kind = self._router.kind
        try:
            async with asyncio.timeout(self._timeout):
                both = getattr(self._router, "probe", None)  # one connection for both reads
                if both is not None:
                    membership, found = await both()
                    warnings = tuple(found)
                else:
                    membership = await self._router.read()
                    conflicts = getattr(self._router, "conflicts", None)
                    warnings = tuple(await conflicts()) if conflicts is not None else ()
        except RouterBusy as exc:
            self.busy, self.skipped = str(exc), self.skipped + 1
            return None
        except Exception as exc:
            self.busy = None
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
            return RouterProbeResult(kind, at, None, reason)
        self.busy = None
        return RouterProbeResult(kind, at, membership, None, warnings)
