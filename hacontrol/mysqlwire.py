"""The answer to one text-protocol query (COM_QUERY), read from bytes: pure, no I/O.

The probe runs the same multi-statement query on a kept connection every interval; reading its
answer through aiomysql's cursor costs most of a probe's CPU (a coroutine and a packet object
per packet, every column definition parsed again). ``TextAnswer`` reads the same wire bytes in
one pass: fed the bytes as they arrive, it says when the answer is complete and gives one row
list per result set, each row a dict keyed by column name, with exactly the values aiomysql's
``DictCursor`` gives (the same text decoding and converters, a repeated column name prefixed
with its table as ``DictCursor`` does).

Most of a status answer is column definitions (73 of them, 3.5 of its 4 KiB), the same on
every probe: ``ColumnCache`` remembers each result set's definitions as they arrived, byte for
byte with their sequence numbers, and the next answer that repeats them skips them with one
comparison; a column definition seen before is not parsed again either. A result set's rows
are decoded when its row packets differ from the previous answer's at the same place; when they
repeat byte for byte the previous rows are given again, the same objects (callers read rows,
never change them). A whole answer that arrives in one read and repeats the previous one byte
for byte (a primary at rest, a lease keepalive) is not read packet by packet at all: its result
sets are the previous ones.

It speaks what the connection asked for: protocol 4.1, EOF packets after the column
definitions and after the rows (``CLIENT_DEPRECATE_EOF`` never requested), no compression,
packets shorter than 16 MiB (an answer is bounded far below that by the caller's read budget).
Anything else is refused: an error packet raises the server's error (``pymysql.err``), as
aiomysql does; a packet out of sequence raises what aiomysql raises; malformed bytes raise
``MalformedAnswer`` (a ValueError: the node answered garbage), never anything else.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymysql import converters, err
from pymysql.connections import TEXT_TYPES
from pymysql.constants import CR, FIELD_TYPE, SERVER_STATUS

Rows = list[dict[str, Any]]
Decode = Callable[[bytes], Any]
Layout = tuple[tuple[str, Decode | None], ...]
"""A result set's columns: each one's key in a row and how its bytes become its value."""

MORE_RESULTS = SERVER_STATUS.SERVER_MORE_RESULTS_EXISTS
BINARY_CHARSET = 63
MAX_PAYLOAD = 0xFFFFFF
CACHE_LIMIT = 512
"""Column definitions (and result sets' definition blocks) a cache keeps at most."""
HEADER, COLUMN, COLUMNS_END, ROW = range(4)
"""Where an answer's reading is: each takes one whole packet."""


class MalformedAnswer(ValueError):
    """The bytes are not a well-formed answer to a text query."""


class AnswerTooLarge(err.OperationalError):
    """The server sent more than the connection's read budget: it is closed."""


@dataclass(frozen=True)
class Column:
    name: str
    table: str
    decode: Decode | None
    """Bytes to value as pymysql does it (None: the bytes themselves)."""


@dataclass(frozen=True)
class Block:
    """A result set's column definitions as they arrived: the header packet, each column's
    packet and the EOF, with their framing and sequence numbers."""

    raw: bytes
    seq: int
    """The sequence number of the header packet."""
    layout: Layout


class ColumnCache:
    """What a connection's answers taught: column definitions by their packet bytes, and each
    result set's whole definition block by its place in the answer (both bounded)."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._columns: dict[bytes, Column] = {}
        self._blocks: dict[int, Block] = {}
        self._rows: dict[int, tuple[list[bytes], Layout, Rows]] = {}
        self.last: tuple[bytes, list[Rows]] | None = None
        """The last answer read whole from one chunk, and its result sets."""

    def column(self, packet: bytes) -> Column:
        known = self._columns.get(packet)
        if known is None:
            known = parse_column(packet, self.encoding)
            if len(self._columns) >= CACHE_LIMIT:
                self._columns.clear()
            self._columns[packet] = known
        return known

    def block(self, index: int) -> Block | None:
        return self._blocks.get(index)

    def remember(self, index: int, block: Block) -> None:
        if len(self._blocks) >= CACHE_LIMIT:
            self._blocks.clear()
        self._blocks[index] = block

    def rows(self, index: int, packets: list[bytes], layout: Layout) -> Rows:
        """The rows of the result set at ``index`` from its row packets: the previous answer's
        rows (the same list) when its packets and columns at that place were the same."""
        last = self._rows.get(index)
        if last is not None and last[0] == packets and last[1] == layout:
            return last[2]
        rows = [read_row(packet, layout) for packet in packets]
        if len(self._rows) >= CACHE_LIMIT:
            self._rows.clear()
        self._rows[index] = (packets, layout, rows)
        return rows


def parse_column(packet: bytes, encoding: str) -> Column:
    """A column definition (Protocol::ColumnDefinition41), as pymysql reads it."""
    pos = 0
    fields = []
    for _ in range(6):  # catalog, schema, table, org_table, name, org_name
        value, pos = lenenc_bytes(packet, pos)
        if value is None:
            raise MalformedAnswer("a column definition has a NULL name")
        fields.append(value)
    if len(packet) < pos + 13:
        raise MalformedAnswer("a column definition is cut short")
    charset, _length, type_code = struct.unpack_from("<xHIB", packet, pos)
    table, name = fields[2].decode(encoding), fields[4].decode(encoding)
    return Column(name, table, decoder(type_code, charset, encoding))


def decoder(type_code: int, charset: int, encoding: str) -> Decode | None:
    """What pymysql does with a value of this type: decode its text (strings in the
    connection's encoding, binary strings not at all, everything else as ASCII), then convert
    it (``pymysql.converters.decoders``)."""
    if type_code == FIELD_TYPE.JSON:
        text: str | None = encoding
    elif type_code in TEXT_TYPES:
        text = None if charset == BINARY_CHARSET else encoding
    else:
        text = "ascii"
    convert = converters.decoders.get(type_code)
    if convert is converters.through:
        convert = None
    if text is None:
        return None if convert is None else convert
    if convert is None:
        return _text(text)
    return lambda data: convert(data.decode(text))


def _text(encoding: str) -> Decode:
    if encoding in ("utf8", "utf-8"):
        return bytes.decode  # utf-8, the default: one C call
    return lambda data: data.decode(encoding)


def lenenc_int(data: bytes, pos: int) -> tuple[int | None, int]:
    """A length-encoded integer at ``pos`` (None for the NULL marker 0xFB) and where it ends."""
    try:
        first = data[pos]
        if first < 0xFB:
            return first, pos + 1
        if first == 0xFB:
            return None, pos + 1
        if first == 0xFC:
            return data[pos + 1] | data[pos + 2] << 8, pos + 3
        if first == 0xFD:
            return data[pos + 1] | data[pos + 2] << 8 | data[pos + 3] << 16, pos + 4
        if first == 0xFE:
            return struct.unpack_from("<Q", data, pos + 1)[0], pos + 9
    except (IndexError, struct.error):
        pass
    raise MalformedAnswer(f"a length at byte {pos} is cut short or invalid")


def lenenc_bytes(data: bytes, pos: int) -> tuple[bytes | None, int]:
    size, pos = lenenc_int(data, pos)
    if size is None:
        return None, pos
    end = pos + size
    if end > len(data):
        raise MalformedAnswer(f"a value of {size} bytes at byte {pos} is cut short")
    return data[pos:end], end


def read_row(packet: bytes, layout: Layout) -> dict[str, Any]:
    """One text row: each value decoded and converted as pymysql does. A row with fewer values
    than columns ends early (pymysql's leniency); bytes past the last column are ignored."""
    row: dict[str, Any] = {}
    pos, end = 0, len(packet)
    for key, decode in layout:
        if pos >= end:
            break
        first = packet[pos]
        if first < 0xFB:  # the common case, inline: a value shorter than 251 bytes
            start = pos + 1
            pos = start + first
            if pos > end:
                raise MalformedAnswer(f"a value of {first} bytes at byte {start} is cut short")
            data: Any = packet[start:pos]
        else:
            data, pos = lenenc_bytes(packet, pos)
        row[key] = data if decode is None or data is None else decode(data)
    return row


def layout_of(columns: list[Column]) -> Layout:
    """DictCursor's keys (a name seen before in the same result is prefixed with its table),
    with each column's decoder."""
    keys: list[str] = []
    for column in columns:
        keys.append(f"{column.table}.{column.name}" if column.name in keys else column.name)
    return tuple(zip(keys, (c.decode for c in columns), strict=True))


class TextAnswer:
    """The answer to one COM_QUERY, fed as it arrives: ``feed(data)`` returns True once it is
    complete; ``results`` then holds one row list per statement (an empty list for a statement
    without a result set, as aiomysql's ``fetchall`` gives)."""

    def __init__(self, cache: ColumnCache) -> None:
        self.results: list[Rows] = []
        self.complete = False
        self._cache = cache
        self._buffer = b""
        self._seq = 1  # the command was packet 0
        self._columns_left = 0
        self._columns: list[Column] = []
        self._layout: Layout = ()
        self._packets: list[bytes] = []
        self._phase = HEADER
        self._block: tuple[int, int] | None = None
        """Where the definition block under way began in this feed's buffer, and its seq."""
        self._fed = False
        """A chunk came already (the sequence number wraps at 256: it cannot say so)."""

    def feed(self, data: bytes) -> bool:
        if self.complete:
            raise MalformedAnswer("the server sent more after its answer was complete")
        whole = not self._fed  # this chunk starts the answer
        self._fed = True
        if whole and (last := self._cache.last) is not None and data == last[0]:
            self.results, self.complete = list(last[1]), True
            return True
        buffer = self._buffer + data if self._buffer else data
        pos, size = 0, len(buffer)
        self._block = None
        while size - pos >= 4:
            if self._phase == HEADER:
                pos = self._known_block(buffer, pos)
                if self._phase == ROW:
                    continue
            length = buffer[pos] | buffer[pos + 1] << 8 | buffer[pos + 2] << 16
            if size - pos - 4 < length:
                break
            self._check_sequence(buffer[pos + 3], length)
            start, pos = pos + 4, pos + 4 + length
            _HANDLERS[self._phase](self, buffer[start:pos])
            if self._phase == ROW and self._block is not None:
                self._remember(buffer, pos)
            if self.complete:
                if pos != size:
                    raise MalformedAnswer("the server sent more after its answer was complete")
                if whole:
                    self._cache.last = (data, list(self.results))
                break
        self._buffer = buffer[pos:]
        return self.complete

    def wanted(self) -> int:
        """Bytes still missing from the packet under way (its header's length, once read)."""
        buffer = self._buffer
        if len(buffer) < 4:
            return 4 - len(buffer)
        return 4 + (buffer[0] | buffer[1] << 8 | buffer[2] << 16) - len(buffer)

    # -- definition blocks seen before ---------------------------------------------------------

    def _known_block(self, buffer: bytes, pos: int) -> int:
        """At a result's header: skip its definitions when they repeat a known block byte for
        byte (sequence numbers included); else note where they begin, to remember them."""
        known = self._cache.block(len(self.results))
        if known is not None and known.seq == self._seq and buffer.startswith(known.raw, pos):
            self._layout, self._packets, self._phase = known.layout, [], ROW
            self._seq = (self._seq + len(known.layout) + 2) % 256  # header, columns, EOF
            return pos + len(known.raw)
        self._block = (pos, self._seq)
        return pos

    def _remember(self, buffer: bytes, end: int) -> None:
        assert self._block is not None
        start, seq = self._block
        self._block = None
        self._cache.remember(len(self.results), Block(buffer[start:end], seq, self._layout))

    def _check_sequence(self, seq: int, length: int) -> None:
        if seq != self._seq:
            if seq == 0:  # MySQL 8 sends its shutdown error with sequence 0 (as aiomysql says)
                raise err.OperationalError(
                    CR.CR_SERVER_LOST, "Lost connection to MySQL server during query"
                )
            raise err.InternalError(
                f"Packet sequence number wrong - got {seq} expected {self._seq}"
            )
        if length == MAX_PAYLOAD:
            raise MalformedAnswer("a packet of 16 MiB or more: not a probe's answer")
        self._seq = (self._seq + 1) % 256

    # -- states: each takes one whole packet ----------------------------------------------------

    def _header(self, packet: bytes) -> None:
        if not packet:
            raise MalformedAnswer("an empty packet where a result was expected")
        first = packet[0]
        if first == 0xFF:
            raise_error(packet)
        if first == 0x00 and len(packet) >= 7:  # OK: a statement without a result set
            self._block = None
            self.results.append([])
            _affected, pos = lenenc_int(packet, 1)
            _insert_id, pos = lenenc_int(packet, pos)
            if len(packet) < pos + 2:
                raise MalformedAnswer("an OK packet is cut short")
            self._next_or_done(packet[pos] | packet[pos + 1] << 8)
            return
        if first == 0xFB:
            raise MalformedAnswer("the server asked for a local file (LOAD DATA LOCAL)")
        count, _ = lenenc_int(packet, 0)
        if not count:
            raise MalformedAnswer(f"a result announcing {count} columns")
        self._columns_left, self._columns = count, []
        self._phase = COLUMN

    def _column(self, packet: bytes) -> None:
        if packet[:1] == b"\xff":
            raise_error(packet)
        self._columns.append(self._cache.column(packet))
        self._columns_left -= 1
        if self._columns_left == 0:
            self._layout = layout_of(self._columns)
            self._phase = COLUMNS_END

    def _columns_end(self, packet: bytes) -> None:
        if packet[:1] == b"\xff":
            raise_error(packet)
        if not is_eof(packet):
            raise MalformedAnswer("expected the end of the column definitions")
        self._packets = []
        self._phase = ROW

    def _row(self, packet: bytes) -> None:
        if is_eof(packet):
            self.results.append(self._cache.rows(len(self.results), self._packets, self._layout))
            self._next_or_done(packet[3] | packet[4] << 8 if len(packet) >= 5 else 0)
        elif packet[:1] == b"\xff":
            raise_error(packet)
        else:
            self._packets.append(packet)

    def _next_or_done(self, status: int) -> None:
        if status & MORE_RESULTS:
            self._phase = HEADER
        else:
            self.complete = True


def is_eof(packet: bytes) -> bool:
    return packet[:1] == b"\xfe" and len(packet) < 9


def raise_error(packet: bytes) -> None:
    """The server's error, as the exception aiomysql raises for it."""
    if len(packet) < 4:
        raise MalformedAnswer("an error packet is cut short")
    err.raise_mysql_exception(packet)


_HANDLERS = (TextAnswer._header, TextAnswer._column, TextAnswer._columns_end, TextAnswer._row)
"""``TextAnswer``'s state handlers by phase, unbound: bound ones kept on each answer made it
a reference cycle, left to the garbage collector (one per probe; ``tests/test_mysqlwire.py``)."""
