"""The chaos checker's judgement: pure, fed with timed samples, no I/O, no controller code.

Every sample carries the interval in which it was taken (query sent, answer received): a
value was true at some instant of that interval, not at a known one. So a node is known
*writable throughout* only between two consecutive writable samples (from the first answer
to the last query sent), and two nodes are reported writable at the same instant only when
those known intervals overlap. Nothing here can raise a false alarm from sampling skew (a
switchover that fences one node and promotes another 50 ms later is not two writers); a real
overlap longer than about two sampling periods is always seen.

Kinds of violation:

- ``two-writable``: two nodes writable at the same instant, each seen by the checker.
- ``returning-writable``: a node back from a restart (its uptime went down) or from a second
  or more without answers (killed, frozen, cut off) is writable while another node is the
  writer. No controller can fence a frozen process, nor one that restarts with
  ``read_only=OFF`` in its configuration; the router's fence is what keeps clients off it.
  Recorded as an event with the time until it is read-only; a violation when a router sends
  it writes meanwhile, or it stays writable longer than ``fence_bound`` seconds.
- ``router-two-writers``: a router that routes writes to two nodes in one sample.
- ``router-writer-read-only``: a router's writer known read-only before and after the
  router was read (a writer nobody can write to).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Violation:
    at: float
    """Monotonic time the violation was established."""
    kind: str
    detail: str

    def to_json(self, t0: float = 0.0) -> dict[str, object]:
        return {"t": round(self.at - t0, 3), "kind": self.kind, "detail": self.detail}


@dataclass
class _Run:
    """Consecutive samples of one node with the same read_only value."""

    read_only: bool
    first_recv: float
    last_sent: float
    last_recv: float
    returning: bool = False
    """The run began right after the node could not be sampled."""


@dataclass
class Invariants:
    fence_bound: float = 10.0
    """Seconds a returning node may stay writable outside the routers before it is a violation."""
    returning_window: float = 5.0
    """A writable run that starts within this many seconds of an unanswered sample returns..."""
    returning_outage: float = 1.0
    """... after at least this many seconds without an answer (killed, frozen, cut off: not one
    slow answer on a busy machine)."""
    violations: list[Violation] = field(default_factory=list)
    returning_events: list[dict[str, object]] = field(default_factory=list)
    samples: int = 0
    router_samples: int = 0
    _runs: dict[str, _Run] = field(default_factory=dict)
    _ended: dict[str, list[_Run]] = field(default_factory=dict)
    _unknown_at: dict[str, float] = field(default_factory=dict)
    """Node -> last unanswered sample."""
    _unknown_since: dict[str, float] = field(default_factory=dict)
    """Node -> first unanswered sample of the last streak."""
    _last_answer: dict[str, float] = field(default_factory=dict)
    _uptime: dict[str, float] = field(default_factory=dict)
    _restarted_at: dict[str, float] = field(default_factory=dict)
    """Node -> when its uptime went down (the server restarted)."""
    _open: dict[str, str] = field(default_factory=dict)
    """Returning node -> the writer it is writable beside, until its run ends."""
    _reported: set[tuple[str, ...]] = field(default_factory=set)
    _routed: dict[str, float] = field(default_factory=dict)
    """Node -> last time a router named it a writer."""
    _pending: list[tuple[str, str, float, float]] = field(default_factory=list)

    # -- node samples ---------------------------------------------------------------------------

    def node(
        self,
        name: str,
        sent: float,
        recv: float,
        read_only: bool | None,
        uptime: float | None = None,
    ) -> None:
        """One answer of ``@@read_only`` and the server's uptime (None: no answer in time)."""
        self.samples += 1
        restarted = False
        if uptime is not None:
            restarted = uptime < self._uptime.get(name, 0.0)
            if restarted:
                self._restarted_at[name] = recv
            self._uptime[name] = uptime
        run = self._runs.get(name)
        if restarted and run is not None:
            self._end(name, run)  # a restart always begins a new run
            run = None
        if read_only is None:
            if self._unknown_at.get(name, -1.0) < self._last_answer.get(name, 0.0):
                self._unknown_since[name] = sent  # a new streak
            self._unknown_at[name] = recv
            if run is not None:
                self._end(name, run)
            return
        self._last_answer[name] = recv
        if run is not None and run.read_only == read_only:
            run.last_sent, run.last_recv = sent, recv
        else:
            back = run is None  # the first answer after no answer, or after a restart
            if run is not None:
                self._end(name, run)
            run = _Run(read_only, recv, sent, recv)
            run.returning = back and self._returns(name, recv)
            self._runs[name] = run
        if not read_only:
            self._check_writable(name, run)
        self._check_pending(name, sent, read_only)

    def _returns(self, name: str, now: float) -> bool:
        """Back from a restart, or from a second or more without answers."""
        restarted = self._restarted_at.get(name)
        if restarted is not None and now - restarted <= self.returning_window:
            return True
        last, first = self._unknown_at.get(name), self._unknown_since.get(name)
        return (
            last is not None
            and first is not None
            and last - first >= self.returning_outage
            and now - last <= self.returning_window
        )

    def _end(self, name: str, run: _Run) -> None:
        del self._runs[name]
        self._open.pop(name, None)
        if not run.read_only:
            ended = self._ended.setdefault(name, [])
            ended.append(run)
            del ended[:-4]
            if run.returning and run.last_sent > run.first_recv:
                self._returning_done(name, run)

    def _writable_runs(self, name: str) -> list[_Run]:
        runs = [r for r in self._ended.get(name, []) if not r.read_only]
        current = self._runs.get(name)
        if current is not None and not current.read_only:
            runs.append(current)
        return [r for r in runs if r.last_sent > r.first_recv]

    def _check_writable(self, name: str, run: _Run) -> None:
        if run.last_sent <= run.first_recv:
            return  # one sample: not yet known writable throughout any interval
        for other in self._runs.keys() | self._ended.keys():
            if other == name:
                continue
            for theirs in self._writable_runs(other):
                start = max(run.first_recv, theirs.first_recv)
                end = min(run.last_sent, theirs.last_sent)
                if start < end:
                    self._overlap(name, run, other, theirs, (start, end))

    def _overlap(
        self, name: str, run: _Run, other: str, theirs: _Run, span: tuple[float, float]
    ) -> None:
        """Two nodes known writable at once: a returning node, or a violation."""
        at = span[1]
        if run.returning != theirs.returning:
            back, writer = (name, other) if run.returning else (other, name)
            if (run if run.returning else theirs) is self._runs.get(back):
                self._open[back] = writer
            if self._routed.get(back, float("-inf")) >= span[0]:
                self._routed_returning(back, writer, at, (run if run.returning else theirs))
            key = ("returning", back, str(run.first_recv if run.returning else theirs.first_recv))
            if key not in self._reported:
                self._reported.add(key)
                self.returning_events.append({"node": back, "writer": writer, "at": at})
            returning = run if run.returning else theirs
            if at - returning.first_recv > self.fence_bound:
                self._violate(
                    at,
                    "returning-writable",
                    f"{back} came back writable and stayed writable for more than "
                    f"{self.fence_bound:g} s while {writer} was the writer",
                    key=("returning-late", back, str(returning.first_recv)),
                )
            return
        self._violate(
            at,
            "two-writable",
            f"{name} and {other} both writable (read_only=0) at the same instant",
            key=("two", *sorted((name, other)), str(max(run.first_recv, theirs.first_recv))),
        )

    def _returning_done(self, name: str, run: _Run) -> None:
        for event in self.returning_events:
            if event["node"] == name and "fenced_after" not in event:
                event["fenced_after"] = round(run.last_recv - run.first_recv, 3)

    def _routed_returning(self, node: str, writer: str, at: float, run: _Run) -> None:
        self._violate(
            at,
            "returning-writable",
            f"{node} came back writable beside the writer {writer} and a router sent writes to it",
            key=("returning-routed", node, str(run.first_recv)),
        )

    def _violate(self, at: float, kind: str, detail: str, *, key: tuple[str, ...]) -> None:
        if key not in self._reported:
            self._reported.add(key)
            self.violations.append(Violation(at, kind, detail))

    # -- router samples -------------------------------------------------------------------------

    def router(self, router: str, sent: float, recv: float, writers: frozenset[str] | None) -> None:
        """One read of a router's writer set (node names; None: the router did not answer)."""
        if writers is None:
            return
        self.router_samples += 1
        if len(writers) > 1:
            self._violate(
                recv,
                "router-two-writers",
                f"router {router} routes writes to {', '.join(sorted(writers))}",
                key=("router-two", router, *sorted(writers), str(round(recv, 1))),
            )
        for node in writers:
            self._routed[node] = recv
            if node in self._open:
                self._routed_returning(node, self._open[node], recv, self._runs[node])
            run = self._runs.get(node)
            if run is not None and run.read_only and run.first_recv < sent:
                self._pending.append((router, node, sent, recv))

    def _check_pending(self, name: str, sent: float, read_only: bool) -> None:
        """A router writer that was read-only before the router read is confirmed read-only
        throughout it when a sample sent after the read still finds it read-only, unbroken."""
        keep = []
        for router, node, r_sent, r_recv in self._pending:
            if node != name or sent <= r_recv:
                keep.append((router, node, r_sent, r_recv))
                continue
            run = self._runs.get(name)
            if read_only and run is not None and run.read_only and run.first_recv < r_sent:
                self._violate(
                    r_recv,
                    "router-writer-read-only",
                    f"router {router} sends writes to {node}, which is read-only",
                    key=("router-ro", router, node, str(run.first_recv)),
                )
        self._pending = keep

    # -- the end --------------------------------------------------------------------------------

    def finish(self, now: float) -> None:
        """Close the open runs (a returning node still writable is judged now)."""
        for name, run in list(self._runs.items()):
            if run.returning and not run.read_only:
                run.last_sent = max(run.last_sent, now)
                self._check_writable(name, run)
            self._end(name, run)
