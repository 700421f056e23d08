"""Clients that do not wait, and connections that come faster than the
gateway serves: pacing after a 503 and the accept gate, on a fake reactor
and in-memory transports (exact and instant), then once over real sockets."""

from __future__ import annotations

import inspect
import random
import time

import pytest
import pytest_twisted
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from txfanout.gateway import Gateway
from txfanout.config import ServerConfig
from txfanout.site import REFUSAL_BURST, GatewayChannel, GatewaySite

from .configs import route_config
from .fakes import (READ_SIZE, Client, FakeGateway, FakePort, Network, answer, connect,
                    full_gateway)
from .loopback import keep_alive_client, within

PACE_S = ServerConfig().pace_ms / 1000.0
FIRST_HOLD_S = GatewayChannel.HOLD_FIRST_PACES * PACE_S

POST = b"POST /bid HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


def shed(gateway: Gateway, reason: str) -> float:
    return gateway.metrics.registry.get_sample_value("txfanout_shed_total",
                                                     {"reason": reason})


def test_a_first_503_goes_out_at_once_and_reading_goes_on():
    clock, gateway, site = full_gateway()
    channel, transport = connect(site)
    channel.dataReceived(POST)
    assert answer(transport).startswith(b"HTTP/1.1 503 ")
    assert transport.producerState == "producing"


def test_a_client_that_waits_its_retry_after_is_never_slowed():
    clock, gateway, site = full_gateway()
    channel, transport = connect(site)
    channel.dataReceived(POST)
    assert b"in-flight limit" in answer(transport)
    clock.advance(PACE_S)  # (Retry-After is 1 s: a polite client waits longer)
    channel.dataReceived(POST)
    assert b"in-flight limit" in answer(transport)  # at once
    assert PACE_S < 1.0 and transport.producerState == "producing"


def test_a_refusal_of_a_client_that_did_not_wait_is_held_back_longer_each_time():
    clock, gateway, site = full_gateway()
    channel, transport = connect(site)
    channel.dataReceived(POST)
    assert b"in-flight limit" in answer(transport)
    held = []
    for paces in (4, 8, 16, 32, 32):  # from HOLD_FIRST_PACES up to HOLD_MAX_PACES
        channel.dataReceived(POST)  # at once, ignoring Retry-After
        assert not answer(transport) and channel in site.held
        clock.advance(paces * PACE_S - 0.001)
        assert not answer(transport)
        clock.advance(0.002)
        held.append(answer(transport))
        assert transport.producerState == "producing"
    assert all(b"in-flight limit" in a for a in held)
    assert shed(gateway, "max_inflight") == 6
    clock.advance(1.0)  # it waited its Retry-After this time: refused at once
    channel.dataReceived(POST)
    assert b"in-flight limit" in answer(transport)


def test_clients_refused_together_are_held_apart():
    # Held alike, they would all come back in the same instant, every time.
    clock, gateway, site = full_gateway()
    assert inspect.signature(GatewaySite).parameters["draw"].default is random.random
    draws = iter([0.0, 0.5, 0.999])
    site.draw = lambda: next(draws)
    pairs = [connect(site) for _ in range(3)]
    for channel, transport in pairs:
        channel.dataReceived(POST)
        assert b"in-flight limit" in answer(transport)
    held_at = clock.seconds()
    timers = len(clock.getDelayedCalls())
    for channel, transport in pairs:
        channel.dataReceived(POST)  # at once, ignoring Retry-After: held
    assert len(clock.getDelayedCalls()) == timers + 1  # one for every hold (deadlines.py)
    # shortened by up to a quarter (HOLD_JITTER), as drawn
    ends = [held_at + FIRST_HOLD_S * share for share in (1.0, 0.875, 0.75025)]
    for end, (_, transport) in sorted(zip(ends, pairs), key=lambda e: e[0]):
        clock.advance(end - 0.001 - clock.seconds())  # to just before its hold ends
        assert not answer(transport)
        clock.advance(0.002)
        assert b"in-flight limit" in answer(transport)


def test_a_client_that_did_not_wait_is_served_at_once_when_there_is_room():
    clock, gateway, site = full_gateway()
    channel, transport = connect(site)
    channel.dataReceived(POST)
    assert b"in-flight limit" in answer(transport)
    gateway.admission.release()  # a slot is free
    channel.dataReceived(POST)  # at once, ignoring Retry-After
    assert gateway.admission.admitted == 1 and not answer(transport)  # being served
    assert transport.producerState == "producing"


def test_holds_end_early_one_per_slot_left_unused_for_a_whole_lag_period():
    clock, gateway, site = full_gateway(max_inflight=2)
    gateway.lag.start()
    clients = [connect(site) for _ in range(3)]
    for channel, transport in clients:
        channel.dataReceived(POST)
        assert b"in-flight limit" in answer(transport)
        channel.dataReceived(POST)  # at once, ignoring Retry-After: held
    clock.pump([0.1] * 10)  # every slot taken all along: the holds stand
    assert not any(answer(t) for _, t in clients) and len(site.held) == 3
    gateway.admission.release()
    clock.advance(0.1)  # the slot was taken for part of this period
    assert not any(answer(t) for _, t in clients)
    clock.advance(0.1)  # and free through the whole of this one: the longest hold ends
    (first, first_transport), *others = clients
    assert b"in-flight limit" in answer(first_transport)
    assert first_transport.producerState == "producing"
    assert not any(answer(t) for _, t in others) and len(site.held) == 2
    first.dataReceived(POST)  # back at once: the slot is its own
    assert gateway.admission.admitted == 2 and not answer(first_transport)


def test_a_hold_is_cut_short_by_a_short_idle_timeout():
    clock, gateway, site = full_gateway(idle_timeout_ms=400)
    channel, transport = connect(site)
    channel.dataReceived(POST)
    answer(transport)
    channel.dataReceived(POST)
    clock.advance(0.2)  # half the idle timeout, not the pace
    assert b"in-flight limit" in answer(transport) and not transport.disconnecting


def test_a_hold_ends_a_pace_before_the_idle_timeout():
    clock, gateway, site = full_gateway(idle_timeout_ms=20000)
    channel, transport = connect(site)
    channel.dataReceived(POST)
    answer(transport)
    for paces in (4, 8, 16):
        channel.dataReceived(POST)
        clock.advance(paces * PACE_S)
        assert b"in-flight limit" in answer(transport)
    channel.dataReceived(POST)  # 32 paces would outlast the idle timeout
    clock.advance(20.0 - PACE_S - 0.001)
    assert not answer(transport)
    clock.advance(0.002)
    assert b"in-flight limit" in answer(transport) and not transport.disconnecting


def held_after_a_503_sent_at_once() -> tuple[MemoryReactorClock, Gateway, GatewaySite,
                                              GatewayChannel, StringTransport]:
    """A full gateway, and a connection refused, then back at once with a
    request in two reads: parsed the long way (wire.py refuses only a whole
    one unparsed), its 503 went out at once, and the next request waits
    for the hold instead."""
    clock, gateway, site = full_gateway()
    channel, transport = connect(site)
    channel.dataReceived(POST)
    answer(transport)
    channel.dataReceived(POST[:10])
    channel.dataReceived(POST[10:])
    assert b"in-flight limit" in answer(transport) and channel in site.held
    return clock, gateway, site, channel, transport


def test_a_request_parsed_the_long_way_is_answered_at_once_and_the_next_served_later():
    clock, gateway, site, channel, transport = held_after_a_503_sent_at_once()
    assert transport.producerState == "producing"  # to see the client leave
    channel.dataReceived(POST)  # its next request, at once
    assert transport.producerState == "paused"  # nothing more is read
    clock.advance(FIRST_HOLD_S - 0.001)
    assert not answer(transport) and transport.producerState == "paused"
    clock.advance(0.002)
    assert b"in-flight limit" in answer(transport)  # it waited its hold: at once
    assert transport.producerState == "producing" and not site.held


def test_a_client_that_waits_after_a_503_sent_at_once_is_not_held():
    # Parsed the long way, a refusal goes out at once and the hold is for
    # what comes next: a client that waits its Retry-After is not slowed.
    clock, gateway, site, channel, transport = held_after_a_503_sent_at_once()
    clock.advance(1.0)  # it waited its Retry-After
    gateway.admission.release()
    channel.dataReceived(POST)
    assert gateway.admission.admitted == 1 and not site.held


def test_pipelined_requests_behind_a_held_refusal_wait_for_its_end():
    # Twisted's parser would go on to each of them: a 503 at once and a
    # hold timer apiece (1,261 of each for one 64 KiB read).
    clock, gateway, site = full_gateway()
    channel, transport = connect(site)
    channel.dataReceived(POST)
    answer(transport)
    channel.dataReceived(POST * 20)  # at once, with 19 more behind it
    assert answer(transport).count(b"HTTP/1.1 503 ") == 1
    assert transport.producerState == "paused" and len(site.held) == 1
    timers = len(clock.getDelayedCalls())
    clock.advance(FIRST_HOLD_S)
    # the first that waited is refused at once, and so is the next, held again
    assert answer(transport).count(b"HTTP/1.1 503 ") == 2
    assert len(site.held) == 1 and len(clock.getDelayedCalls()) == timers


def test_a_connection_lost_while_its_refusal_is_held_gets_nothing_more():
    clock, gateway, site = full_gateway()
    channel, transport = connect(site)
    channel.dataReceived(POST)
    answer(transport)
    channel.dataReceived(POST)
    channel.connectionLost(Failure(ConnectionDone()))
    clock.advance(FIRST_HOLD_S)
    assert not answer(transport)


def test_a_drain_sends_a_held_refusal_at_once_and_closes_on_the_next():
    clock, gateway, site = full_gateway()
    channel, transport = connect(site)
    channel.dataReceived(POST)
    answer(transport)
    channel.dataReceived(POST)  # at once: its 503 is held
    assert not answer(transport)
    gateway.admission.drain()  # SIGTERM: no hold outlasts the daemon
    assert b"in-flight limit" in answer(transport)
    assert transport.producerState == "producing" and not site.held
    channel.dataReceived(POST)  # back at once: refused, and the connection closed
    assert b"Connection: close" in answer(transport) and transport.disconnecting
    clock.advance(8 * PACE_S)
    assert not answer(transport)  # the hold's timer went with it


def test_a_drain_serves_at_once_what_a_held_connection_sent():
    clock, gateway, site, channel, transport = held_after_a_503_sent_at_once()
    channel.dataReceived(POST)
    assert not answer(transport) and transport.producerState == "paused"
    gateway.admission.drain()
    assert b"Connection: close" in answer(transport) and transport.disconnecting
    assert not site.held


def test_behind_a_proxy_pacing_is_off():
    # One connection carries many clients' requests: holding one back would
    # hold back clients that were never refused.
    clock, gateway, site = full_gateway(pace_ms=0)
    channel, transport = connect(site)
    channel.dataReceived(POST)
    assert answer(transport).startswith(b"HTTP/1.1 503 ")
    channel.dataReceived(POST)  # answered at once
    assert answer(transport).startswith(b"HTTP/1.1 503 ")
    assert transport.producerState == "producing"


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


def refused_once(net: Network) -> tuple[FakeGateway, Client]:
    """A gateway on ``net`` with its one slot taken, and a kept-alive
    client it refused once."""
    partner = net.partner()
    gw = net.gateway(route_config({"ok": {"url": partner.url("/ok")}}, max_inflight=1))
    assert gw.gateway.admission.admit() is None  # the one slot is taken
    client = gw.client(POST)
    net.run()
    assert b"in-flight limit" in client.take()
    return gw, client


def test_a_retry_sent_at_once_gets_its_503_a_first_hold_later(net: Network):
    gw, client = refused_once(net)
    sent = net.clock.seconds()
    client.send(POST)  # at once, ignoring Retry-After
    net.until(lambda: client.received)
    assert net.clock.seconds() - sent == pytest.approx(FIRST_HOLD_S)
    assert b"in-flight limit" in client.take()
    gw.gateway.admission.release()
    client.send(POST)  # at once again, but now there is room: served at once
    net.until(lambda: client.received)
    assert client.received.startswith(b"HTTP/1.1 200 ")


def test_a_client_that_leaves_during_its_hold_is_let_go_at_once(net: Network):
    # Else its connection stays open until the hold's end, counted against
    # server.max_connections: up to HOLD_MAX_PACES paces.
    gw, client = refused_once(net)
    client.send(POST)  # at once, ignoring Retry-After: held
    net.run()
    assert gw.site.held and gw.site.open_connections == 1
    held_at = net.clock.seconds()
    client.close()
    net.run()
    assert not gw.site.held and gw.site.open_connections == 0
    assert net.clock.seconds() == held_at and not client.received


def test_open_and_held_client_connections_are_gauged():
    clock, gateway, site = full_gateway()

    def gauge(name: str) -> float | None:
        return gateway.metrics.registry.get_sample_value(name)

    held = "txfanout_client_connections_held"
    assert (gauge("txfanout_client_connections"), gauge(held)) == (0, 0)
    channel, transport = connect(site)
    connect(site)
    channel.dataReceived(POST)
    assert b"in-flight limit" in answer(transport)
    assert (gauge("txfanout_client_connections"), gauge(held)) == (2, 0)
    channel.dataReceived(POST)  # at once, ignoring Retry-After: held
    assert gauge(held) == 1
    clock.advance(FIRST_HOLD_S)
    assert b"in-flight limit" in answer(transport) and gauge(held) == 0
    channel.connectionLost(Failure(ConnectionDone()))
    assert (gauge("txfanout_client_connections"), gauge(held)) == (1, 0)


def test_a_held_client_has_one_read_taken_and_the_rest_left_in_the_kernel(net: Network):
    gw, client = refused_once(net)
    client.send(POST)  # at once, ignoring Retry-After: held
    net.run()
    pipelined = POST * (3 * READ_SIZE // len(POST))
    client.send(pipelined)  # and more behind it, at once
    net.run()
    [link] = net.links_to(gw.port)
    assert not link.server.reading and not client.received
    assert link.server.unread() >= len(pipelined) - READ_SIZE
    net.until(lambda: client.received)  # the hold's end: its 503, then what waited,
    # the first of it refused at once and the rest held again
    assert client.take().count(b"HTTP/1.1 503 ") == 2 and gw.site.held
    assert not link.server.reading and link.server.unread() >= len(pipelined) - READ_SIZE


@pytest.mark.slow  # waits a real first hold (0.8 s at a pace of 200 ms)
@pytest_twisted.ensureDeferred
async def test_a_client_retrying_at_once_gets_its_503_a_first_hold_later(partner, make_gateway):
    gw = make_gateway(route_config({"ok": {"url": partner.url("/ok")}}, max_inflight=1,
                                   pace_ms=200))
    hold_s = GatewayChannel.HOLD_FIRST_PACES * 0.2
    assert gw.gateway.admission.admit() is None  # the one slot is taken
    impolite = await keep_alive_client(gw.address)
    first = await within(impolite.request(POST))
    assert b"in-flight limit" in first
    sent = time.monotonic()
    again = await within(impolite.request(POST))  # at once, ignoring Retry-After
    assert time.monotonic() - sent >= (1 - GatewayChannel.HOLD_JITTER) * hold_s - 0.05
    assert b"in-flight limit" in again
    gw.gateway.admission.release()
    sent = time.monotonic()
    served = await within(impolite.request(POST))  # at once again, with room
    assert served.startswith(b"HTTP/1.1 200 ") and time.monotonic() - sent < hold_s


def test_a_connection_has_every_attribute_of_its_own_from_the_start():
    # Set later, in the orders a storm's refusals and holds set them, they
    # gave each connection a PyPy map of its own (site.py, __init__).
    clock, gateway, site = full_gateway()
    channel, transport = connect(site)
    declared = {name for cls in type(channel).__mro__
                for name in getattr(cls, "__annotations__", {}) if name.startswith("_")}
    assert declared >= {"_refused_at", "_holds", "_answer", "_waiting"}
    assert declared <= set(vars(channel))
