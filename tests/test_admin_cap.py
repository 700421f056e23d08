"""The admin face takes a bounded number of connections (real sockets)."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from txfanout.admin import ADMIN_MAX_CONNECTIONS, admin_site

from .conftest import route_config, within
from .hostile import until

END_OF_CHUNKED = b"\r\n0\r\n\r\n"  # the admin face's answers are chunked


class AdminClient(Protocol):
    """One keep-alive connection: ``ask(path)`` fires with the next whole
    (chunked) answer."""

    def __init__(self) -> None:
        self.buffer = b""
        self.waiting: list[Deferred[bytes]] = []

    def ask(self, path: bytes = b"/healthz") -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.waiting.append(d)
        self.transport.write(b"GET %s HTTP/1.1\r\nHost: admin\r\n\r\n" % path)
        return d

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while self.waiting and END_OF_CHUNKED in self.buffer:
            answer, self.buffer = self.buffer.split(END_OF_CHUNKED, 1)
            self.waiting.pop(0).callback(answer)


async def connect(port: Any) -> AdminClient:
    client = AdminClient()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
    return client


@pytest_twisted.ensureDeferred
async def test_admin_stops_accepting_at_its_connection_cap(partner, make_gateway):
    gw = make_gateway(route_config({"a": {"url": partner.url("/ok")}}))
    site = admin_site(gw.gateway)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    site.listening(port)
    clients: list[AdminClient] = []
    try:
        for _ in range(ADMIN_MAX_CONNECTIONS):
            clients.append(await within(connect(port)))
            assert (await within(clients[-1].ask())).startswith(b"HTTP/1.1 200 ")
        assert site.open_connections == ADMIN_MAX_CONNECTIONS
        extra = await within(connect(port))  # the kernel completes the handshake
        clients.append(extra)
        waiting = extra.ask()
        # A round trip on an accepted connection: the extra one is still not served.
        assert (await within(clients[0].ask())).startswith(b"HTTP/1.1 200 ")
        assert not waiting.called and site.open_connections == ADMIN_MAX_CONNECTIONS
        clients[1].transport.loseConnection()
        assert (await within(waiting)).startswith(b"HTTP/1.1 200 ")
        assert site.open_connections == ADMIN_MAX_CONNECTIONS
    finally:
        for client in clients:
            client.transport.loseConnection()
        await within(until(lambda: site.open_connections == 0))
        await port.stopListening()
