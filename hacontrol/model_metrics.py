"""What the controller shows of its events and its model in the metrics: loop lag and queue
depth per event, probe round trips, the journal's room, and after each step the view (when it
was derived again), the halt and the lease."""

from __future__ import annotations

from hacontrol.events import Event, JournalStatus, ProbeResult
from hacontrol.metrics import Metrics
from hacontrol.model import Model
from hacontrol.rules.lease import held_until
from hacontrol.settings import Settings


class ModelMetrics:
    """Feeds ``Metrics`` from the controller's loop; remembers what it last showed so that
    unchanged values are not set again on every probe."""

    def __init__(self, metrics: Metrics, settings: Settings) -> None:
        self.metrics, self.settings = metrics, settings
        self._halt_shown: bool | None = None
        self._lease_shown: tuple[bool, int, dict[str, bool]] | None = None
        self._lease_read: tuple[object, object, float] | None = None
        """The lease and the locks last looked at, and the first time after that at which a
        lock held then ends: until then, with both the same objects, nothing shown moves."""

    def event(self, event: Event, now: float, queued: int) -> None:
        metrics = self.metrics
        metrics.observe_loop(max(0.0, now - event.at), queued)
        if isinstance(event, ProbeResult):
            metrics.observe_probe(event)
        elif isinstance(event, JournalStatus):
            metrics.observe_journal(event.writable, event.free_bytes)

    def step(self, before: Model, after: Model, now: float) -> None:
        if after.view.generation != before.view.generation:  # derived again
            self.metrics.observe_view(after.view)
        halted = after.state.halt is not None
        if halted is not self._halt_shown:
            self.metrics.set_halt(halted)
            self._halt_shown = halted
        lease = after.lease
        if lease.fleet or lease is not before.lease or self._lease_shown is None:
            self._lease(after, now)

    def _lease(self, model: Model, now: float) -> None:
        """The lease's metrics: looked at on every event in a fleet (whose locks expire with
        time), else when the lease changed; set when what they show changed. A fleet's
        probe, tick or router read that left the lease and the locks as they were, before any
        lock held then ended, shows what was shown (no lock is read again)."""
        lease = model.lease
        read = self._lease_read
        if read is not None and read[0] is lease and read[1] is model.view.locks and now < read[2]:
            return
        held = held_until(model.view, self.settings)
        locks = {n: held.get(n, 0.0) > now for n in model.view.nodes} if lease.fleet else {}
        ends = [until for until in held.values() if until > now]
        self._lease_read = (lease, model.view.locks, min(ends, default=float("inf")))
        shown = (lease.leader, lease.changes, locks)
        if shown != self._lease_shown:
            self.metrics.observe_lease(self.settings.controller.instance_id, *shown)
            self._lease_shown = shown
