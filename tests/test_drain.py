"""Draining (what SIGTERM and SIGINT do): /readyz turns 503, the public
listener closes, requests in flight finish within the deadline plus a
margin, then the reactor stops. In memory on a fake reactor (tests/fakes.py),
the signals handed to the lifecycle as its signal handlers would; the real
daemon's drain, signals and exit code are in test_daemon (slow)."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from twisted.logger import capturedLogs, formatEvent

from txfanout.admin import admin_site
from txfanout.config import parse
from txfanout.gateway import Gateway
from txfanout.lifecycle import DRAIN_MARGIN_S, Lifecycle
from txfanout.listeners import Listener
from txfanout.sdnotify import Notifier
from txfanout.site import GatewaySite

from .configs import route_config
from .fakes import Client, Network

POST = b"POST /bid HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
FAST = POST.replace(b"/bid", b"/fast")


class Serving:
    """A gateway with its public and admin listeners on the network, and
    its lifecycle (not started: that would take the process's signals)."""

    def __init__(self, net: Network, raw_config: dict[str, Any]) -> None:
        self.net = net
        self.gateway = Gateway(net.clock, parse(raw_config))
        site = GatewaySite(self.gateway, reactor=net.clock)
        self.public = Listener("public", net.endpoint(), site)
        self.admin = Listener("admin", net.endpoint(),
                              admin_site(self.gateway, reactor=net.clock))
        for listener in (self.public, self.admin):
            listener.startService()
        site.listening(self.public.port)
        self.life = Lifecycle(net.clock, self.gateway, self.public, self.admin, None,
                              Notifier(None), environ={})
        self.gateway.ready = True
        net.clock.pretend_running()

    def client(self, data: bytes = b"") -> Client:
        host = self.public.port.getHost()
        return self.net.client((host.host, host.port), data)

    def readyz(self) -> bytes:
        host = self.admin.port.getHost()
        client = self.net.client((host.host, host.port),
                                 b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        self.net.until(lambda: client.closed)
        return client.received


def test_requests_in_flight_finish_then_the_reactor_stops(net: Network):
    partner = net.partner()
    serving = Serving(net, {
        "server": {"deadline_ms": 1000},
        "partners": {"slow": {"url": partner.url("/delay/250")},
                     "fast": {"url": partner.url("/ok")}},
        "routes": {"bid": {"partners": ["slow"]}, "fast": {"partners": ["fast"]}}})
    idle = serving.client(FAST)  # a kept-alive connection, idle when the drain starts
    net.run()
    assert [a.code for a in idle.answers()] == [200]
    idle.take()
    held = serving.client(POST)  # a request held by a slow partner
    net.advance(0.1)
    assert partner.open_requests and not held.received

    with capturedLogs() as events:
        serving.life.handle_signal(signal.SIGTERM)
        net.run()
        assert not serving.gateway.ready and b" 503 " in serving.readyz().split(b"\r\n")[0]
        assert serving.client(POST).closed  # the public port is closed: refused
        # A new request on the kept-alive connection: refused, and closed.
        idle.send(FAST)
        net.run()
        [refused] = idle.answers()
        assert refused.code == 503 and refused.header("Connection") == "close"
        assert b"shutting down" in refused.body and idle.closed
        assert not net.clock.hasStopped  # still waiting for the held request

        net.until(lambda: net.clock.hasStopped)
    [answer] = held.answers()
    assert answer.code == 200 and answer.outcomes() == {"slow": "ok"}
    assert serving.life.drained.called
    lines = [formatEvent(e) for e in events]
    assert lines[0] == "received SIGTERM"
    assert "draining: no longer accepting connections" in lines
    assert lines[-1] == "drained in 150 ms"  # when the held request was answered


def test_a_drain_is_bounded_by_the_deadline_and_a_margin(net: Network):
    # A slot that is never given back (a request that never ends) does not
    # hold the exit past deadline_ms + DRAIN_MARGIN_S.
    serving = Serving(net, route_config({"p": {"url": net.refused_url()}}, deadline_ms=600))
    assert serving.gateway.admission.admit() is None
    with capturedLogs() as events:
        serving.life.handle_signal(signal.SIGINT)
        took = net.until(lambda: net.clock.hasStopped)
    assert took == pytest.approx(0.6 + DRAIN_MARGIN_S)
    assert serving.life.drained.called
    assert [formatEvent(e) for e in events][-1] == \
        "drain: 1 request still in flight after 1600 ms; stopping anyway"


def test_a_second_signal_stops_at_once_and_a_reload_waits_for_no_one(net: Network):
    partner = net.partner()
    serving = Serving(net, route_config({"hang": {"url": partner.url("/hang"),
                                                  "timeout_ms": 5000}}, deadline_ms=5000))
    serving.client(POST)
    net.run()
    assert serving.gateway.admission.admitted == 1
    with capturedLogs() as events:
        serving.life.handle_signal(signal.SIGTERM)
        net.run()
        assert not net.clock.hasStopped
        serving.life.handle_signal(signal.SIGHUP)  # no reload while draining
        assert serving.life.status_line() == "draining: 1 in flight, 0.0 req/s"
        serving.life.handle_signal(signal.SIGTERM)
    assert net.clock.hasStopped  # at once, the request still in flight
    lines = [formatEvent(e) for e in events]
    assert "reload ignored: draining" in lines
    assert lines[-1] == "second stop signal: stopping now, 1 request in flight"


def test_with_a_grace_it_leaves_rotation_first_and_serves_on_then_drains(net: Network):
    # For a load balancer: /readyz turns 503 at once, but for drain_grace_ms
    # the gateway still serves, each answer closing its connection.
    partner = net.partner()
    serving = Serving(net, route_config({"fast": {"url": partner.url("/ok")}},
                                        drain_grace_ms=1500))
    kept = serving.client(POST)  # a kept-alive connection
    net.run()
    assert [a.code for a in kept.answers()] == [200]
    kept.take()
    serving.life.handle_signal(signal.SIGTERM)
    net.run()
    assert not serving.gateway.ready and b" 503 " in serving.readyz().split(b"\r\n")[0]
    kept.send(POST)
    net.run()
    [served] = kept.answers()
    assert served.code == 200 and served.header("Connection") == "close" and kept.closed
    fresh = serving.client(POST)  # the public port still accepts
    net.run()
    assert [a.code for a in fresh.answers()] == [200]
    assert not net.clock.hasStopped
    net.advance(1.5)
    assert serving.client(POST).closed and net.clock.hasStopped  # then the usual drain
