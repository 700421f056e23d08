"""How much a connection reads from its socket at a time.

Twisted's TCP transport reads up to its ``bufferSize``, 64 KiB, each time
its socket is readable. On PyPy, ``socket.recv(n)`` allocates ``n`` bytes
whatever arrives (then shrinks them to what came), and each counts against
the nursery: at fan-out 8, nine 64 KiB reads a request were about half of
what the request path allocated, and minor collections came that much more
often (bench/RESULTS.md). A request, a partner's answer or a TLS record is
rarely over a few KiB, so the gateway's connections, to clients and to
partners, read :data:`READ_SIZE` at a time; a larger message takes a few
more reads.

Twisted uses the same ``bufferSize`` as the most a transport holds unsent
before it pauses its producer, so a connection pauses past 16 KiB unsent
(site.py's back-pressure), not 64 KiB.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

READ_SIZE = 16 * 1024


def read_at_most(transport: Any, size: int = READ_SIZE) -> None:
    """Make the TCP transport under ``transport`` (TLS wraps one) read at
    most ``size`` bytes at a time; any other transport is left as it is."""
    while transport is not None and not isinstance(transport, tcp.Connection):
        transport = getattr(transport, "transport", None)
    if transport is not None:
        transport.bufferSize = size
