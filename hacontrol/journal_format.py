"""The journal's records as JSON, both ways, and the strict check of every record read back.

Writing turns plans, actions and the persisted state into plain JSON. Reading checks every
field against what the record type and the action's dataclass declare, so that a journal
edited by hand, damaged or written by another version never reaches the controller as a half
valid value: ``RecordError`` says which field and why. No I/O here.
"""

from __future__ import annotations

import math
import types
from dataclasses import MISSING, fields
from enum import StrEnum
from typing import Any, Union, get_args, get_origin, get_type_hints

from hacontrol import plan as p
from hacontrol.model import Consent, Persisted, Quarantined
from hacontrol.routing import Membership

ACTION_TYPES: dict[str, type] = {cls.__name__: cls for cls in get_args(p.Action)}
"""Every action type by name: the ``Action`` union is the one list of them."""

RECORD_TYPES = ("begin", "start", "step", "end", "state")


class RecordError(ValueError):
    """A record that is not what its type says: the field and the problem."""


# -- writing -----------------------------------------------------------------------------------


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


def plan_to_json(plan: p.Plan) -> dict[str, Any]:
    return {
        "kind": plan.kind,
        "rule": plan.rule,
        "reason": plan.reason,
        "actions": [action_to_json(a) for a in plan.actions],
        "deadline": plan.deadline,
        "rollback": [action_to_json(a) for a in plan.rollback],
    }


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
        "consents": [
            {
                "node": c.node,
                "dead": c.dead,
                "position": c.position,
                "held": c.held,
                "at": wall(c.at),
            }
            for c in state.consents
        ],
    }


def released(state: dict[str, Any], begin: dict[str, Any]) -> dict[str, Any]:
    """``state`` after the end of the plan ``begin`` that promoted nothing: a failover's dead
    primary is no old primary and no recovery block holds, as the controller decides when it
    hears of it (``rules.outcomes.failover_failed``, ``rules.resume.without_quarantine``)."""
    if begin.get("kind") != p.PlanKind.FAILOVER:
        return state
    promote = next((a for a in begin.get("actions", ()) if a.get("type") == "Promote"), None)
    quarantined = state.get("quarantined", {})
    if promote is None or promote.get("old_primary") not in quarantined:
        return state
    kept = {k: v for k, v in quarantined.items() if k != promote["old_primary"]}
    return {**state, "quarantined": kept, "blocked_until": None}


# -- reading -----------------------------------------------------------------------------------


def action_from_json(data: Any) -> p.Action:
    """The action, every argument checked against its dataclass field. RecordError if not."""
    if not isinstance(data, dict):
        raise RecordError(f"an action must be an object, got {_kind(data)}")
    name = data.get("type")
    cls = ACTION_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise RecordError(f"unknown action type {_short(name)}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(k for k in data if k != "type" and k not in known)
    if unknown:
        raise RecordError(f"{name}: unknown argument {_short(unknown[0])}")
    kwargs: dict[str, Any] = {}
    for field_name, f in known.items():
        if field_name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise RecordError(f"{name}: missing argument {field_name!r}")
            continue
        kwargs[field_name] = _convert(data[field_name], hints[field_name], f"{name}.{field_name}")
    return cls(**kwargs)


def plan_from_json(record: dict[str, Any]) -> p.Plan:
    """The plan of a ``begin`` record. RecordError names the field."""
    kind = record.get("kind")
    if not isinstance(kind, str) or kind not in {k.value for k in p.PlanKind}:
        raise RecordError(f"begin: unknown plan kind {_short(kind)}")
    for key in ("rule", "reason"):
        if not isinstance(record.get(key), str):
            raise RecordError(f"begin: {key!r} must be a string, got {_kind(record.get(key))}")
    deadline = record.get("deadline")
    if deadline is not None and not _finite(deadline):
        raise RecordError(f"begin: 'deadline' must be a number or null, got {_kind(deadline)}")
    return p.Plan(
        record["rule"],
        record["reason"],
        _actions(record.get("actions"), "actions"),
        p.PlanKind(kind),
        deadline=None if deadline is None else float(deadline),
        rollback=_actions(record.get("rollback", []), "rollback"),
    )


def _actions(value: Any, key: str) -> tuple[p.Action, ...]:
    if not isinstance(value, list):
        raise RecordError(f"begin: {key!r} must be a list of actions, got {_kind(value)}")
    out = []
    for i, item in enumerate(value):
        try:
            out.append(action_from_json(item))
        except RecordError as exc:
            raise RecordError(f"begin: {key}[{i}]: {exc}") from None
    return tuple(out)


def state_from_json(data: dict[str, Any], mono_now: float, wall_now: float) -> Persisted:
    """The persisted state (wall-clock times back to monotonic); ``check_state`` first."""

    def mono(t: float | None) -> float | None:
        return None if t is None else mono_now + (t - wall_now)

    quarantined = {
        name: Quarantined(name, q["new_primary"], mono(q.get("since")) or mono_now, q.get("errant"))
        for name, q in data.get("quarantined", {}).items()
    }
    return Persisted(
        paused=bool(data.get("paused", False)),
        maintenance=frozenset(data.get("maintenance", ())),
        blocked_until=mono(data.get("blocked_until")),
        last_failover_at=mono(data.get("last_failover_at")),
        quarantined=quarantined,
        consents=tuple(
            Consent(c["node"], c["dead"], c["position"], c["held"], mono(c["at"]) or mono_now)
            for c in data.get("consents", ())
        ),
    )


def check_state(data: Any) -> None:
    """RecordError unless ``data`` is a state ``state_to_json`` could have written."""
    if not isinstance(data, dict):
        raise RecordError(f"state: must be an object, got {_kind(data)}")
    if not isinstance(data.get("paused", False), bool):
        raise RecordError("state: 'paused' must be true or false")
    maintenance = data.get("maintenance", [])
    if not isinstance(maintenance, list) or not all(isinstance(n, str) for n in maintenance):
        raise RecordError("state: 'maintenance' must be a list of node names")
    for key in ("blocked_until", "last_failover_at"):
        if data.get(key) is not None and not _finite(data[key]):
            raise RecordError(f"state: {key!r} must be a time or null, got {_kind(data[key])}")
    quarantined = data.get("quarantined", {})
    if not isinstance(quarantined, dict):
        raise RecordError("state: 'quarantined' must be an object")
    for name, q in quarantined.items():
        where = f"state: quarantined[{_short(name)}]"
        if not isinstance(q, dict) or not isinstance(q.get("new_primary"), str):
            raise RecordError(f"{where}: must be an object with a 'new_primary' node name")
        if q.get("since") is not None and not _finite(q["since"]):
            raise RecordError(f"{where}: 'since' must be a time or null")
        if q.get("errant") is not None and not isinstance(q["errant"], str):
            raise RecordError(f"{where}: 'errant' must be a string or null")
    check_consents(data.get("consents", []))


def check_consents(consents: Any) -> None:
    """RecordError unless ``consents`` is a list of operators' consents (``model.Consent``)."""
    if not isinstance(consents, list):
        raise RecordError("state: 'consents' must be a list")
    for i, c in enumerate(consents):
        where = f"state: consents[{i}]"
        if not isinstance(c, dict) or set(c) != {"node", "dead", "position", "held", "at"}:
            raise RecordError(f"{where}: must be an object with node, dead, position, held, at")
        if not all(isinstance(c[k], str) for k in ("node", "dead")):
            raise RecordError(f"{where}: 'node' and 'dead' must be node names")
        if not all(c[k] is None or isinstance(c[k], str) for k in ("position", "held")):
            raise RecordError(f"{where}: 'position' and 'held' must be GTID sets or null")
        if c["position"] is None and c["held"] is None:
            raise RecordError(f"{where}: 'position' and 'held' cannot both be null")
        if not _finite(c["at"]):
            raise RecordError(f"{where}: 'at' must be a time")


_FIELDS: dict[str, tuple[tuple[str, type | tuple[type, ...]], ...]] = {
    "start": (("id", str), ("index", int)),
    "step": (("id", str), ("index", int), ("ok", bool), ("detail", str)),
    "end": (("id", str), ("ok", bool), ("reason", str)),
    "begin": (("id", str),),
    "state": (),
}


def check_record(value: Any) -> dict[str, Any]:
    """The record, if it is one this journal writes; RecordError naming the problem."""
    if not isinstance(value, dict):
        raise RecordError(f"a record must be a JSON object, got {_kind(value)}")
    kind = value.get("type")
    if kind not in RECORD_TYPES:
        what = 'no "type"' if kind is None else f"unknown record type {_short(kind)}"
        raise RecordError(f"{what} (one of {', '.join(RECORD_TYPES)})")
    if "ts" in value and not _finite(value["ts"]):
        raise RecordError(f"{kind}: 'ts' must be a number, got {_kind(value['ts'])}")
    for key, wanted in _FIELDS[kind]:
        if key not in value:
            raise RecordError(f"{kind}: missing {key!r}")
        got = value[key]
        if not isinstance(got, wanted) or (wanted is int and isinstance(got, bool)):
            raise RecordError(f"{kind}: {key!r} must be {_NAMES[wanted]}, got {_kind(got)}")
    promoted = value.get("promoted") if kind == "end" else None
    if promoted is not None and not isinstance(promoted, str):
        raise RecordError(f"end: 'promoted' must be a node name or null, got {_kind(promoted)}")
    if kind in ("start", "step") and value["index"] < 0:
        raise RecordError(f"{kind}: 'index' must be >= 0")
    if kind == "begin":
        plan_from_json(value)
    elif kind == "state":
        if "state" not in value:
            raise RecordError("state: missing 'state'")
        check_state(value["state"])
    return value


_NAMES: dict[Any, str] = {str: "a string", int: "an integer", bool: "true or false"}


def _convert(value: Any, hint: Any, where: str) -> Any:
    """``value`` (from JSON) as the type ``hint`` declares; RecordError if it is not one."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, where)
            except RecordError:
                continue
        raise RecordError(f"{where}: unexpected {_kind(value)}")
    if origin is tuple:
        return _tuple(value, args, where)
    if hint is Membership:
        return _membership(value, where)
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        if not isinstance(value, str) or value not in {m.value for m in hint}:
            raise RecordError(f"{where}: unknown value {_short(value)}")
        return hint(value)
    if hint is float and _finite(value):
        return float(value)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    raise RecordError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {_kind(value)}")


def _tuple(value: Any, args: tuple[Any, ...], where: str) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise RecordError(f"{where}: expected a list, got {_kind(value)}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise RecordError(f"{where}: expected {len(args)} items, got {len(value)}")
    pairs = enumerate(zip(value, args, strict=True))
    return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in pairs)


def _membership(value: Any, where: str) -> Membership:
    keys = ("writers", "readers", "broken", "hidden")
    if not isinstance(value, dict) or set(value) - set(keys):
        raise RecordError(f"{where}: expected an object with {', '.join(keys)}")
    groups = [value.get(k, []) for k in keys]
    if not all(isinstance(g, list) and all(isinstance(n, str) for n in g) for g in groups):
        raise RecordError(f"{where}: each group must be a list of node names")
    return Membership.of(*groups)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string"}.get(
        type(value), {list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
