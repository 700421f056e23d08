"""The gateway's connections, to clients and to partners, plain and TLS,
read 16 KiB at a time, on PyPy into one shared buffer (readsize.py): there
a ``recv`` allocates its whole size."""

from __future__ import annotations

import socket
from functools import partial
from typing import Any

import pytest_twisted
from twisted.internet import main, reactor, tcp
from twisted.internet.protocol import Protocol

from txfanout.readsize import INTO_SHARED_BUFFER, READ_SIZE, read_into_buffer
from txfanout.site import GatewayChannel

from .configs import route_config
from .loopback import keep_alive_client, within

KEEP = b"POST /bid HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}"


# On PyPy each connection reads into the shared buffer; CPython keeps
# Twisted's own read (readsize.py says why).
OUR_READ = read_into_buffer if INTO_SHARED_BUFFER else None


def our_read(transport: Any) -> Any:
    """The function behind ``transport.doRead`` if it is ours, else None."""
    return getattr(transport.doRead, "func", None)


def idle_partner_transports(gw: Any) -> list[Any]:
    """The transports of the connections the gateway's pool keeps idle."""
    return [c.transport for idle in gw.gateway.upstream.pool.idle_connections().values()
            for c in idle]


@pytest_twisted.ensureDeferred
async def test_client_and_partner_connections_read_16_kib_at_a_time(partner, make_gateway, logs):
    gw = make_gateway(route_config({"p": {"url": partner.url("/ok")}}))
    client = await keep_alive_client(gw.address)
    answer = await within(client.request(KEEP))
    assert answer.startswith(b"HTTP/1.1 200 ")
    served = [r for r in reactor.getReaders() if isinstance(r, tcp.Server)
              and isinstance(r.protocol, GatewayChannel) and r.protocol.site is gw.site]
    assert [t.bufferSize for t in served] == [READ_SIZE]
    assert [t.bufferSize for t in idle_partner_transports(gw)] == [READ_SIZE]
    assert {our_read(t) for t in served + idle_partner_transports(gw)} == {OUR_READ}
    client.transport.loseConnection()
    await within(client.closed)


@pytest_twisted.ensureDeferred
async def test_under_tls_the_tcp_connection_reads_16_kib_at_a_time(pki, tls_partner, make_gateway,
                                                                    logs):
    server = tls_partner(pki.server)
    gw = make_gateway(route_config({"p": {"url": server.url("/ok"), "ca_file": str(pki.ca)}}))
    assert (await gw.post()).outcomes() == {"p": "ok"}
    [tls] = idle_partner_transports(gw)
    assert not isinstance(tls, tcp.Connection)  # TLS wraps the TCP connection
    assert tls.transport.bufferSize == READ_SIZE
    assert our_read(tls.transport) is OUR_READ


class Collect(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)


def test_a_read_passes_on_bytes_of_its_own_and_at_most_16_kib():
    """What a read passes on is a copy: the next read into the shared
    buffer leaves it as it was. A larger message takes more reads. (The
    read is tested on every runtime, though only PyPy's connections use it.)"""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    protocol = Collect()
    connection = tcp.Connection(ours, protocol, reactor)
    connection.doRead = partial(read_into_buffer, connection)  # type: ignore[method-assign]
    theirs.sendall(b"a" * (READ_SIZE + 10))
    assert connection.doRead() is None
    assert connection.doRead() is None
    theirs.sendall(b"b" * 5)
    assert connection.doRead() is None
    assert protocol.received == [b"a" * READ_SIZE, b"a" * 10, b"b" * 5]
    assert {type(d) for d in protocol.received} == {bytes}
    assert connection.doRead() is None  # nothing there: EWOULDBLOCK
    theirs.close()
    assert connection.doRead() is main.CONNECTION_DONE
    ours.close()
