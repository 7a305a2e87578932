"""The kernel's receive time of what a fake node reads: the honest stamp of a probe's arrival.

The fake fleet is one Python process serving 1,000 nodes: when its own event loop is late (a
burst of answers, a garbage collection, the process not scheduled), the time at which it reads
a probe is later than the time the probe reached the node's socket, and a cadence measured
from its reads counts the fake's lateness as the controller's. With ``SO_TIMESTAMPNS`` the
kernel stamps every segment when it is received, and ``recvmsg`` hands that stamp over with
the bytes (for TCP: the stamp of the last segment read, ``tcp_recv_timestamp``).

The transports of asyncio and uvloop read with ``recv``, without ancillary data. So a
:class:`StampedReader` stops the transport's reading and reads a duplicate of its socket
itself; writes, closing and everything else stay with the transport. The duplicate is closed
with the connection (``close``): the connection ends when both are closed.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import Callable

READ_SIZE = 256 * 1024
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Linux's value (asm-generic/socket.h; also ``SCM_TIMESTAMPNS``): Python names it only on
some builds. On 64-bit machines it hands a ``struct timespec`` of two 64-bit integers."""
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)


def monotonic_of(wall: float) -> float:
    """A ``CLOCK_REALTIME`` instant (the kernel's stamp) on this machine's monotonic clock,
    the one every process of a benchmark compares (within microseconds: both read now)."""
    return wall - (time.time() - time.monotonic())


def kernel_stamp(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    """The ``SCM_TIMESTAMPNS`` of ``recvmsg``'s ancillary data, as a monotonic instant."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanos = _TIMESPEC.unpack(data[: _TIMESPEC.size])
            return monotonic_of(seconds + nanos / 1e9)
    return None


class StampedReader:
    """Reads ``transport``'s socket with ``recvmsg``: ``on_data(bytes, kernel_stamp)``, and
    ``on_eof()`` once when the peer closed or the read failed."""

    def __init__(
        self,
        transport: asyncio.BaseTransport,
        on_data: Callable[[bytes, float | None], None],
        on_eof: Callable[[], None],
    ) -> None:
        original = transport.get_extra_info("socket")
        self._sock = socket.socket(fileno=os.dup(original.fileno()))
        self._sock.setblocking(False)
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._loop = asyncio.get_running_loop()
        self._on_data, self._on_eof = on_data, on_eof
        self._reading = False
        # uvloop starts a transport's reading after ``connection_made``: stop it then too.
        transport.pause_reading()  # type: ignore[attr-defined]
        self._loop.call_soon(transport.pause_reading)  # type: ignore[attr-defined]

    def resume(self) -> None:
        if not self._reading and self._sock.fileno() >= 0:
            self._loop.add_reader(self._sock.fileno(), self._readable)
            self._reading = True

    def pause(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False

    def close(self) -> None:
        self.pause()
        self._sock.close()

    def _readable(self) -> None:
        try:
            data, ancillary, _flags, _addr = self._sock.recvmsg(READ_SIZE, _ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            self._on_eof()
            return
        self._on_data(data, kernel_stamp(ancillary))
