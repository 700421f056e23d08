"""Send an answer in the turn that made it, not the reactor's next one.

Twisted's transports queue every write and ask epoll to report the socket
writable (one ``epoll_ctl``), write in the next turn, then stop watching
(another ``epoll_ctl``). An answer on an idle socket fits its send buffer,
so for a plain TCP connection (ours to a client, or to a partner) with
nothing queued, ``write_now`` sends at
once; whatever the kernel does not take, and every other transport (TLS),
takes the usual path, so the order of bytes is kept.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


_PLAIN_TCP = (tcp.Server, tcp.Client)


def write_now(transport: Any, data: bytes) -> None:
    """Write ``data`` to ``transport``, straight to its socket when that is
    safe (see the module's docstring)."""
    if (type(transport) in _PLAIN_TCP and transport.connected
            and not transport.disconnecting and not transport._tempDataBuffer
            and transport.offset == len(transport.dataBuffer)):
        sent = transport.writeSomeData(data)
        if type(sent) is int:
            if sent == len(data):
                return
            data = data[sent:]
        # else the connection is gone: the queued write lets Twisted find out
    transport.write(data)
