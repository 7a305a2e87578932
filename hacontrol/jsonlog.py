"""One JSON object per line on stdout: every event, state change and decision.

Fields: ``ts`` (wall clock, ISO 8601 UTC), ``level``, ``event``, ``cluster``, ``node`` (or null),
then the event's own fields. Known secrets are scrubbed from every line as a last defence, and
``SecretStr`` values never serialize.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from pydantic import SecretStr

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
MASK = "********"


class JsonLog:
    def __init__(
        self,
        cluster: str,
        *,
        stream: TextIO | None = None,
        level: str = "debug",
        secrets: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = cluster
        self._stream = stream
        self._threshold = LEVELS[level]
        # A secret appears in a line as json.dumps writes it (quotes, backslashes and control
        # characters escaped): scrub that form, and the plain one for non-ASCII secrets.
        forms = {form for s in secrets if s for form in (s, json.dumps(s)[1:-1])}
        self._secrets = tuple(sorted(forms, key=len, reverse=True))
        self._clock = clock

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
        line = json.dumps(record, default=to_jsonable, separators=(",", ":"))
        for secret in self._secrets:
            line = line.replace(secret, MASK)
        stream = self._stream or sys.stdout
        stream.write(line + "\n")
        stream.flush()


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
