"""MySQL client/server protocol pieces for the tests' own MySQL-protocol servers and relays
(pure functions). Written first for a ProxySQL admin double, now retired (tests/README.md).

Only the classic text protocol is spoken: handshake v10 with mysql_native_password,
COM_QUERY answered by OK, ERR or a text result set terminated by EOF packets (never
advertising CLIENT_DEPRECATE_EOF), COM_PING, COM_INIT_DB and COM_QUIT.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

# Capability flags (include/mysql_com.h).
CLIENT_LONG_PASSWORD = 0x00000001
CLIENT_FOUND_ROWS = 0x00000002
CLIENT_LONG_FLAG = 0x00000004
CLIENT_CONNECT_WITH_DB = 0x00000008
CLIENT_PROTOCOL_41 = 0x00000200
CLIENT_TRANSACTIONS = 0x00002000
CLIENT_SECURE_CONNECTION = 0x00008000
CLIENT_MULTI_RESULTS = 0x00020000
CLIENT_PLUGIN_AUTH = 0x00080000
CLIENT_CONNECT_ATTRS = 0x00100000
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 0x00200000

SERVER_CAPABILITIES = (
    CLIENT_LONG_PASSWORD
    | CLIENT_FOUND_ROWS
    | CLIENT_LONG_FLAG
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_PROTOCOL_41
    | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION
    | CLIENT_MULTI_RESULTS
    | CLIENT_PLUGIN_AUTH
    | CLIENT_CONNECT_ATTRS
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
)

SERVER_STATUS_AUTOCOMMIT = 0x0002

COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_PING = 0x0E

NATIVE_PASSWORD = "mysql_native_password"
UTF8_GENERAL_CI = 33
MYSQL_TYPE_VAR_STRING = 0xFD
MAX_PAYLOAD = 0xFFFFFF


def lenenc_int(value: int) -> bytes:
    if value < 0xFB:
        return bytes([value])
    if value <= 0xFFFF:
        return b"\xfc" + struct.pack("<H", value)
    if value <= 0xFFFFFF:
        return b"\xfd" + struct.pack("<I", value)[:3]
    return b"\xfe" + struct.pack("<Q", value)


def lenenc_str(value: bytes) -> bytes:
    return lenenc_int(len(value)) + value


def read_lenenc_int(data: bytes, pos: int) -> tuple[int, int]:
    first = data[pos]
    if first < 0xFB:
        return first, pos + 1
    if first == 0xFC:
        return struct.unpack_from("<H", data, pos + 1)[0], pos + 3
    if first == 0xFD:
        return int.from_bytes(data[pos + 1 : pos + 4], "little"), pos + 4
    return struct.unpack_from("<Q", data, pos + 1)[0], pos + 9


def frame(payload: bytes, seq: int) -> bytes:
    """One wire packet: 3-byte length, 1-byte sequence id, payload."""
    if len(payload) >= MAX_PAYLOAD:
        raise ValueError("payloads of 16 MiB and more are not supported by the double")
    return struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload


def native_password_scramble(password: str, salt: bytes) -> bytes:
    """What a client sends for mysql_native_password: SHA1(pw) XOR SHA1(salt + SHA1(SHA1(pw)))."""
    if not password:
        return b""
    stage1 = hashlib.sha1(password.encode()).digest()
    stage2 = hashlib.sha1(stage1).digest()
    mix = hashlib.sha1(salt + stage2).digest()
    return bytes(a ^ b for a, b in zip(stage1, mix, strict=True))


def handshake_v10(server_version: str, connection_id: int, salt: bytes) -> bytes:
    if len(salt) != 20:
        raise ValueError("salt must be 20 bytes")
    return (
        b"\x0a"
        + server_version.encode() + b"\x00"
        + struct.pack("<I", connection_id)
        + salt[:8] + b"\x00"
        + struct.pack("<H", SERVER_CAPABILITIES & 0xFFFF)
        + bytes([UTF8_GENERAL_CI])
        + struct.pack("<H", SERVER_STATUS_AUTOCOMMIT)
        + struct.pack("<H", SERVER_CAPABILITIES >> 16)
        + bytes([21])
        + b"\x00" * 10
        + salt[8:] + b"\x00"
        + NATIVE_PASSWORD.encode() + b"\x00"
    )  # fmt: skip


@dataclass(frozen=True)
class HandshakeResponse:
    capabilities: int
    user: str
    auth_response: bytes
    database: str | None
    auth_plugin: str | None


def parse_handshake_response(payload: bytes) -> HandshakeResponse:
    """Protocol::HandshakeResponse41 (the only form pymysql/aiomysql send)."""
    (client_caps,) = struct.unpack_from("<I", payload, 0)
    caps = client_caps & SERVER_CAPABILITIES
    pos = 4 + 4 + 1 + 23
    end = payload.index(b"\x00", pos)
    user = payload[pos:end].decode()
    pos = end + 1
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        length, pos = read_lenenc_int(payload, pos)
    elif caps & CLIENT_SECURE_CONNECTION:
        length, pos = payload[pos], pos + 1
    else:
        length = payload.index(b"\x00", pos) - pos
    auth = payload[pos : pos + length]
    pos += length
    database = None
    if caps & CLIENT_CONNECT_WITH_DB and pos < len(payload):
        end = payload.index(b"\x00", pos)
        database, pos = payload[pos:end].decode(), end + 1
    plugin = None
    if caps & CLIENT_PLUGIN_AUTH and pos < len(payload):
        end = payload.find(b"\x00", pos)
        end = len(payload) if end < 0 else end
        plugin = payload[pos:end].decode()
    return HandshakeResponse(caps, user, auth, database, plugin)


def auth_switch_request(salt: bytes) -> bytes:
    return b"\xfe" + NATIVE_PASSWORD.encode() + b"\x00" + salt + b"\x00"


def ok_packet(affected_rows: int = 0, info: str = "") -> bytes:
    return (
        b"\x00"
        + lenenc_int(affected_rows)
        + lenenc_int(0)
        + struct.pack("<HH", SERVER_STATUS_AUTOCOMMIT, 0)
        + info.encode()
    )


def err_packet(code: int, sqlstate: str, message: str) -> bytes:
    return b"\xff" + struct.pack("<H", code) + b"#" + sqlstate.encode()[:5] + message.encode()


def eof_packet() -> bytes:
    return b"\xfe" + struct.pack("<HH", 0, SERVER_STATUS_AUTOCOMMIT)


def column_definition(name: str) -> bytes:
    """Every column is sent as VAR_STRING, as ProxySQL's admin does for its SQLite results."""
    return (
        lenenc_str(b"def")
        + lenenc_str(b"")
        + lenenc_str(b"")
        + lenenc_str(b"")
        + lenenc_str(name.encode())
        + lenenc_str(b"")
        + b"\x0c"
        + struct.pack("<HIBHB", UTF8_GENERAL_CI, 15, MYSQL_TYPE_VAR_STRING, 1, 0x1F)
        + b"\x00\x00"
    )


def text_row(values: Sequence[str | None]) -> bytes:
    return b"".join(b"\xfb" if v is None else lenenc_str(v.encode()) for v in values)


def result_set(columns: Sequence[str], rows: Sequence[Sequence[str | None]]) -> list[bytes]:
    """The payloads of a text result set, in order (column count .. final EOF)."""
    payloads = [lenenc_int(len(columns))]
    payloads += [column_definition(name) for name in columns]
    payloads.append(eof_packet())
    payloads += [text_row(row) for row in rows]
    payloads.append(eof_packet())
    return payloads
