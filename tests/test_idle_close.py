"""Idle keep-alive client connections are closed without a log line each
(thousands of clients would flood the journal), and counted."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from txfanout.site import GatewaySite

from .configs import route_config
from .fakes import Network

POST = b"POST /bid HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


def timeout_lines(events: list[dict[str, Any]]) -> list[str]:
    return [text for text in map(formatEvent, events) if "timing out" in text.lower()]


def idle_closed(gw: Any) -> float:
    return gw.gateway.metrics.registry.get_sample_value("txfanout_idle_closed_total")


def test_idle_connections_are_closed_and_counted_without_a_log_line(net: Network):
    partner = net.partner()
    gw = net.gateway(route_config({"ok": {"url": partner.url("/ok")}}, idle_timeout_ms=200))
    with capturedLogs() as events:
        clients = [gw.client(POST) for _ in range(3)]
        net.run()
        assert [[a.code for a in c.answers()] for c in clients] == [[200]] * 3
        assert net.until(lambda: all(c.closed for c in clients)) == pytest.approx(0.2)
    assert timeout_lines(events) == []
    assert idle_closed(gw) == 3
    assert gw.site.open_connections == 0


def test_a_stalled_close_is_aborted_after_request_timeout(net: Network):
    # The close is asked for at the idle timeout; if the connection is still
    # there request_timeout_ms later (its unsent bytes not read), it is
    # aborted (Twisted's own abort came 15 s later).
    gw = net.gateway(route_config({"ok": {"url": "http://127.0.0.1:1/"}},
                                  idle_timeout_ms=200, request_timeout_ms=1000))
    clock = Clock()
    site = GatewaySite(gw.gateway, reactor=clock)  # its timeouts on a clock of its own
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    with capturedLogs() as events:
        channel.makeConnection(transport)
        clock.advance(0.2)
        assert transport.disconnecting and not transport.disconnected
        clock.advance(0.99)
        assert not transport.disconnected
        clock.advance(0.01)
        assert transport.disconnected  # aborted
        channel.connectionLost(Failure(ConnectionDone()))
    assert timeout_lines(events) == []
    assert idle_closed(gw) == 1
    assert clock.getDelayedCalls() == [] and site.open_connections == 0


def test_idle_connections_wait_on_one_reactor_call_and_each_closes_on_time(net: Network):
    # A timer each on the reactor's heap made every request's own timers
    # dearer beside thousands of kept-alive clients (deadlines.py).
    gw = net.gateway(route_config({"ok": {"url": "http://127.0.0.1:1/"}}, idle_timeout_ms=1000))
    clock = Clock()
    site = GatewaySite(gw.gateway, reactor=clock)  # its timeouts on a clock of its own
    transports = []
    for i in range(50):
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000 + i))
        transports.append(StringTransport())
        channel.makeConnection(transports[-1])
        clock.advance(0.01)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(1.245 - clock.seconds())  # the first 25 opened up to 0.24 s
    assert [t.disconnecting for t in transports] == [True] * 25 + [False] * 25
    clock.advance(0.25)
    assert all(t.disconnecting for t in transports) and idle_closed(gw) == 50

