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
"""

from __future__ import annotations

import socket
import struct
from typing import Any

_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)  # Linux only
_INFO_BYTES = 136  # struct tcp_info up to tcpi_bytes_received (Linux 4.1)
_LAST_DATA_RECV = struct.Struct("=I")  # at offset 52, in ms
_BYTES_RECEIVED = struct.Struct("=Q")  # at offset 128


def waited(transport: Any) -> float | None:
    """Seconds since the kernel last received data on ``transport``, a
    connection just accepted; None: nothing received yet, or not known."""
    if _TCP_INFO is None:
        return None
    try:
        info = transport.getHandle().getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO_BYTES)
    except (AttributeError, OSError):  # no socket of its own, or not TCP
        return None
    if len(info) < _INFO_BYTES or not _BYTES_RECEIVED.unpack_from(info, 128)[0]:
        return None
    ms: int = _LAST_DATA_RECV.unpack_from(info, 52)[0]
    return ms / 1000.0
