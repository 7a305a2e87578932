"""How the controller process uses Python's cyclic garbage collector: a fixed policy.

Measured with one controller for 1,000 nodes in 300 clusters (bench/README.md, "Scale"):
with the interpreter's defaults, collections of the oldest generation walked every object of
the process (every cluster's settings, views, models and metrics: about 190 MiB) about every
3 s, 108.6 s of 600, up to 1.07 s each, and stopped the event loop meanwhile: probes in flight
passed their timeout and a node's largest gap between two probes reached 12.7 s (p99). Nearly
all of those objects live as long as the process. So, once every cluster has started:

1. ``gc.collect()``: what start-up left as garbage (settings validation builds and drops many
   objects) is freed now rather than frozen for ever;
2. ``gc.freeze()``: every object alive then leaves the collector's walks for good (they are
   still freed by reference counting when dropped; only a reference cycle among them would
   stay);
3. ``gc.set_threshold(*THRESHOLDS)``: fewer, larger collections of the young generations (the
   default, 700 allocations, collected about 40 times a second at that scale; the oldest
   generation is collected only when the objects that survived into it since the last full
   collection reach a quarter of those it held then, as before).

4. ``FREEZE_AGAIN_AFTER`` seconds later, once: a young collection and ``gc.freeze()`` again.
   Most long-lived objects are made after start: the first probes open every connection and
   build every view and model. Frozen only at start, they reached the oldest generation and
   made its next full collection walk them all: 1.93 s, measured. Only the young generation
   is collected first: a collection of the middle one too walked the 140,000 objects the
   first probes made and stopped every probe for 0.075 to 0.087 s, the largest pause left at
   rest (bench/README.md); the freeze itself only moves lists. Only once, not periodically:
   the freeze also keeps any reference cycle that became garbage before it and is no longer
   young (since the answer reader makes none, the first minute's are few), so repeating it
   would leak a little each time.

Since the answer reader no longer leaves a reference cycle per probe (``mysqlwire``), the
young collections find almost nothing to free, and with the second freeze collecting the young
generation only, a 600 s window at 1,000 nodes held one young collection (0.023 s, that freeze)
and nothing else (bench/README.md, "The last 0.021 s").

A fixed policy, not a setting: it is about this Python process's memory, not about the
databases; nothing a DBA knows about a cluster tells how to set it. It does not change what
the process does, only when the collector pauses it (reference counting frees most objects;
the collector is only for cycles, e.g. an exception and its traceback).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hacontrol.jsonlog import JsonLog

THRESHOLDS = (20_000, 20, 20)
"""``gc.set_threshold``: a young collection after 20,000 net allocations of container objects
(the default: 700), the middle generation every 20 young collections, and the oldest every 20
of those (still subject to the quarter rule above)."""

FREEZE_AGAIN_AFTER = 60.0
"""Seconds from start to the second freeze: every cluster probed, its view and model built."""


@dataclass(frozen=True)
class Applied:
    """What one freeze did: the ``gc_settled`` line's fields."""

    collected: int
    """Unreachable objects the collection before the freeze found."""
    frozen: int
    """Objects in the permanent generation after the freeze."""
    thresholds: tuple[int, int, int]
    seconds: float
    """How long the collection and the freeze stopped the process."""


def settle_after_start(
    log: JsonLog | None = None, *, again_after: float = FREEZE_AGAIN_AFTER
) -> Applied:
    """Collect, freeze what is alive, and raise the thresholds; freeze again ``again_after``
    seconds later when an event loop runs (the module's docstring says why). One
    ``gc_settled`` line in ``log`` each time. Call once every cluster's runtime has started:
    what exists then lives as long as the process."""
    gc.set_threshold(*THRESHOLDS)
    applied = _freeze(gc.collect, log, "start-up")
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return applied
    loop.call_later(again_after, _freeze, lambda: gc.collect(0), log, "first probes")
    return applied


def _freeze(collect: Callable[[], int], log: JsonLog | None, after: str) -> Applied:
    started = time.monotonic()
    collected = collect()
    gc.freeze()
    applied = Applied(
        collected, gc.get_freeze_count(), gc.get_threshold(), time.monotonic() - started
    )
    if log is not None:
        log.emit("gc_settled", None, "info", after=after, **asdict(applied))
    return applied
