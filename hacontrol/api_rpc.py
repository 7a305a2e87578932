"""The wire between the controller and its API process: length-prefixed JSON frames.

A frame is a 4-byte big-endian length and that many bytes of one JSON object (UTF-8). Each
object has a type ``t``; what each side sends:

- controller -> API process: ``config`` (first, once: the API settings, the token, the log
  level, the CPU priority, the names of the clusters), ``answer`` (to a ``read`` or a
  ``command``, by ``id``).
- API process -> controller: ``listening`` (the bound address) or ``failed`` (why not; the
  process then exits), ``read`` (``path``: /health, /ready, /status or /metrics), ``command``
  (an operator command's fields and its cluster), ``log`` (one log line for the controller's
  log).

Plain values in, plain values out: no event loop here but the stream helpers.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

HEADER = struct.Struct(">I")
TO_CONTROLLER_MAX = 1 << 20
"""Bytes of one frame the controller accepts (commands and log lines are small)."""
TO_API_MAX = 64 << 20
"""Bytes of one frame the API process accepts (a fleet's /status or /metrics can be large)."""


class FrameError(Exception):
    """The peer sent something that is not a frame of this protocol."""


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError included
        raise FrameError(f"not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise FrameError("not an object with a type 't'")
    return message


async def read_frame(reader: asyncio.StreamReader, limit: int) -> dict[str, Any] | None:
    """The next message; None at a clean end of stream; FrameError past ``limit`` bytes."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameError("stream ended inside a frame header") from None
        return None
    (size,) = HEADER.unpack(header)
    if size > limit:
        raise FrameError(f"frame of {size} bytes, more than {limit}")
    try:
        return decode(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        raise FrameError("stream ended inside a frame") from None
