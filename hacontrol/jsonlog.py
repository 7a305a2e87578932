"""One JSON object per line on stdout: every event, state change and decision.

Fields: ``ts`` (wall clock, ISO 8601 UTC), ``level``, ``event``, ``cluster``, ``node`` (or null),
then the event's own fields. Known secrets are scrubbed from every line as a last defence, and
``SecretStr`` values never serialize.

Scrubbing replaces a secret inside string values (and keys of nested objects) only, never in
the serialized text: a secret that is JSON syntax (``true``, ``null``, ``1``) cannot break a
line.
Non-finite numbers (NaN, infinities), which JSON cannot carry, are written as strings.
``emit`` may be called from several threads (the API runs on its own): lines never interleave.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from pydantic import SecretStr

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
MASK = "********"


class JsonLog:
    """``cluster``: the value of every line's ``cluster`` field (None for the lines of a
    process that runs several clusters and speaks for none of them). ``for_cluster`` gives a
    sibling for another cluster over the same stream, level, scrubbing and lock."""

    def __init__(
        self,
        cluster: str | None,
        *,
        stream: TextIO | None = None,
        level: str = "debug",
        secrets: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = cluster
        self._stream = stream
        self._threshold = LEVELS[level]
        self._scrub = Scrubber(secrets)
        self._clock = clock
        self._lock = threading.Lock()

    def for_cluster(self, cluster: str | None) -> JsonLog:
        """The same log for the lines of ``cluster``: one stream, one lock, so that lines of
        several clusters never interleave."""
        sibling = copy.copy(self)
        sibling.cluster = cluster
        return sibling

    def enabled(self, level: str) -> bool:
        """Whether a line at ``level`` would be written (skip building costly fields)."""
        return LEVELS[level] >= self._threshold

    def emit(self, event: str, node: str | None = None, level: str = "info", **fields: Any) -> None:
        if LEVELS[level] < self._threshold:
            return
        record: dict[str, Any] = {
            "ts": datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "event": event,
            "cluster": self.cluster,
            "node": node,
        }
        record.update(fields)
        line = dumps(record, self._scrub)
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write(line + "\n")
            stream.flush()


class Scrubber:
    """Replaces known secrets inside strings. ``found(text)`` says whether a serialized text
    may carry one (as ``json.dumps`` writes it: quotes, backslashes, non-ASCII escaped)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        plain = {s for s in secrets if s}
        self._plain = tuple(sorted(plain, key=len, reverse=True))
        self._escaped = tuple({json.dumps(s)[1:-1] for s in plain})

    def __bool__(self) -> bool:
        return bool(self._plain)

    def found(self, text: str) -> bool:
        return any(form in text for form in self._escaped)

    def __call__(self, text: str) -> str:
        for secret in self._plain:
            text = text.replace(secret, MASK)
        return text


def dumps(value: Any, scrub: Scrubber | None = None) -> str:
    """Compact JSON of ``value``: never NaN/Infinity, known secrets masked inside strings.

    The fast path serializes once; only a text that holds a non-finite number or something
    that looks like a secret is rebuilt value by value.
    """
    try:
        text = json.dumps(value, default=to_jsonable, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a NaN or an infinity somewhere
        text = None
    if text is not None and not (scrub and scrub.found(text)):
        return text
    if isinstance(value, Mapping):  # a record: its own field names are ours, kept as they are
        clean = {k: jsonable(v, scrub) for k, v in value.items()}
    else:
        clean = jsonable(value, scrub)
    return json.dumps(clean, separators=(",", ":"), allow_nan=False)


def jsonable(value: Any, scrub: Callable[[str], str] | None = None, _depth: int = 0) -> Any:
    """``value`` as plain JSON data: strings scrubbed, non-finite numbers as strings."""
    if isinstance(value, str):
        return scrub(value) if scrub else value
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else jsonable(str(value), scrub, _depth + 1)
    if _depth > 100:
        return "<nested too deeply>"
    if isinstance(value, Mapping):
        return {_key(k, scrub): jsonable(v, scrub, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, scrub, _depth + 1) for v in value]
    return jsonable(to_jsonable(value), scrub, _depth + 1)


def _key(key: Any, scrub: Callable[[str], str] | None) -> Any:
    if isinstance(key, str):
        return scrub(key) if scrub else key
    if key is None or isinstance(key, bool | int):
        return key
    return jsonable(str(key), scrub)


def to_jsonable(value: Any) -> Any:
    """``json.dumps`` default: dataclasses, enums, sets, paths; secrets masked."""
    if isinstance(value, SecretStr):
        return MASK
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, frozenset | set):
        return sorted(value, key=str)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if hasattr(value, "to_json"):
        return value.to_json()
    return str(value)
