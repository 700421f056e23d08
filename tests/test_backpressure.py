"""Clients that do not read their answers cost one answer and a bounded time.

A pipelining client that never reads would otherwise have every request it
sent answered into the gateway's memory (Twisted parses the next pipelined
request whatever is left unsent), and would be dropped only after the idle
timeout plus Twisted's 15 s abort.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from .configs import route_config
from txfanout.site import GatewaySite
from .fakes import Network
from .loopback import within

ANSWER_BYTES = 100_000  # over the transport's 64 KiB: one answer pauses it
KEEP = b"POST /bid HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}"
CLOSE = b"POST /bid HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"


class BigAnswer(Resource):
    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        return b"x" * ANSWER_BYTES


class UnreadTransport(StringTransport):
    """A client that reads nothing until ``read_all``. Like a TCP transport,
    it pauses its producer while more than ``bufferSize`` bytes wait unsent,
    and resumes it once they are all sent."""

    bufferSize = 65536
    unsent = 0
    _paused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self.unsent += len(data)
        if self.producer is not None and self.unsent > self.bufferSize:
            self._paused = True
            self.producer.pauseProducing()

    def read_all(self) -> None:
        self.unsent = 0
        if self.producer is not None and self._paused:
            self._paused = False
            self.producer.resumeProducing()

    def answers(self) -> int:
        return self.value().count(b"HTTP/1.1 200 ")


def connect(gw: Any) -> tuple[Any, UnreadTransport, Clock]:
    """A channel of a site of ``gw`` serving :class:`BigAnswer`, its
    timeouts on a fake clock of its own."""
    clock = Clock()
    site = GatewaySite(gw.gateway, reactor=clock)
    site.resource = BigAnswer()
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = UnreadTransport()
    channel.makeConnection(transport)
    return channel, transport, clock


def make(net: Network) -> Any:
    return net.gateway(route_config({"ok": {"url": "http://127.0.0.1:1/"}},
                                    request_timeout_ms=1000, idle_timeout_ms=30000))


def test_the_next_pipelined_request_waits_until_the_answers_are_read(net):
    channel, transport, clock = connect(make(net))
    channel.dataReceived(KEEP * 3)
    assert transport.answers() == 1
    assert transport.producerState == "paused"  # nothing more is read
    transport.read_all()
    assert transport.answers() == 2 and transport.producerState == "paused"
    transport.read_all()
    transport.read_all()
    assert transport.answers() == 3
    assert transport.producerState == "producing"  # all read: reading again
    channel.dataReceived(KEEP)
    assert transport.answers() == 4
    channel.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []


def test_a_client_that_does_not_read_is_aborted_after_request_timeout(net):
    channel, transport, clock = connect(make(net))
    channel.dataReceived(KEEP * 3)
    clock.advance(0.99)
    assert not transport.disconnected
    clock.advance(0.01)
    assert transport.disconnected  # aborted, not closed gracefully
    assert transport.answers() == 1
    channel.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []


def test_a_client_that_reads_in_time_keeps_its_connection(net):
    channel, transport, clock = connect(make(net))
    channel.dataReceived(KEEP * 2)
    clock.advance(0.9)
    transport.read_all()  # the first answer read: the timer starts again
    clock.advance(0.9)
    transport.read_all()
    clock.advance(0.9)
    assert transport.answers() == 2 and not transport.disconnecting
    clock.advance(1.8 + 30.0 - 2.7 - 0.01)  # only the keep-alive timeout is left,
    assert not transport.disconnecting
    clock.advance(0.01)  # from the last answer
    assert transport.disconnecting
    channel.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []


def test_a_close_that_stalls_on_unsent_bytes_is_aborted_after_request_timeout(net):
    channel, transport, clock = connect(make(net))
    channel.dataReceived(CLOSE)
    assert transport.answers() == 1 and transport.disconnecting
    clock.advance(0.99)
    assert not transport.disconnected
    clock.advance(0.01)
    assert transport.disconnected
    channel.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []


@pytest.mark.slow  # a real socket's buffers, filled and left unread
@pytest_twisted.ensureDeferred
async def test_a_pipelining_client_that_never_reads_is_answered_little_and_dropped(
        partner, make_gateway):
    # A real socket: a client with a small receive buffer sends 40 requests
    # whose answers are 1 MB each, and never reads a byte.
    gw = make_gateway(route_config(
        {"big": {"url": partner.url("/big/1000000"), "max_response_bytes": 2000000,
                 "timeout_ms": 2000}},
        deadline_ms=3000, request_timeout_ms=300, idle_timeout_ms=10000))
    closed: Deferred[None] = Deferred()
    gw.site.connection_closed = lambda: closed.callback(None)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        client.connect(gw.address)
        client.sendall(KEEP * 40)
        await within(closed, 5.0)  # dropped: the old code kept it open
    finally:
        client.close()
    answered = gw.gateway.metrics.registry.get_sample_value(
        "txfanout_requests_total", {"route": "bid", "code": "200"})
    assert 1 <= answered < 20, answered  # the kernel's buffers hold a few
