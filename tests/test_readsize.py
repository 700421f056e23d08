"""The gateway's connections, to clients and to partners, plain and TLS,
read 16 KiB at a time (readsize.py): on PyPy a read allocates its whole size."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor, tcp

from txfanout.readsize import READ_SIZE
from txfanout.site import GatewayChannel

from .configs import route_config
from .loopback import keep_alive_client, within

KEEP = b"POST /bid HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}"


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
