"""Clients that do not wait, and connections that come faster than the
gateway serves: pacing after a 503 and the accept gate, on a fake reactor
and in-memory transports (exact and instant), then once over real sockets."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from txfanout.gateway import Gateway
from txfanout.site import PACE_S, REFUSAL_BURST

from .configs import route_config
from .fakes import FakePort, Network, answer, connect, full_gateway
from .loopback import keep_alive_client, within

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


def test_an_early_retry_is_refused_while_the_gateway_was_full_even_with_a_slot_free():
    clock, gateway, site = full_gateway()
    channel, transport = connect(site)
    channel.dataReceived(POST)
    assert b"in-flight limit" in answer(transport)
    gateway.admission.release()  # a slot is free now, but was not half a second ago
    clock.advance(0.5)
    channel.dataReceived(POST)  # half a second after its 503: early
    refused = answer(transport)
    assert refused.startswith(b"HTTP/1.1 503 ") and b"before Retry-After" in refused
    assert b"Retry-After: 1\r\n" in refused
    assert shed(gateway, "early_retry") == 1 and gateway.admission.admitted == 0
    assert transport.producerState == "paused"  # paced again


def test_an_early_retry_is_served_once_the_gateway_had_room_for_a_retry_after():
    clock, gateway, site = full_gateway()
    channel, transport = connect(site)
    channel.dataReceived(POST)
    assert answer(transport).startswith(b"HTTP/1.1 503 ")
    gateway.admission.release()
    clock.advance(0.5)
    channel.dataReceived(POST)  # early, while the gateway was full a moment ago
    assert b"before Retry-After" in answer(transport)
    clock.advance(0.6)  # it retries at once again, and is read when its pace is up
    channel.dataReceived(POST)  # early again, but a whole second without a full house
    assert gateway.admission.admitted == 1  # admitted: the overload is over
    assert shed(gateway, "early_retry") == 1


def test_a_polite_retry_is_judged_like_any_request():
    clock, gateway, site = full_gateway()
    channel, transport = connect(site)
    channel.dataReceived(POST)
    answer(transport)
    clock.advance(1.0)  # it waited for Retry-After
    channel.dataReceived(POST)
    refused = answer(transport)
    assert b"in-flight limit" in refused  # still full: the usual 503, not early_retry
    assert shed(gateway, "early_retry") == 0


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


def test_a_retry_sent_at_once_is_read_when_the_pace_is_up_and_refused_as_early(net: Network):
    # In memory: the retry waits unread (the channel does not read) and is
    # seen waiting when the pace is up (the peek at the kernel's buffer).
    partner = net.partner()
    gw = net.gateway(route_config({"ok": {"url": partner.url("/ok")}}, max_inflight=1))
    assert gw.gateway.admission.admit() is None  # the one slot is taken
    client = gw.client(POST)
    net.run()
    assert b"in-flight limit" in client.take()
    client.send(POST)  # at once, ignoring Retry-After
    gw.gateway.admission.release()  # a slot is free, but not for a client that did not wait
    assert net.until(lambda: client.received) == pytest.approx(PACE_S)
    assert b"before Retry-After" in client.received
    assert shed(gw.gateway, "early_retry") == 1 and gw.gateway.admission.admitted == 0


def test_bytes_waiting_when_a_late_pace_timer_runs_are_not_taken_for_early(net: Network):
    # The pace timer ran late (a busy reactor): the bytes waiting then may
    # have been sent after the Retry-After, so they are judged like any.
    partner = net.partner()
    gw = net.gateway(route_config({"ok": {"url": partner.url("/ok")}}, max_inflight=1))
    assert gw.gateway.admission.admit() is None
    client = gw.client(POST)
    net.run()
    assert b"in-flight limit" in client.take()
    client.send(POST)  # at once: it waits unread
    gw.gateway.admission.release()
    net.clock.callLater(PACE_S - 0.01, net.busy, 0.2)  # the pace timer runs 190 ms late
    net.advance(0.5)
    assert gw.gateway.admission.admit() is None  # full again half a second later,
    gw.gateway.admission.release()  # so the gateway was full within a Retry-After
    net.until(lambda: client.received)
    assert client.received.startswith(b"HTTP/1.1 200 ")
    assert shed(gw.gateway, "early_retry") == 0


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
    gw.gateway.admission.release()  # a slot is free, but not for a client that did not wait
    refused = await within(again)
    assert time.monotonic() - sent >= PACE_S - 0.05
    assert b"before Retry-After" in refused
