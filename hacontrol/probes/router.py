"""Router probe: reads what the router really does, every interval. Never raises."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from hacontrol.events import Event, RouterProbeResult
from hacontrol.routing import Router


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

    async def run(self) -> None:
        while True:
            started = self._clock()
            self._emit(await self.probe())
            await asyncio.sleep(max(0.0, started + self._interval - self._clock()))

    async def probe(self) -> RouterProbeResult:
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
        except Exception as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
            return RouterProbeResult(kind, at, None, reason)
        return RouterProbeResult(kind, at, membership, None, warnings)
