"""Overload and hostile clients: refuse early and cheaply, never stall.

The timed cases run in memory on a fake clock (tests/fakes.py), where the
times are exact; the connection cap is tested over real sockets, the
kernel's backlog being the thing under test."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from txfanout.admission import SHED_MAX_INFLIGHT
from txfanout.site import GatewayRequest
from txfanout.wire import SHED_ANSWERS, SHED_HEADS
from txfanout.lag import ReactorLag

from .configs import route_config
from .fakes import Network, answer, connect, full_gateway
from .loopback import keep_alive_client, within

POST = b"POST /bid HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
POST_CLOSE = b"POST /bid HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"


def shed(gw, reason: str) -> float:
    return gw.gateway.metrics.registry.get_sample_value("txfanout_shed_total",
                                                        {"reason": reason})


def test_many_more_clients_than_slots_all_get_an_answer(net: Network):
    partner = net.partner()
    gw = net.gateway(route_config({"hang": {"url": partner.url("/hang")}},
                                  max_inflight=5, deadline_ms=500))
    started = net.clock.seconds()
    clients = [gw.send() for _ in range(100)]
    net.until(lambda: all(c.closed for c in clients))
    answers = [(c.answers()[0].code, c.closed_at - started) for c in clients]
    served = [t for code, t in answers if code == 200]
    refused = [t for code, t in answers if code == 503]
    # Five accepted for the five slots; the rest accepted against the
    # refusal budget once those took them, and refused at once.
    assert len(served) == 5 and len(refused) == 95
    # The hanging calls end at the partner's timeout_ms (300 by default),
    # within the 500 ms deadline.
    assert served == [pytest.approx(0.3)] * 5
    assert refused == [0.0] * 95  # not held: refused as they came
    assert gw.gateway.admission.admitted == 0 and not gw.gateway.inflight
    assert gw.value("txfanout_shed_total", reason="max_inflight") == 95


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


SLOW_HEADERS = b"POST /bid HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 100 + b"\r\n\r\n"
SLOW_BODY = b"POST /bid HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n" + b" " * 200


@pytest.mark.parametrize("request_bytes", [SLOW_HEADERS, SLOW_BODY], ids=["headers", "body"])
def test_slow_headers_and_slow_bodies_are_dropped(net: Network, request_bytes: bytes):
    partner = net.partner()
    gw = net.gateway(route_config({"ok": {"url": partner.url("/ok")}}, request_timeout_ms=300))
    client = gw.client()
    started = net.clock.seconds()
    unsent = net.drip(client, request_bytes, every=0.02)
    assert client.received.startswith(b"HTTP/1.1 408 ")
    assert client.closed_at - started == pytest.approx(0.3)  # from the first byte
    assert unsent > 0, "the whole request went out before the timeout"
    assert gw.site.open_connections == 0


def test_idle_keep_alive_connections_are_closed(net: Network):
    partner = net.partner()
    gw = net.gateway(route_config({"ok": {"url": partner.url("/ok")}}, idle_timeout_ms=300))
    client = gw.client(POST)
    net.run()
    [answered] = client.answers()
    assert answered.code == 200 and not client.closed
    assert net.until(lambda: client.closed) == pytest.approx(0.3)
    assert gw.site.open_connections == 0


def test_the_deadline_counts_from_the_first_byte(net: Network):
    partner = net.partner()
    gw = net.gateway(route_config({"echo": {"url": partner.url("/echo"), "timeout_ms": 300}},
                                  deadline_ms=300))
    # Headers at once, then a 10-byte body a byte every 20 ms: 180 ms spent
    # before the request is complete, which the partner's budget must show.
    head = b"POST /bid HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 10\r\n\r\n"
    client = gw.client(head)
    net.drip(client, b"{" + b" " * 8 + b"}", every=0.02)
    [result] = client.answers()[0].json["results"]
    budget = int(json.loads(result["body"])["headers"]["X-Fanout-Deadline-Ms"][0])
    left = 300 - 180 - gw.config.server.reserve_ms
    assert left - 1 <= budget <= left  # whole ms, rounded down
