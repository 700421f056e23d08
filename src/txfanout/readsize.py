"""How a connection reads from its socket: 16 KiB at most, into one buffer.

Twisted's TCP transport reads up to its ``bufferSize``, 64 KiB, each time
its socket is readable, with ``socket.recv(n)``. On PyPy that allocates
``n`` bytes whatever arrives (then shrinks them to what came), and each
counts against the nursery: at fan-out 8, nine 64 KiB reads a request were
about half of what the request path allocated, and minor collections came
that much more often (bench/RESULTS.md). So the gateway's connections, to
clients and to partners, read :data:`READ_SIZE` at a time: a request, a
partner's answer or a TLS record is rarely over a few KiB; a larger message
takes a few more reads. On PyPy they read with ``recv_into`` into one
buffer the whole process shares (the reactor reads one socket at a time)
and pass on a copy of only what arrived. CPython's ``recv`` gives back what
it did not use, and there the extra Python calls cost more than they save
(about 1 µs a read), so Twisted's own read stays.

Twisted uses the same ``bufferSize`` as the most a transport holds unsent
before it pauses its producer, so a connection pauses past 16 KiB unsent
(site.py's back-pressure), not 64 KiB.
"""

from __future__ import annotations

import platform
from errno import EWOULDBLOCK
from functools import partial
from typing import Any

from twisted.internet import main, tcp

from ._twisted import deliver_read

READ_SIZE = 16 * 1024
INTO_SHARED_BUFFER = platform.python_implementation() == "PyPy"

_BUFFER = bytearray(READ_SIZE)
_RECEIVED = memoryview(_BUFFER)


def read_into_buffer(connection: tcp.Connection) -> Any:
    """``tcp.Connection.doRead``, reading into the shared buffer: what
    arrived goes to the protocol as ``bytes`` of its own."""
    try:
        count = connection.socket.recv_into(_BUFFER, READ_SIZE)
    except OSError as error:
        if error.args[0] == EWOULDBLOCK:
            return None
        return main.CONNECTION_LOST
    return deliver_read(connection, bytes(_RECEIVED[:count]))


def read_at_most(transport: Any) -> None:
    """Make the TCP transport under ``transport`` (TLS wraps one) read
    :data:`READ_SIZE` at a time (on PyPy into the shared buffer); any other
    transport is left as it is."""
    while transport is not None and not isinstance(transport, tcp.Connection):
        transport = getattr(transport, "transport", None)
    if transport is not None:
        transport.bufferSize = READ_SIZE
        if INTO_SHARED_BUFFER:
            # on the instance: Twisted, not we, picks the transport's class
            transport.doRead = partial(  # type: ignore[method-assign]
                read_into_buffer, transport)
