"""Overload and hostile clients: refuse early and cheaply, never stall."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ClientFactory
from twisted.internet.task import Clock, LoopingCall

from txfanout.admission import SHED_MAX_INFLIGHT
from txfanout.site import GatewayRequest
from txfanout.wire import SHED_ANSWERS, SHED_HEADS
from txfanout.lag import ReactorLag

from .configs import route_config
from .loopback import RawClient, keep_alive_client, raw_client, within
from .fakes import answer, connect, full_gateway

POST = b"POST /bid HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
POST_CLOSE = b"POST /bid HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"


def shed(gw, reason: str) -> float:
    return gw.gateway.metrics.registry.get_sample_value("txfanout_shed_total",
                                                        {"reason": reason})


class TimedClient(RawClient):
    """A RawClient that notes when its request left: the clock starts then,
    not when this process got round to setting the client up (100 of them
    take a cold PyPy over 0.1 s)."""

    def connectionMade(self) -> None:
        self.sent = time.monotonic()
        super().connectionMade()


def timed_post(address: tuple[str, int]) -> Deferred[tuple[int, float]]:
    """POST /bid on a connection of its own; fires with (status, seconds)."""
    client = TimedClient(POST_CLOSE)
    reactor.connectTCP(*address, ClientFactory.forProtocol(lambda: client))
    return client.closed.addCallback(lambda raw: (int(raw[9:12]), time.monotonic() - client.sent))


@pytest_twisted.ensureDeferred
async def test_many_more_clients_than_slots_all_get_an_answer(partner, make_gateway):
    gw = make_gateway(route_config({"hang": {"url": partner.url("/hang")}},
                                   max_inflight=5, deadline_ms=500))
    clients = [timed_post(gw.address) for _ in range(100)]
    results = await within(DeferredList(clients, consumeErrors=True), 10)
    assert all(ok for ok, _ in results), [r for ok, r in results if not ok][:3]
    answers = [r for _, r in results]
    served = [t for code, t in answers if code == 200]
    refused = [t for code, t in answers if code == 503]
    assert len(served) + len(refused) == 100
    assert len(served) >= 5 and len(refused) >= 50
    assert max(served) < 0.5 + 0.15  # within the deadline, plus a margin
    assert max(refused) < 0.25  # not held: refused as they came
    assert gw.gateway.admission.admitted == 0 and not gw.gateway.inflight
    assert shed(gw, "max_inflight") == len(refused)


def requests_counted(gw, code: int) -> float:
    return gw.gateway.metrics.registry.get_sample_value(
        "txfanout_requests_total", {"route": "bid", "code": str(code)}) or 0.0


def test_a_keep_alive_client_refused_at_capacity_stays_connected():
    clock, gateway, site = full_gateway()
    built = []

    class CountedRequest(GatewayRequest):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(self)
            super().__init__(*args, **kwargs)

    site.requestFactory = CountedRequest
    channel, transport = connect(site)
    chunked = (b"POST /bid HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"2\r\n{}\r\n0\r\n\r\n")
    for raw in (POST, POST, chunked):  # refused unparsed twice, then the long way
        channel.dataReceived(raw)
        refused = answer(transport)
        assert refused.startswith(b"HTTP/1.1 503 "), refused
        assert b"\r\nRetry-After: 1\r\n" in refused and b"Connection: close" not in refused
        clock.advance(1.0)  # as a client that honours Retry-After
    gateway.admission.release()
    channel.dataReceived(POST)
    assert gateway.admission.admitted == 1 and not transport.disconnecting
    registry = gateway.metrics.registry
    assert registry.get_sample_value("txfanout_shed_total", {"reason": "max_inflight"}) == 3
    assert registry.get_sample_value("txfanout_requests_total",
                                     {"route": "bid", "code": "503"}) == 3
    assert len(built) == 2  # the chunked one and the one served


class Collector(RawClient):
    """A kept-alive connection: ``until(n)`` fires once ``n`` bytes came."""

    def __init__(self) -> None:
        super().__init__(b"")
        self._waiting: tuple[int, Deferred[bytes]] | None = None

    def until(self, size: int) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self._waiting = (size, d)
        self.dataReceived(b"")
        return within(d)

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self._waiting is not None and len(self.received) >= self._waiting[0]:
            d, self._waiting = self._waiting[1], None
            d.callback(self.received)


def test_head_refused_at_capacity_gets_no_body_on_a_kept_alive_connection():
    # A body after a HEAD's head would be read as the start of the next
    # answer. Both shed paths: a whole request refused unparsed, and a
    # pipelined one parsed into a Request first.
    clock, gateway, site = full_gateway()
    head_only = SHED_HEADS[SHED_MAX_INFLIGHT, True]
    whole = SHED_ANSWERS[SHED_MAX_INFLIGHT, True]
    head = b"HEAD /bid HTTP/1.1\r\nHost: x\r\n\r\n"
    channel, transport = connect(site)
    for sent, expected in ((head, head_only), (POST, whole),  # refused unparsed
                           (head + POST, head_only + whole)):  # pipelined: parsed first
        channel.dataReceived(sent)
        assert answer(transport) == expected
        clock.advance(1.0)  # as a client that honours Retry-After
    gateway.admission.release()
    channel.dataReceived(POST)  # the connection is still in step
    assert gateway.admission.admitted == 1 and not transport.disconnecting
    assert gateway.metrics.registry.get_sample_value(
        "txfanout_shed_total", {"reason": "max_inflight"}) == 4


@pytest_twisted.ensureDeferred
async def test_reactor_lag_sheds_until_it_recovers(partner, make_gateway):
    gw = make_gateway(route_config({"ok": {"url": partner.url("/ok")}}, max_lag_ms=100))
    clock = Clock()
    lag = gw.gateway.admission.lag = ReactorLag(clock, interval=0.05)
    lag.start()
    clock.advance(0.5)  # the timer due at 0.05 ran 450 ms late
    refused = await gw.post()
    assert refused.code == 503 and refused.header("Retry-After") == "1"
    assert "event loop behind" in refused.json["error"]
    assert shed(gw, "reactor_lag") == 1
    for _ in range(4):  # on time again, but not yet for a whole window
        clock.advance(0.05)
        assert (await gw.post()).code == 503
    clock.advance(0.05)  # five on-time turns in a row: recovered
    assert (await gw.post()).code == 200


@pytest_twisted.ensureDeferred
async def test_connection_cap_stops_accepting_until_one_closes(partner, make_gateway):
    gw = make_gateway(route_config({"ok": {"url": partner.url("/ok")}}, max_connections=2))
    first = await keep_alive_client(gw.address)
    second = await keep_alive_client(gw.address)
    assert (await within(first.request(POST))).startswith(b"HTTP/1.1 200")
    assert (await within(second.request(POST))).startswith(b"HTTP/1.1 200")
    third = await keep_alive_client(gw.address)  # the kernel completes the handshake
    waiting = third.request(POST)
    # A round trip on an accepted connection: the third is still not served.
    assert (await within(first.request(POST))).startswith(b"HTTP/1.1 200")
    assert not waiting.called and gw.site.open_connections == 2
    first.transport.loseConnection()
    assert (await within(waiting)).startswith(b"HTTP/1.1 200")
    assert gw.site.open_connections == 2


async def drip(address: tuple[str, int], data: bytes, every: float = 0.02) -> tuple[bytes, float, int]:
    """Send ``data`` a byte every ``every`` seconds until the server closes;
    return what came back, how long it took, and how many bytes were unsent."""
    client = raw_client(address, b"")
    pending = list(data)

    def one() -> None:
        if pending and client.transport is not None and client.transport.connected:
            client.transport.write(bytes([pending.pop(0)]))

    loop = LoopingCall(one)
    loop.clock = reactor
    started = time.monotonic()
    loop.start(every)
    try:
        received = await within(client.closed, 5)
    finally:
        loop.stop()
    return received, time.monotonic() - started, len(pending)


@pytest_twisted.ensureDeferred
async def test_slow_headers_and_slow_bodies_are_dropped(partner, make_gateway):
    gw = make_gateway(route_config({"ok": {"url": partner.url("/ok")}},
                                   request_timeout_ms=300))
    slow_headers = b"POST /bid HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 100 + b"\r\n\r\n"
    slow_body = b"POST /bid HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n" + b" " * 200
    for request in (slow_headers, slow_body):
        received, took, unsent = await drip(gw.address, request)
        assert received.startswith(b"HTTP/1.1 408 ")
        assert 0.25 < took < 1.5
        assert unsent > 0, "the whole request went out before the timeout"
    assert gw.site.open_connections == 0


@pytest_twisted.ensureDeferred
async def test_idle_keep_alive_connections_are_closed(partner, make_gateway):
    gw = make_gateway(route_config({"ok": {"url": partner.url("/ok")}}, idle_timeout_ms=300))
    client = await keep_alive_client(gw.address)
    assert (await within(client.request(POST))).startswith(b"HTTP/1.1 200")
    answered = time.monotonic()
    await within(client.closed, 5)
    assert 0.25 < time.monotonic() - answered < 2.0
    assert gw.site.open_connections == 0


@pytest_twisted.ensureDeferred
async def test_the_deadline_counts_from_the_first_byte(partner, make_gateway):
    gw = make_gateway(route_config({"echo": {"url": partner.url("/echo"), "timeout_ms": 300}},
                                   deadline_ms=300))
    # Headers at once, then a 10-byte body a byte every 20 ms: ~200 ms spent
    # before the request is complete, which the partners' budget must show.
    head = b"POST /bid HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 10\r\n\r\n"
    client = raw_client(gw.address, head)
    pending = list(b"{" + b" " * 8 + b"}")

    def one() -> None:
        if pending and client.transport is not None and client.transport.connected:
            client.transport.write(bytes([pending.pop(0)]))

    loop = LoopingCall(one)
    loop.clock = reactor
    loop.start(0.02)
    try:
        received = await within(client.closed, 5)
    finally:
        loop.stop()
    body = received.split(b"\r\n\r\n", 1)[1]
    [result] = json.loads(body)["results"]
    budget = int(json.loads(result["body"])["headers"]["X-Fanout-Deadline-Ms"][0])
    assert budget <= 300 - 150, budget
