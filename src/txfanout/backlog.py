"""Backlog: how long a new connection's request waited in the kernel before
the gateway accepted it.

With every in-flight slot taken, the public face stops accepting
(conncap.py): new connections wait in the listening socket's backlog, their
first requests already received by the kernel. A request's deadline counts
from its first byte, and for a connection's first request that keeps its
connection, that is when the kernel received it, not when the gateway first
read it (or began to listen, if later): one that waited out its deadline in
the backlog is refused at once (503, ``backlog``), not answered with a 200
seconds after its client's deadline, and asks again on the connection it
keeps. A request that closes its connection is served, its deadline
counted from its reading (site.py: ``_backlog_wait`` says why).

Linux tells the wait at accept: ``TCP_INFO``'s ``tcpi_last_data_recv``, the
milliseconds since data last arrived (one ``getsockopt`` per connection,
about 4 µs), when ``tcpi_bytes_received`` says any did. On a transport that
is not a TCP socket of its own (TLS, Unix sockets, the tests' fakes), or on
another system, the wait is unknown and the deadline counts from the first
read.

The same read tells a connection whose client gave up while it waited: it
sent its FIN (``tcpi_state`` CLOSE_WAIT) or a reset (CLOSE). Twisted's HTTP
channel has no half-close, so it would read the request, start its fan-out,
then read the close and cancel it all: such a connection is closed at once
(``txfanout_abandoned_in_backlog_total``). Under a storm of clients that
time out, the backlog holds thousands of these; each cost a fan-out begun
and cancelled, or a refusal, and took an accept that a live client waited
for.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)  # Linux only
_INFO_BYTES = 136  # struct tcp_info up to tcpi_bytes_received (Linux 4.1)
_LAST_DATA_RECV = struct.Struct("=I")  # at offset 52, in ms
_BYTES_RECEIVED = struct.Struct("=Q")  # at offset 128
_PEER_CLOSED = (7, 8)  # tcpi_state, at offset 0: TCP_CLOSE (reset), TCP_CLOSE_WAIT (FIN)


def tcp_info(transport: Any) -> bytes | None:
    """``transport``'s ``TCP_INFO``, read once at accept; None: not known."""
    if _TCP_INFO is None:
        return None
    try:
        info: bytes = transport.getHandle().getsockopt(socket.IPPROTO_TCP, _TCP_INFO,
                                                        _INFO_BYTES)
    except (AttributeError, OSError):  # no socket of its own, or not TCP
        return None
    return info if len(info) >= _INFO_BYTES else None


def waited(info: bytes | None) -> float | None:
    """Seconds since the kernel last received data on a connection just
    accepted (its ``tcp_info``); None: nothing received yet, or not known."""
    if info is None or not _BYTES_RECEIVED.unpack_from(info, 128)[0]:
        return None
    ms: int = _LAST_DATA_RECV.unpack_from(info, 52)[0]
    return ms / 1000.0


def abandoned(info: bytes | None) -> bool:
    """Did the client of a connection just accepted close it (its FIN, or a
    reset) while it waited in the backlog?"""
    return info is not None and info[0] in _PEER_CLOSED
