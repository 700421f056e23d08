"""The admin face takes a bounded number of connections, and connections that
send slowly or not at all cannot lock an operator out (real sockets)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport

from txfanout.admin import ADMIN_MAX_CONNECTIONS, admin_site

from .configs import route_config
from .loopback import raw_client, within
from .hostile import until

END_OF_CHUNKED = b"\r\n0\r\n\r\n"  # the admin face's answers are chunked
TOKEN = "admin-token-0123456789abcdef"


class AdminClient(Protocol):
    """One keep-alive connection: ``ask(path)`` fires with the next whole
    (chunked) answer; ``closed`` fires when the server closes it."""

    def __init__(self, headers: bytes = b"") -> None:
        self.headers = headers
        self.buffer = b""
        self.waiting: list[Deferred[bytes]] = []
        self.closed: Deferred[None] = Deferred()

    def ask(self, path: bytes = b"/healthz") -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.waiting.append(d)
        self.transport.write(b"GET %s HTTP/1.1\r\nHost: admin\r\n%s\r\n" % (path, self.headers))
        return d

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while self.waiting and END_OF_CHUNKED in self.buffer:
            answer, self.buffer = self.buffer.split(END_OF_CHUNKED, 1)
            self.waiting.pop(0).callback(answer)

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(None)


async def connect(port: Any, headers: bytes = b"") -> AdminClient:
    client = AdminClient(headers)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
    return client


@pytest_twisted.ensureDeferred
async def test_at_its_cap_the_admin_face_drops_the_connection_waiting_longest(
        partner, make_gateway):
    gw = make_gateway(route_config({"a": {"url": partner.url("/ok")}}))
    site = admin_site(gw.gateway)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    clients: list[AdminClient] = []
    try:
        for _ in range(ADMIN_MAX_CONNECTIONS):
            clients.append(await within(connect(port)))
            assert (await within(clients[-1].ask())).startswith(b"HTTP/1.1 200 ")
        assert site.open_connections == ADMIN_MAX_CONNECTIONS
        # The first client asks again: the second has now waited longest.
        assert (await within(clients[0].ask())).startswith(b"HTTP/1.1 200 ")
        newcomer = await within(connect(port))
        clients.append(newcomer)
        assert (await within(newcomer.ask())).startswith(b"HTTP/1.1 200 ")
        await within(clients[1].closed)
        assert not clients[0].closed.called and not clients[2].closed.called
        assert site.open_connections == ADMIN_MAX_CONNECTIONS
        assert (await within(clients[0].ask())).startswith(b"HTTP/1.1 200 ")
    finally:
        for client in clients:
            client.transport.loseConnection()
        await within(until(lambda: site.open_connections == 0))
        await port.stopListening()


@pytest.mark.parametrize("token", [None, TOKEN])
@pytest_twisted.ensureDeferred
async def test_slow_connections_do_not_lock_an_operator_out(token, partner, make_gateway):
    # 64 connections that have sent one byte of a request head and hold on
    # (a drip of one byte every 2 s, each restarting the 60 s idle timer, has
    # the same effect): the operator who connects next is served at once.
    server = {"admin_token": token} if token else {}
    gw = make_gateway(route_config({"a": {"url": partner.url("/ok")}}, **server))
    site = admin_site(gw.gateway)
    # A backlog for all of them at once (at Twisted's 50, the rest would wait
    # a second for their SYN to be sent again).
    port = reactor.listenTCP(0, site, backlog=128, interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)
    slow = [raw_client(address, b"G") for _ in range(ADMIN_MAX_CONNECTIONS)]
    operator: AdminClient | None = None
    try:
        await within(until(lambda: site.open_connections == ADMIN_MAX_CONNECTIONS))
        authorization = b"Authorization: Bearer %s\r\n" % TOKEN.encode() if token else b""
        operator = await within(connect(port, authorization))
        answer = await within(operator.ask())
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1].split(b"\r\n", 1)[1])["status"] == "ok"
        assert await within(slow[0].closed) == b""  # the one that waited longest made room
        assert site.open_connections == ADMIN_MAX_CONNECTIONS
    finally:
        for client in slow:
            client.transport.loseConnection()
        if operator is not None:
            operator.transport.loseConnection()
        await within(until(lambda: site.open_connections == 0))
        await port.stopListening()


def test_while_every_connection_is_being_answered_a_newcomer_is_closed(partner, make_gateway):
    gw = make_gateway(route_config({"a": {"url": partner.url("/ok")}}))
    site = admin_site(gw.gateway)
    site.max_connections = 1
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    first = site.buildProtocol(address)
    first.makeConnection(StringTransport())
    site.answering(first)
    assert site.buildProtocol(address) is None
    site.waiting(first)  # answered, kept alive: it may make room now
    assert site.buildProtocol(address) is not None
    assert first.transport.disconnecting and site.open_connections == 0
