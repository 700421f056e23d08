"""The admin face takes a bounded number of connections, and connections that
send slowly or not at all cannot lock an operator out: in memory on a fake
clock (tests/fakes.py), so that every connection's state is known when the
next one comes."""

from __future__ import annotations

import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from txfanout.admin import ADMIN_MAX_CONNECTIONS, admin_site

from .configs import route_config
from .fakes import Client, Network

END_OF_CHUNKED = b"\r\n0\r\n\r\n"  # the admin face's answers are chunked
TOKEN = "admin-token-0123456789abcdef"


class AdminFace:
    """A gateway's admin site listening on the network."""

    def __init__(self, net: Network, **server: str) -> None:
        self.net = net
        gw = net.gateway(route_config({"a": {"url": net.partner().url("/ok")}}, **server))
        self.site = admin_site(gw.gateway, reactor=net.clock)
        port = net.listen(self.site)
        self.address = ("127.0.0.1", port.getHost().port)

    def connect(self, data: bytes = b"") -> Client:
        return self.net.client(self.address, data)

    def ask(self, client: Client, headers: bytes = b"") -> bytes:
        """GET /healthz on ``client``'s kept-alive connection: its answer
        (without the chunked body's last chunk)."""
        client.take()
        client.send(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n%s\r\n" % headers)
        self.net.run()
        answer = client.take()
        assert answer.endswith(END_OF_CHUNKED) and not client.closed, answer
        return answer[:-len(END_OF_CHUNKED)]


def test_at_its_cap_the_admin_face_drops_the_connection_waiting_longest(net: Network):
    admin = AdminFace(net)
    clients = []
    for _ in range(ADMIN_MAX_CONNECTIONS):
        clients.append(admin.connect())
        assert admin.ask(clients[-1]).startswith(b"HTTP/1.1 200 ")
    assert admin.site.open_connections == ADMIN_MAX_CONNECTIONS
    # The first client asks again: the second has now waited longest.
    assert admin.ask(clients[0]).startswith(b"HTTP/1.1 200 ")
    newcomer = admin.connect()
    assert admin.ask(newcomer).startswith(b"HTTP/1.1 200 ")
    assert clients[1].closed
    assert not any(c.closed for c in clients[:1] + clients[2:])
    assert admin.site.open_connections == ADMIN_MAX_CONNECTIONS
    assert admin.ask(clients[0]).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("token", [None, TOKEN])
def test_slow_connections_do_not_lock_an_operator_out(token, net: Network):
    # 64 connections that have sent one byte of a request head and hold on
    # (a drip of one byte every 2 s, each restarting the 60 s idle timer, has
    # the same effect): the operator who connects next is served at once.
    admin = AdminFace(net, **({"admin_token": token} if token else {}))
    slow = [admin.connect(b"G") for _ in range(ADMIN_MAX_CONNECTIONS)]
    net.run()
    assert admin.site.open_connections == ADMIN_MAX_CONNECTIONS
    authorization = b"Authorization: Bearer %s\r\n" % TOKEN.encode() if token else b""
    operator = admin.connect()
    answer = admin.ask(operator, authorization)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1].split(b"\r\n", 1)[1])["status"] == "ok"
    assert slow[0].closed and slow[0].received == b""  # the one that waited longest made room
    assert not any(c.closed for c in slow[1:])
    assert admin.site.open_connections == ADMIN_MAX_CONNECTIONS


def test_while_every_connection_is_being_answered_a_newcomer_is_closed(net: Network):
    gw = net.gateway(route_config({"a": {"url": net.partner().url("/ok")}}))
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
