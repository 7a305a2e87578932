"""The one-pass answer reader on synthetic wire bytes (no server): the repeated-answer
shortcut is taken only for a chunk that starts an answer."""

from __future__ import annotations

import gc
import struct
import weakref

from hacontrol.mysqlwire import ColumnCache, TextAnswer
from tests.mysql_wire import column_definition, eof_packet, frame, lenenc_int, text_row

MORE_RESULTS = 0x08


def answer(name: str, values: list[str], seq: int, more: bool) -> tuple[bytes, int]:
    """A one-column text result set framed from ``seq``; its bytes and the next seq."""
    last_eof = b"\xfe" + struct.pack("<HH", 0, MORE_RESULTS if more else 0x02)
    payloads = [lenenc_int(1), column_definition(name), eof_packet()]
    payloads += [text_row([v]) for v in values] + [last_eof]
    framed = b"".join(frame(p, (seq + i) % 256) for i, p in enumerate(payloads))
    return framed, seq + len(payloads)


def test_a_chunk_after_256_packets_is_not_read_as_the_start_of_an_answer():
    # Y = a result set of 256 packets then X's bytes: its 257th packet has seq 1 again. Read
    # as A then X, after X was answered whole on the same cache, Y must still be 2 sets.
    x, _ = answer("x", ["hello"], 1, more=False)
    a, after = answer("a", [str(i) for i in range(252)], 1, more=True)
    assert after == 257
    cache = ColumnCache("utf8")
    first = TextAnswer(cache)
    assert first.feed(x) and [len(r) for r in first.results] == [1]
    split = TextAnswer(cache)
    assert not split.feed(a)
    assert split.feed(x)
    assert [len(r) for r in split.results] == [252, 1]
    # What the cache remembers as a whole answer is still X alone.
    again = TextAnswer(cache)
    assert again.feed(x) and [len(r) for r in again.results] == [1]


def test_an_answer_read_whole_twice_gives_the_same_result_sets():
    x, _ = answer("x", ["a", "b"], 1, more=False)
    cache = ColumnCache("utf8")
    one, two = TextAnswer(cache), TextAnswer(cache)
    assert one.feed(x) and two.feed(x)
    assert two.results == one.results and two.results[0] is one.results[0]


def test_an_answer_read_is_freed_when_dropped_not_left_to_the_collector():
    # One answer per probe, 1,000 probes a second at scale: a reference cycle in each (its
    # handlers bound to itself) made every young collection free about 2,000 of them, up to
    # 0.1 s a collection (bench/README.md, "Scale"). Dropped, it must go at once.
    x, _ = answer("x", ["a", "b"], 1, more=False)
    cache = ColumnCache("utf8")
    enabled = gc.isenabled()
    gc.disable()
    try:
        for data in (x, x[:7]):  # complete, and one dropped half-read
            reader = TextAnswer(cache)
            reader.feed(data)
            gone = weakref.ref(reader)
            del reader
            assert gone() is None
    finally:
        if enabled:
            gc.enable()
