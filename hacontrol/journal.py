"""Intent journal: multi-step changes survive a crash of the controller.

Append-only JSON lines, each written and fsynced before the call returns:

- ``begin``: a plan's id, kind, rule, reason and its actions, written BEFORE its first step;
- ``step``: one action done (index, ok, detail), written right after it completed;
- ``end``: the plan finished (ok or not);
- ``state``: the controller state that must outlive a restart (``model.Persisted``: pause,
  maintenance, quarantined old primaries, the recovery block, the last failover), in
  wall-clock time.

``load()`` replays the file: the last state, and the plan that began but did not end (with the
indexes of its completed steps), which the controller finishes before anything new. The file
is compacted at load to those two records.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args

from hacontrol import plan as p
from hacontrol.model import Intent, Persisted, Quarantined
from hacontrol.routing import Membership

ACTION_TYPES: dict[str, type] = {cls.__name__: cls for cls in get_args(p.Action)}
"""Every action type by name: the ``Action`` union is the one list of them."""


def action_to_json(action: p.Action) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(action).__name__}
    for f in fields(action):
        value = getattr(action, f.name)
        if isinstance(value, Membership):
            value = value.to_json()
        elif isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out[f.name] = value
    return out


def action_from_json(data: dict[str, Any]) -> p.Action:
    data = dict(data)
    cls = ACTION_TYPES[data.pop("type")]
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name == "desired":
            value = Membership.of(
                value["writers"], value["readers"], value["broken"], value["hidden"]
            )
        elif f.name == "kind":
            value = p.AlertKind(value)
        kwargs[f.name] = _tuples(value)
    return cls(**kwargs)


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples (of tuples) actions hold."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def plan_to_json(plan: p.Plan) -> dict[str, Any]:
    return {
        "kind": plan.kind,
        "rule": plan.rule,
        "reason": plan.reason,
        "actions": [action_to_json(a) for a in plan.actions],
        "deadline": plan.deadline,
        "rollback": [action_to_json(a) for a in plan.rollback],
    }


def plan_from_json(record: dict[str, Any]) -> p.Plan:
    return p.Plan(
        record["rule"],
        record["reason"],
        tuple(action_from_json(a) for a in record["actions"]),
        p.PlanKind(record["kind"]),
        deadline=record.get("deadline"),
        rollback=tuple(action_from_json(a) for a in record.get("rollback", ())),
    )


@dataclass(frozen=True)
class Replay:
    unfinished: Intent | None
    state: dict[str, Any] | None


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _append(self, record: dict[str, Any]) -> None:
        record = {"ts": time.time(), **record}
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if new:
            _fsync_dir(self.path.parent)

    def begin(self, plan_id: str, plan: p.Plan) -> None:
        self._append({"type": "begin", "id": plan_id, **plan_to_json(plan)})

    def step_started(self, plan_id: str, index: int) -> None:
        self._append({"type": "start", "id": plan_id, "index": index})

    def step(self, plan_id: str, index: int, ok: bool, detail: str) -> None:
        self._append({"type": "step", "id": plan_id, "index": index, "ok": ok, "detail": detail})

    def end(self, plan_id: str, ok: bool, reason: str) -> None:
        self._append({"type": "end", "id": plan_id, "ok": ok, "reason": reason})

    def save_state(self, state: dict[str, Any]) -> None:
        self._append({"type": "state", "state": state})

    def load(self) -> Replay:
        """Replay the journal and compact it. A torn last line (crash mid-write) is ignored."""
        if not self.path.exists():
            return Replay(None, None)
        begun: dict[str, dict[str, Any]] = {}
        done: dict[str, set[int]] = {}
        started: dict[str, set[int]] = {}
        state: dict[str, Any] | None = None
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            kind = record.get("type")
            if kind == "begin":
                begun[record["id"]] = record
                done[record["id"]] = set()
                started[record["id"]] = set()
            elif kind == "step" and record.get("ok") and record["id"] in done:
                done[record["id"]].add(record["index"])
            elif kind == "start" and record["id"] in started:
                started[record["id"]].add(record["index"])
            elif kind == "end":
                begun.pop(record["id"], None)
            elif kind == "state":
                state = record["state"]
        unfinished = None
        if begun:
            record = list(begun.values())[-1]
            plan = plan_from_json(record)
            unfinished = Intent(
                record["id"],
                plan,
                frozenset(done[record["id"]]),
                frozenset(started[record["id"]]),
            )
        self._compact(unfinished, state)
        return Replay(unfinished, state)

    def _compact(self, unfinished: Intent | None, state: dict[str, Any] | None) -> None:
        records: list[dict[str, Any]] = []
        if state is not None:
            records.append({"ts": time.time(), "type": "state", "state": state})
        if unfinished is not None:
            plan = unfinished.plan
            records.append(
                {"ts": time.time(), "type": "begin", "id": unfinished.plan_id, **plan_to_json(plan)}
            )
            records += [
                {
                    "ts": time.time(),
                    "type": "step",
                    "id": unfinished.plan_id,
                    "index": i,
                    "ok": True,
                    "detail": "done before restart",
                }
                for i in sorted(unfinished.done)
            ]
            records += [
                {"ts": time.time(), "type": "start", "id": unfinished.plan_id, "index": i}
                for i in sorted(unfinished.started)
            ]
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)
        _fsync_dir(self.path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def state_to_json(state: Persisted, mono_now: float, wall_now: float) -> dict[str, Any]:
    """The state that must survive a restart, in wall-clock time: one key per field of
    ``Persisted`` (a test holds them equal)."""

    def wall(t: float | None) -> float | None:
        return None if t is None else wall_now + (t - mono_now)

    return {
        "paused": state.paused,
        "maintenance": sorted(state.maintenance),
        "blocked_until": wall(state.blocked_until),
        "last_failover_at": wall(state.last_failover_at),
        "quarantined": {
            name: {"new_primary": q.new_primary, "since": wall(q.since), "errant": q.errant}
            for name, q in state.quarantined.items()
        },
    }


def state_from_json(data: dict[str, Any], mono_now: float, wall_now: float) -> Persisted:
    def mono(t: float | None) -> float | None:
        return None if t is None else mono_now + (t - wall_now)

    quarantined = {
        name: Quarantined(name, q["new_primary"], mono(q["since"]) or mono_now, q.get("errant"))
        for name, q in data.get("quarantined", {}).items()
    }
    return Persisted(
        paused=bool(data.get("paused", False)),
        maintenance=frozenset(data.get("maintenance", ())),
        blocked_until=mono(data.get("blocked_until")),
        last_failover_at=mono(data.get("last_failover_at")),
        quarantined=quarantined,
    )
