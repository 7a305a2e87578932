"""The MariaDB wire protocol as the fake fleet speaks it (pure functions and constants).

The classic text protocol: handshake v10 (MariaDB 10.11's version string and capabilities,
mysql_native_password), COM_QUERY answered with OK, ERR or text result sets closed by EOF
packets (CLIENT_DEPRECATE_EOF is not offered), several result sets for a multi-statement
query (SERVER_MORE_RESULTS_EXISTS), COM_PING, COM_QUIT. Column definitions are the ones a
real MariaDB 10.11 sent (``mariadb-10.11.json``, written by ``record.py``), so that aiomysql
decodes the fake's values into the same Python types as a real server's.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymysql.constants import CLIENT

from tests.mysql_wire import frame, lenenc_int, lenenc_str

RECORDING = Path(__file__).with_name("mariadb-10.11.json")

SERVER_STATUS_AUTOCOMMIT = 0x0002
SERVER_MORE_RESULTS_EXISTS = 0x0008
NATIVE_PASSWORD = "mysql_native_password"

COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_PING = 0x0E

SUPPORTED = (
    CLIENT.LONG_PASSWORD
    | CLIENT.FOUND_ROWS
    | CLIENT.LONG_FLAG
    | CLIENT.CONNECT_WITH_DB
    | CLIENT.PROTOCOL_41
    | CLIENT.INTERACTIVE
    | CLIENT.TRANSACTIONS
    | CLIENT.SECURE_CONNECTION
    | CLIENT.MULTI_STATEMENTS
    | CLIENT.MULTI_RESULTS
    | CLIENT.PS_MULTI_RESULTS
    | CLIENT.PLUGIN_AUTH
    | CLIENT.CONNECT_ATTRS
    | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA
)


@functools.cache
def recording() -> dict[str, Any]:
    return json.loads(RECORDING.read_text())


def recorded_sets(statement: str) -> list[dict[str, Any]]:
    return recording()["statements"][statement]["sets"]


def handshake(connection_id: int, salt: bytes) -> bytes:
    """Protocol::HandshakeV10 as MariaDB 10.11 sends it (capabilities limited to ours)."""
    recorded = recording()["handshake"]
    caps = recorded["capabilities"] & SUPPORTED
    return (
        b"\x0a"
        + recorded["server_version"].encode() + b"\x00"
        + struct.pack("<I", connection_id)
        + salt[:8] + b"\x00"
        + struct.pack("<H", caps & 0xFFFF)
        + bytes([recorded["charset"]])
        + struct.pack("<H", SERVER_STATUS_AUTOCOMMIT)
        + struct.pack("<H", caps >> 16)
        + bytes([len(salt) + 1])
        + b"\x00" * 10
        + salt[8:] + b"\x00"
        + NATIVE_PASSWORD.encode() + b"\x00"
    )  # fmt: skip


def status(more: bool) -> int:
    return SERVER_STATUS_AUTOCOMMIT | (SERVER_MORE_RESULTS_EXISTS if more else 0)


def ok(affected: int = 0, *, more: bool = False) -> bytes:
    return b"\x00" + lenenc_int(affected) + lenenc_int(0) + struct.pack("<HH", status(more), 0)


def eof(*, more: bool = False) -> bytes:
    return b"\xfe" + struct.pack("<HH", 0, status(more))


def column_definition(recorded: dict[str, Any], name: str | None = None) -> bytes:
    """Protocol::ColumnDefinition41 from a recorded field, optionally renamed."""
    return (
        lenenc_str(b"def")
        + lenenc_str(recorded["db"].encode())
        + lenenc_str(recorded["table"].encode())
        + lenenc_str(recorded["org_table"].encode())
        + lenenc_str((recorded["name"] if name is None else name).encode())
        + lenenc_str(recorded["org_name"].encode())
        + b"\x0c"
        + struct.pack(
            "<HIBHB",
            recorded["charset"],
            recorded["length"],
            recorded["type"],
            recorded["flags"],
            recorded["decimals"],
        )
        + b"\x00\x00"
    )


@dataclass
class Columns:
    """The column part of a result set: count, definitions, EOF; framed once per sequence
    number it starts at (a probe's answers always start at the same ones)."""

    names: tuple[str, ...]
    payloads: tuple[bytes, ...]
    _framed: dict[int, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, fields: Iterable[tuple[dict[str, Any], str | None]]) -> Columns:
        listed = list(fields)
        defs = tuple(column_definition(f, name) for f, name in listed)
        names = tuple(name if name is not None else f["name"] for f, name in listed)
        return cls(names, (lenenc_int(len(defs)), *defs, eof()))

    @classmethod
    def recorded(cls, statement: str, index: int = 0) -> Columns:
        return cls.of((f, None) for f in recorded_sets(statement)[index]["fields"])

    def framed(self, seq: int) -> bytes:
        found = self._framed.get(seq)
        if found is None:
            found = frame_all(self.payloads, seq)
            self._framed[seq] = found
        return found


def frame_all(payloads: Iterable[bytes], seq: int) -> bytes:
    return b"".join(frame(payload, seq + i) for i, payload in enumerate(payloads))


def read_packet(buffer: bytearray) -> bytes | None:
    """Take the first whole packet's payload out of ``buffer``, if there is one (payloads of
    16 MiB and more, sent in several packets, are not needed: statements here are small)."""
    if len(buffer) < 4:
        return None
    length = int.from_bytes(buffer[:3], "little")
    if len(buffer) < 4 + length:
        return None
    payload = bytes(buffer[4 : 4 + length])
    del buffer[: 4 + length]
    return payload


def client_capabilities(payload: bytes) -> int:
    return int.from_bytes(payload[:4], "little") if len(payload) >= 4 else 0
