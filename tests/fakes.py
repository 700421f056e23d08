"""A gateway on a fake reactor, and in-memory client connections to it:
for tests of time and bytes inside one process (exact and instant)."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from txfanout.config import parse
from txfanout.gateway import Gateway
from txfanout.site import GatewaySite

from .configs import route_config


def full_gateway(max_inflight: int = 1) -> tuple[MemoryReactorClock, Gateway, GatewaySite]:
    """A gateway on a fake reactor with every in-flight slot taken."""
    clock = MemoryReactorClock()
    gateway = Gateway(clock, parse(route_config({"p": {"url": "http://127.0.0.1:9/"}},
                                                max_inflight=max_inflight)))
    site = GatewaySite(gateway, reactor=clock)
    for _ in range(max_inflight):
        assert gateway.admission.admit() is None
    return clock, gateway, site


def connect(site: GatewaySite) -> tuple[Any, StringTransport]:
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def answer(transport: StringTransport) -> bytes:
    """What the gateway wrote since the last call, then forgets it."""
    data = transport.value()
    transport.clear()
    return data


class FakePort:
    """A listening port as the accept gate drives it."""

    def __init__(self) -> None:
        self.reading = True
        self.connected = True
        self.numberAccepts = 100

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True
