"""The API's own event loop, in a thread of its own, and the two ways it talks to the main loop.

The controller's probes, decisions and actions run on the main event loop; HTTP is served on
this second loop so that parsing, refusing and answering requests never takes a turn of the
main loop. What the API needs from the controller crosses over in two ways only:

- ``MainLoop.call(fn)``: a short synchronous read (status, metrics, health) run as one callback
  on the main loop, so it sees a consistent controller state and never races it.
- ``MainLoop.run(coro)``: an operator command, awaited on the main loop (the controller's
  queue and reply future live there), its answer handed back.

``CachedRead`` keeps one answer for a short time and lets concurrent requests share one call,
so that however many requests arrive, the main loop runs at most a few such callbacks per
second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed, as for the main loop; the default loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LoopThread:
    """An event loop running forever in a daemon thread until ``stop()``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()
        self.loop = new_event_loop()

        def main() -> None:
            assert self.loop is not None
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on this loop (from any thread)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the loop and wait for the thread (blocking: call it off any event loop)."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive() and not loop.is_closed():
            loop.close()
        self._thread = None


class MainUnavailable(Exception):
    """The main loop did not run the call in time, or is closed."""


class MainLoop:
    """Calls from the API's loop into the main loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def call(self, fn: Callable[[], T], timeout: float) -> T:
        """``fn()`` run on the main loop; MainUnavailable when it is not run within ``timeout``."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return  # the caller stopped waiting
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller, who answers 500
                future.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(run)
        except RuntimeError:  # the main loop is closed
            raise MainUnavailable("the controller's event loop is closed") from None
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            raise MainUnavailable(
                f"the controller's event loop did not answer within {timeout:g} s"
            ) from None

    async def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Await ``coro`` on the main loop; TimeoutError after ``timeout`` (it is cancelled)."""
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:
            coro.close()
            raise MainUnavailable("the controller's event loop is closed") from None
        async with asyncio.timeout(timeout):
            return await asyncio.wrap_future(future)


class CachedRead(Generic[T]):
    """The last answer of ``fetch`` for ``ttl`` seconds; concurrent callers share one fetch."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[T]],
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._clock = clock
        self._value: tuple[T, float] | None = None
        self._inflight: asyncio.Future[T] | None = None
        self.fetches = 0

    async def get(self) -> T:
        if self._value is not None and self._clock() - self._value[1] < self._ttl:
            return self._value[0]
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._refresh())
            # Retrieved here too: every caller may have given up before the answer came.
            self._inflight.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(self._inflight)

    def invalidate(self) -> None:
        self._value = None

    async def _refresh(self) -> T:
        try:
            self.fetches += 1
            value = await self._fetch()
            self._value = (value, self._clock())
            return value
        finally:
            self._inflight = None
