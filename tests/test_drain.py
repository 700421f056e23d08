"""A drain with a grace period, for load balancers (on a fake reactor)."""

from __future__ import annotations

from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactorClock

from txfanout.config import parse
from txfanout.gateway import Gateway
from txfanout.lifecycle import Lifecycle
from txfanout.listeners import Listener
from txfanout.sdnotify import Notifier
from txfanout.site import GatewaySite

from .conftest import route_config
from .fakes import connect

POST = b"POST /bid HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


def lifecycle(clock: MemoryReactorClock, **server: object) -> Lifecycle:
    config = parse(route_config({"p": {"url": "http://127.0.0.1:9/"}}, **server))
    gateway = Gateway(clock, config)
    gateway.ready = True
    idle = serverFromString(clock, "tcp:0")  # never listened on here
    return Lifecycle(clock, gateway, Listener("public", idle, None),
                     Listener("admin", idle, None), None, Notifier(None), {})


def test_with_a_grace_it_leaves_rotation_first_and_stops_accepting_after():
    clock = MemoryReactorClock()
    life = lifecycle(clock, drain_grace_ms=1500)
    gateway = life.gateway
    life.drain()
    assert not gateway.ready  # /readyz: 503 at once
    assert gateway.admission.shed_reason() is None  # but it still serves
    channel, transport = connect(GatewaySite(gateway, reactor=clock))
    channel.dataReceived(POST)
    assert gateway.admission.admitted == 1 and not channel.persistent  # then it closes
    assert gateway.admission.admit() is None  # and a long one, in flight throughout
    clock.advance(1.49)
    assert gateway.admission.shed_reason() is None and not life.drained.called
    clock.advance(0.01)
    assert gateway.admission.shed_reason() == "draining"
    assert not life.drained.called  # the request in flight finishes first
    gateway.admission.release()
    assert life.drained.called and clock.hasStopped


def test_without_a_grace_it_stops_at_once():
    clock = MemoryReactorClock()
    life = lifecycle(clock)
    life.drain()
    assert not life.gateway.ready and life.gateway.admission.shed_reason() == "draining"
    assert life.drained.called and clock.hasStopped
