"""Send in the turn that made the bytes, not the reactor's next one.

Twisted's transports queue every write and ask epoll to report the socket
writable (one ``epoll_ctl``), write in the next turn, then stop watching
(another ``epoll_ctl``); under load that next turn is a long one, and a
partner's request or an answer waits through it. Sent at once instead,
each write wakes its peer on its own, and the wake-ups cost the sender:
on loopback, 2,500 clients' answers each woke the load generator.

``send`` does neither: what a turn writes to a plain TCP connection (ours
to a client, or to a partner) with nothing queued is gathered, and sent
straight to its socket when the reactor next runs its due calls, a
connection's writes in one send. For what the turn's I/O wrote, that is
before the reactor polls again: the turn's peers are woken together, and
nothing waits through the next turn. (What a timer writes goes after the
next poll's I/O; ``flush`` sends a connection's bytes before it closes.)
Whatever the kernel does not take, and every other transport (TLS), takes
Twisted's path. The order of bytes is kept: bytes Twisted queued behind
gathered ones (its own ``100 Continue``) go after them. What waits is what
one turn wrote, until the turn's end.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor, tcp
from twisted.internet.interfaces import IDelayedCall

from . import _twisted

_PLAIN_TCP = (tcp.Server, tcp.Client)
_gathered: dict[Any, list[bytes]] = {}  # each connection's writes this turn, in order
_sending: IDelayedCall | None = None


def send(transport: Any, data: bytes) -> None:
    """Write ``data`` to ``transport``: at the end of this turn, straight
    to its socket, when that is safe (see the module)."""
    global _sending
    gathered = _gathered.get(transport)
    if gathered is not None:
        if _twisted.nothing_queued(transport):
            gathered.append(data)
            return
        flush(transport)  # Twisted queued bytes since: ours go first
    elif _straight(transport):
        _gathered[transport] = [data]
        if _sending is None:
            _sending = reactor.callLater(0, _send_gathered)
        return
    transport.write(data)


def flush(transport: Any) -> None:
    """Send what this turn gathered for ``transport`` now: before it closes
    (a close made in a timer would otherwise come first)."""
    chunks = _gathered.pop(transport, None)
    if chunks is None or not transport.connected:  # (lost since: nothing to send on)
        return
    if _twisted.nothing_queued(transport):
        write_now(transport, b"".join(chunks))
    else:  # Twisted queued bytes behind ours: ours go first
        _twisted.queue_first(transport, b"".join(chunks))


def _send_gathered() -> None:
    global _sending
    _sending = None
    for transport in list(_gathered):
        flush(transport)


def write_now(transport: Any, data: bytes) -> None:
    """Write ``data`` to ``transport``, straight to its socket when it is
    a plain TCP connection with nothing queued."""
    if _straight(transport):
        sent = _twisted.write_some(transport, data)
        if type(sent) is int:
            if sent == len(data):
                return
            data = data[sent:]
        # else the connection is gone: the queued write lets Twisted find out
    transport.write(data)


def _straight(transport: Any) -> bool:
    """Whether bytes may go straight to ``transport``'s socket: a plain TCP
    connection, open, with nothing queued."""
    return (type(transport) in _PLAIN_TCP and transport.connected
            and not transport.disconnecting and _twisted.nothing_queued(transport))
