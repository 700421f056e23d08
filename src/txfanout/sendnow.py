"""Send in the turn that made the bytes, not the reactor's next one.

Twisted's transports queue every write and ask epoll to report the socket
writable (one ``epoll_ctl``), write in the next turn, then stop watching
(another ``epoll_ctl``). An answer on an idle socket fits its send buffer,
so for a plain TCP connection (ours to a client, or to a partner) with
nothing queued, ``write_now`` sends at once; whatever the kernel does not
take, and every other transport (TLS), takes the usual path, so the order
of bytes is kept.

Sending at once costs more than it saves while the reactor keeps up: the
queued writes of a turn leave together, and a peer woken once reads them
all. When the reactor falls behind, each turn is long and a queued write
(a partner's request, an answer) waits for it. ``write_soon`` sends at once
only then: while the reactor lags by ``URGENT_LAG`` or more (see ``follow``;
a process has one reactor, so one lag for all its writes).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

from . import _twisted

_PLAIN_TCP = (tcp.Server, tcp.Client)
URGENT_LAG = 0.01  # seconds
_lag: Any = None


def follow(lag: Any) -> None:
    """Take the reactor's lag from ``lag`` (a ReactorLag) from now on."""
    global _lag
    _lag = lag


def write_soon(transport: Any, data: bytes) -> None:
    """``write_now`` while the reactor lags, else the usual queued write."""
    if _lag is not None and _lag.recent >= URGENT_LAG:
        write_now(transport, data)
    else:
        transport.write(data)


def write_now(transport: Any, data: bytes) -> None:
    """Write ``data`` to ``transport``, straight to its socket when that is
    safe (see the module's docstring)."""
    if (type(transport) in _PLAIN_TCP and transport.connected
            and not transport.disconnecting and _twisted.nothing_queued(transport)):
        sent = _twisted.write_some(transport, data)
        if type(sent) is int:
            if sent == len(data):
                return
            data = data[sent:]
        # else the connection is gone: the queued write lets Twisted find out
    transport.write(data)
