"""Clients that do not wait, and connections that come faster than the
gateway serves: pacing after a 503 and the accept gate, on a fake reactor
and in-memory transports (exact and instant), then once over real sockets."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from txfanout.gateway import Gateway
from txfanout.config import ServerConfig
from txfanout.site import REFUSAL_BURST

from .configs import route_config
from .fakes import FakePort, Network, answer, connect, full_gateway
from .loopback import keep_alive_client, within

PACE_S = ServerConfig().pace_ms / 1000.0

POST = b"POST /bid HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


def shed(gateway: Gateway, reason: str) -> float:
    return gateway.metrics.registry.get_sample_value("txfanout_shed_total",
                                                     {"reason": reason})


def test_a_503_on_a_kept_alive_connection_pauses_its_reading_until_nearly_retry_after():
    clock, gateway, site = full_gateway()
    channel, transport = connect(site)
    channel.dataReceived(POST)
    assert answer(transport).startswith(b"HTTP/1.1 503 ")
    assert transport.producerState == "paused"
    clock.advance(PACE_S - 0.01)
    assert transport.producerState == "paused"
    clock.advance(0.01)  # before the Retry-After of 1 s: a polite client is never slowed
    assert PACE_S < 1.0 and transport.producerState == "producing"


def test_behind_a_proxy_pacing_is_off():
    # One connection carries many clients' requests: pausing it would hold
    # back clients that were never refused.
    clock, gateway, site = full_gateway(pace_ms=0)
    channel, transport = connect(site)
    channel.dataReceived(POST)
    assert answer(transport).startswith(b"HTTP/1.1 503 ")
    assert transport.producerState == "producing"
    channel.dataReceived(POST)  # read at once
    assert answer(transport).startswith(b"HTTP/1.1 503 ")


def test_a_request_read_after_the_pace_is_judged_like_any_other():
    clock, gateway, site = full_gateway()
    channel, transport = connect(site)
    channel.dataReceived(POST)
    assert b"in-flight limit" in answer(transport)
    clock.advance(PACE_S)  # what it sent at once is read now
    channel.dataReceived(POST)
    assert b"in-flight limit" in answer(transport)  # still full: refused, paced again
    assert transport.producerState == "paused"
    clock.advance(PACE_S)
    gateway.admission.release()  # now a slot is free
    channel.dataReceived(POST)
    assert gateway.admission.admitted == 1 and not answer(transport)  # served


def test_with_every_slot_taken_new_connections_wait_once_the_refusal_budget_is_spent():
    clock, gateway, site = full_gateway()
    port = FakePort()
    site.listening(port)
    assert port.reading and port.numberAccepts == REFUSAL_BURST
    for _ in range(REFUSAL_BURST):
        connect(site)
    assert not port.reading  # the rest wait in the kernel's backlog
    for _ in range(4):  # four answers give back two refusals
        site.request_answered()
    gateway.admission.release()
    gateway.admission.admit()  # the slot is taken again at once
    assert port.reading and port.numberAccepts == 2


def test_a_free_slot_admits_as_many_connections_as_there_is_room_for():
    clock, gateway, site = full_gateway(max_inflight=4)
    gateway.lag.start()
    port = FakePort()
    site.listening(port)
    for _ in range(REFUSAL_BURST):
        connect(site)
    assert not port.reading
    gateway.admission.release()
    gateway.admission.release()
    assert port.reading and port.numberAccepts == 2
    silent, _ = connect(site)
    talking, _ = connect(site)  # accepted for the two free slots
    assert not port.reading
    talking.dataReceived(POST)  # heard from, and its request took a slot
    assert gateway.admission.admitted == 3 and not port.reading
    clock.advance(0.1)  # a lag period: connections not heard from stop counting
    assert port.reading and port.numberAccepts == 1


def test_a_retry_sent_at_once_is_read_when_the_pace_is_up(net: Network):
    # In memory: the retry waits unread (the channel does not read it) until
    # the pace is up, then it is served like any request.
    partner = net.partner()
    gw = net.gateway(route_config({"ok": {"url": partner.url("/ok")}}, max_inflight=1))
    assert gw.gateway.admission.admit() is None  # the one slot is taken
    client = gw.client(POST)
    net.run()
    assert b"in-flight limit" in client.take()
    client.send(POST)  # at once, ignoring Retry-After
    gw.gateway.admission.release()  # a slot is free, but the retry is not read yet
    assert net.until(lambda: client.received) == pytest.approx(PACE_S)
    assert client.received.startswith(b"HTTP/1.1 200 ")


@pytest.mark.slow  # waits a real PACE_S; the socket's peek is what it tests
@pytest_twisted.ensureDeferred
async def test_a_client_retrying_at_once_is_read_a_retry_after_later(partner, make_gateway):
    gw = make_gateway(route_config({"ok": {"url": partner.url("/ok")}}, max_inflight=1))
    assert gw.gateway.admission.admit() is None  # the one slot is taken
    impolite = await keep_alive_client(gw.address)
    first = await within(impolite.request(POST))
    assert b"in-flight limit" in first
    sent = time.monotonic()
    again = impolite.request(POST)  # at once, ignoring Retry-After
    gw.gateway.admission.release()  # a slot frees at once: it is still read a pace later
    served = await within(again)
    assert time.monotonic() - sent >= PACE_S - 0.05
    assert served.startswith(b"HTTP/1.1 200 ")
