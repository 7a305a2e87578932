"""What keeps the HTTP API from being used against the controller: limits, as plain values.

- ``RateLimiter``: a token bucket per client address and budget name; a request without a valid
  token spends one token, a client out of tokens is answered 429. The table of clients is
  bounded (least recently seen forgotten first).
- ``ConnectionTable``: at most ``limit`` open connections. A new connection past the limit
  closes an idle connection (one with no request being answered) of the address holding the
  most connections, the one idle the longest, so that a client holding thousands of idle
  sockets cannot lock out ``/health`` or an operator's command from another address (it only
  evicts its own); with every connection busy, the newcomer is refused.
- ``connection_cap``: raises the process's open-file soft limit toward the hard limit and
  gives the API at most what leaves ``FD_RESERVE`` descriptors to probes, actions and logs.

No I/O and no event loop here (but ``connection_cap``, which reads and sets the rlimit): the
server in ``hacontrol.api`` calls these and closes what they name.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

C = TypeVar("C", bound=Hashable)

FD_RESERVE = 512
"""File descriptors never given to API connections: probes (two per node), actions, router,
journal, mail, hooks, logs."""
FD_TARGET = 65536
"""Soft limit asked for at start-up (never above the hard limit)."""
MAX_CLIENTS = 4096
"""Rate-limit buckets kept at most (least recently seen forgotten first)."""


class RateLimiter:
    """Token buckets keyed by (client, budget): ``rate`` tokens per second, ``burst`` at most."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._max = max_clients
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()
        self.refused: Counter[str] = Counter()
        """Requests refused per client since the last ``take_refused()``."""

    def wait(self, client: str, budget: str = "default") -> float:
        """0.0 and one token spent when ``client`` may go on, else seconds until it may."""
        now = self._clock()
        key = (client, budget)
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
            self.refused[client] += 1
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait

    def take_refused(self) -> Counter[str]:
        refused, self.refused = self.refused, Counter()
        return refused


def retry_after(wait: float) -> str:
    """The ``Retry-After`` header value (whole seconds, at least 1) for a wait."""
    return str(max(1, math.ceil(wait)))


@dataclass
class ConnectionTable(Generic[C]):
    """Open connections, the idle ones in least-recently-active order, counted per address."""

    limit: int
    _idle: OrderedDict[C, None] = field(default_factory=OrderedDict)
    _busy: set[C] = field(default_factory=set)
    _address: dict[C, str] = field(default_factory=dict)
    _per_address: Counter[str] = field(default_factory=Counter)
    evicted: int = 0
    refused: int = 0

    def __len__(self) -> int:
        return len(self._idle) + len(self._busy)

    def admit(self, conn: C, address: str = "") -> C | None:
        """Take ``conn`` (from ``address``) in; returns the connection to close now, if any:
        an idle one to make room (``_victim``), or ``conn`` itself when every connection is
        busy."""
        if len(self) >= self.limit and not self._idle:
            self.refused += 1
            return conn
        victim = self._victim() if len(self) >= self.limit else None
        if victim is not None:
            self.release(victim)
            self.evicted += 1
        self._idle[conn] = None
        self._address[conn] = address
        self._per_address[address] += 1
        return victim

    def _victim(self) -> C:
        """The longest idle connection among those of the addresses holding the most
        connections (of those with an idle one): a flood from one address makes room out of its
        own sockets."""
        most = max(self._per_address[self._address[c]] for c in self._idle)
        return next(c for c in self._idle if self._per_address[self._address[c]] == most)

    def busy(self, conn: C) -> None:
        """``conn`` is answering a request: never evicted meanwhile."""
        if self._idle.pop(conn, False) is None:
            self._busy.add(conn)

    def idle(self, conn: C) -> None:
        """``conn`` answered; it is now the most recently active idle connection."""
        if conn in self._busy:
            self._busy.discard(conn)
            self._idle[conn] = None

    def release(self, conn: C) -> None:
        self._idle.pop(conn, None)
        self._busy.discard(conn)
        address = self._address.pop(conn, None)
        if address is not None:
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]

    def take_counts(self) -> tuple[int, int]:
        """(evicted, refused) since the last call."""
        counts = (self.evicted, self.refused)
        self.evicted = self.refused = 0
        return counts


def connection_cap(wanted: int, *, reserve: int = FD_RESERVE) -> tuple[int, int]:
    """(API connections allowed, the soft open-file limit), after raising the soft limit.

    The API gets ``wanted`` connections at most, and never so many that fewer than ``reserve``
    descriptors would be left for everything else; at least 4, so ``/health`` still answers.
    """
    try:
        import resource
    except ImportError:  # not on a POSIX system: nothing to raise, nothing known
        return wanted, -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FD_TARGET if hard == resource.RLIM_INFINITY else min(hard, FD_TARGET)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted, -1
    return max(4, min(wanted, soft - _open_descriptors() - reserve)), soft


def _open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 64  # a guess on systems without /proc
