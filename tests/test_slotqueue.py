"""Requests that wait for an in-flight slot (slotqueue.py): a burst that
finds the slots full for a moment waits its turn, a standing overload is
refused at once; on a fake reactor and in-memory transports, then a burst
through the fake network to a partner."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from txfanout.budget import slot_wait
from txfanout.config import ServerConfig, parse
from txfanout.gateway import Gateway
from txfanout.limit import BUSY, START
from txfanout.site import GatewaySite
from txfanout.slotqueue import PACE_AFTER, PACE_MARGIN

from .configs import route_config
from .fakes import Network, answer, connect, full_gateway, no_jitter

POST = b"POST /bid HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
PERIOD_S = 0.1  # the lag period (lag.py)
# the defaults: deadline_ms 500, reserve_ms 5, the partner's timeout_ms 300
WAIT_S = 0.195
PACE_S = ServerConfig().pace_ms / 1000.0


def burst_gateway(max_inflight: int = 2, filled_after: float = 0.0, **server: object
                  ) -> tuple[MemoryReactorClock, Gateway, GatewaySite]:
    """A gateway whose slots went unused through a lag period, then all
    taken at once, ``filled_after`` seconds into the next: the start of a
    burst."""
    clock = MemoryReactorClock()
    gateway = Gateway(clock, parse(route_config({"p": {"url": "http://127.0.0.1:9/"}},
                                                max_inflight=max_inflight, **server)))
    site = GatewaySite(gateway, reactor=clock, draw=no_jitter)
    site.queue.cpu = clock.seconds  # a core busy throughout: the queue's pace is the clock's
    gateway.lag.start()
    clock.advance(PERIOD_S)
    clock.advance(filled_after)
    for _ in range(gateway.admission.limit.current):
        assert gateway.admission.admit() is None
    return clock, gateway, site


def requests(site: GatewaySite, count: int) -> list[tuple[Any, StringTransport]]:
    """``count`` new connections, each sending one whole request."""
    clients = [connect(site) for _ in range(count)]
    for channel, _ in clients:
        channel.dataReceived(POST)
    return clients


def shed(gateway: Gateway) -> float:
    return gateway.metrics.registry.get_sample_value("txfanout_shed_total",
                                                     {"reason": "max_inflight"})


def test_a_request_may_wait_as_long_as_its_calls_keep_their_whole_timeout():
    server = ServerConfig()  # deadline_ms 500, reserve_ms 5
    assert slot_wait(server, [300, 100]) == pytest.approx(WAIT_S)
    assert slot_wait(server, [495]) == 0.0  # nothing to spare: no wait
    assert slot_wait(server, [600]) == 0.0
    assert slot_wait(server, []) == pytest.approx(0.495)


def test_a_burst_waits_for_slots_and_is_served_first_come_first_served():
    clock, gateway, site = burst_gateway(max_inflight=3)
    clients = requests(site, 3)
    assert len(site.queue) == 3 and not any(answer(t) for _, t in clients)
    assert shed(gateway) == 0
    gateway.admission.release()
    assert len(site.queue) == 3  # not inside the answer that freed the slot
    clock.advance(0)
    assert len(site.queue) == 2 and gateway.admission.admitted == 3
    assert clients[0][0].requests and not clients[1][0].requests  # the oldest first
    gateway.admission.release()
    clock.advance(0)
    assert len(site.queue) == 1 and clients[1][0].requests and not clients[2][0].requests
    assert not any(answer(t) for _, t in clients)  # being served


def test_a_wait_ends_in_a_503_once_a_call_would_lose_some_of_its_timeout():
    clock, gateway, site = burst_gateway()
    channel, transport = connect(site)
    channel.dataReceived(POST)
    clock.advance(WAIT_S - 0.001)
    assert not answer(transport) and len(site.queue) == 1
    clock.advance(0.002)
    assert b"in-flight limit" in answer(transport) and not site.queue
    assert shed(gateway) == 1
    assert transport.producerState == "producing"  # kept alive, read on


def test_a_waited_request_counts_its_deadline_from_its_first_byte():
    clock, gateway, site = burst_gateway()
    channel, transport = connect(site)
    sent = clock.seconds()
    channel.dataReceived(POST)
    clock.advance(0.05)
    gateway.admission.release()
    clock.advance(0)
    [request] = channel.requests
    assert request.arrived == sent and request.exchange.started == sent


def test_under_a_standing_overload_a_request_is_refused_at_once():
    # Every slot taken through the whole last lag period: no burst to smooth,
    # and a queue that never empties would only add its wait to each answer.
    clock, gateway, site = full_gateway(max_inflight=2)
    gateway.lag.start()
    clock.advance(PERIOD_S)
    channel, transport = connect(site)
    channel.dataReceived(POST)
    assert b"in-flight limit" in answer(transport) and not site.queue


def test_a_burst_that_spans_two_lag_periods_waits_whole():
    # The slots filled late in a period; the burst's rest, read after the
    # period ends, still waits: a lag period after the fill, no more.
    clock, gateway, site = burst_gateway(max_inflight=3, filled_after=PERIOD_S - 0.005)
    clock.advance(0.01)  # past the lag's next measurement: the slots were full in its period
    assert gateway.admission.unused == 0
    late, late_transport = connect(site)
    late.dataReceived(POST)
    assert len(site.queue) == 1 and not answer(late_transport)
    clock.advance(PERIOD_S - 0.005)  # a lag period since the slots filled: standing full
    standing, standing_transport = connect(site)
    standing.dataReceived(POST)
    assert b"in-flight limit" in answer(standing_transport) and len(site.queue) == 1


def test_each_wait_ends_at_its_own_end_whatever_its_place():
    # One that waited in the backlog first joins behind an older waiter but
    # ends sooner: its 503 goes out at its own end, not the older one's.
    clock, gateway, site = burst_gateway(max_inflight=2)
    older, older_transport = connect(site)
    older.dataReceived(POST)
    clock.advance(0.05)
    ended = []

    class Waiter:
        def leave_queue(self) -> None:
            ended.append(clock.seconds())

    sent = clock.seconds() - 0.1
    assert site.queue.join(Waiter(), arrived=sent)  # its first byte came 100 ms ago
    clock.advance(WAIT_S - 0.1)
    assert ended == [pytest.approx(sent + WAIT_S)]
    assert len(site.queue) == 1 and not answer(older_transport)
    clock.advance(0.051)
    assert b"in-flight limit" in answer(older_transport) and not site.queue


def served_one_every(gateway: Gateway, clock: MemoryReactorClock, step: float,
                     times: int) -> None:
    """A slot frees every ``step`` seconds and a waiter takes it, ``times``."""
    for _ in range(times):
        clock.advance(step)
        gateway.admission.release()
        clock.advance(0)


def test_waiters_the_queues_pace_would_not_reach_get_their_503_at_once():
    clock, gateway, site = burst_gateway(max_inflight=40)
    clients = requests(site, 40)
    assert len(site.queue) == 40
    served_one_every(gateway, clock, 0.01, PACE_AFTER - 1)
    assert len(site.queue) == 40 - (PACE_AFTER - 1)  # not judged before PACE_AFTER
    served_one_every(gateway, clock, 0.01, 1)  # 16 served in 150 ms: 107 a second
    pace = PACE_AFTER / (0.01 * (PACE_AFTER - 1))
    left = WAIT_S - 0.01 * PACE_AFTER  # 35 ms of the others' waits
    assert pace * left < len(site.queue) <= PACE_MARGIN * pace * left  # 5 or 6 of 24
    kept = [t for _, t in clients[PACE_AFTER:PACE_AFTER + len(site.queue)]]
    assert not any(answer(t) for t in kept)
    trimmed = [t for _, t in clients[PACE_AFTER + len(site.queue):]]
    assert all(b"in-flight limit" in answer(t) for t in trimmed)  # now, the newest


def test_a_newcomer_the_queues_pace_would_not_reach_is_refused_at_once():
    clock, gateway, site = burst_gateway(max_inflight=200)  # START (64) taken
    clients = requests(site, 40)
    served_one_every(gateway, clock, 0.002, PACE_AFTER)  # 16 in 30 ms: 533 a second
    pace = PACE_AFTER / (0.002 * (PACE_AFTER - 1))
    assert len(site.queue) == 40 - PACE_AFTER and site.queue.open()
    crowd = requests(site, 150)  # the same burst, read later
    assert pace * WAIT_S < len(site.queue) <= PACE_MARGIN * pace * WAIT_S  # about 130
    joined = len(site.queue) - (40 - PACE_AFTER)
    assert not any(answer(t) for _, t in crowd[:joined])
    assert all(b"in-flight limit" in answer(t) for _, t in crowd[joined:])


def test_the_next_burst_is_judged_by_the_last_ones_pace_until_its_own_is_known():
    # The core reads a whole burst before it serves any of it.
    clock, gateway, site = burst_gateway(max_inflight=40)
    requests(site, 40)
    served_one_every(gateway, clock, 0.01, PACE_AFTER)  # 107 a second
    pace = PACE_AFTER / (0.01 * (PACE_AFTER - 1))
    clock.advance(WAIT_S)  # the rest refused: the queue is empty
    for _ in range(40 - PACE_AFTER):
        gateway.admission.release()
    for _ in range(10):  # the served ones answer (their deadline); slots unused
        clock.advance(PERIOD_S)
    assert not site.queue and gateway.admission.admitted == 0
    for _ in range(gateway.admission.limit.current):
        assert gateway.admission.admit() is None  # the next burst fills the slots
    clients = requests(site, 40)
    assert pace * WAIT_S < len(site.queue) <= PACE_MARGIN * pace * WAIT_S  # 21 to 26
    assert all(b"in-flight limit" in answer(t) for _, t in clients[len(site.queue):])


def test_a_slow_partner_cannot_talk_the_queue_into_refusing_the_next_burst():
    # Slots held by a slow partner while the core idles: served slowly by
    # the clock, not per second of the core's time, which is the pace.
    clock, gateway, site = burst_gateway(max_inflight=40)
    site.queue.cpu = lambda: 0.0  # the core idle while the partner answers
    requests(site, 40)
    served_one_every(gateway, clock, 0.01, PACE_AFTER)  # 107 a second by the clock
    assert len(site.queue) == 40 - PACE_AFTER  # none refused early
    clock.advance(WAIT_S)
    for _ in range(40 - PACE_AFTER):
        gateway.admission.release()
    for _ in range(10):
        clock.advance(PERIOD_S)
    for _ in range(gateway.admission.limit.current):
        assert gateway.admission.admit() is None  # the next burst
    clients = requests(site, 40)
    assert len(site.queue) == 40 and not any(answer(t) for _, t in clients)


def test_no_wait_when_the_partners_timeouts_leave_none():
    clock, gateway, site = burst_gateway(deadline_ms=305)  # 305 - 5 - 300 = 0
    channel, transport = connect(site)
    channel.dataReceived(POST)
    assert b"in-flight limit" in answer(transport) and not site.queue


def test_at_most_max_inflight_wait():
    clock, gateway, site = burst_gateway(max_inflight=2)
    clients = requests(site, 3)
    assert len(site.queue) == 2
    assert [bool(answer(t)) for _, t in clients] == [False, False, True]
    assert shed(gateway) == 1


def test_a_newcomer_goes_behind_those_waiting():
    clock, gateway, site = burst_gateway(max_inflight=2)
    first, _ = connect(site)
    first.dataReceived(POST)
    gateway.admission.release()  # a slot is free, the first not served yet
    late, _ = connect(site)
    late.dataReceived(POST)
    assert len(site.queue) == 2 and not late.requests
    clock.advance(0)
    assert first.requests and not late.requests


def test_a_client_being_paced_does_not_wait():
    clock, gateway, site = burst_gateway(max_inflight=1)
    waiting, _ = connect(site)
    waiting.dataReceived(POST)  # the queue is full (max_inflight 1)
    channel, transport = connect(site)
    channel.dataReceived(POST)
    assert b"in-flight limit" in answer(transport)
    waiting.connectionLost(Failure(ConnectionDone()))  # room in the queue again
    channel.dataReceived(POST)  # at once, ignoring Retry-After: held, not queued
    assert not site.queue and channel in site.held


def test_what_a_waiting_client_sends_waits_with_it_and_reading_stops():
    clock, gateway, site = burst_gateway(max_inflight=1)
    channel, transport = connect(site)
    channel.dataReceived(POST)
    assert transport.producerState == "producing"  # a client that leaves is seen
    channel.dataReceived(POST)  # pipelined behind it
    assert transport.producerState == "paused" and len(site.queue) == 1
    gateway.admission.release()
    clock.advance(0)
    assert transport.producerState == "producing" and len(channel.requests) == 1


def test_a_client_that_leaves_while_waiting_leaves_the_queue():
    clock, gateway, site = burst_gateway(max_inflight=1)
    channel, transport = connect(site)
    channel.dataReceived(POST)
    channel.connectionLost(Failure(ConnectionDone()))
    assert not site.queue
    assert not [c for c in clock.getDelayedCalls()  # nothing timed for it: let go
                if getattr(c.func, "__self__", None) is site.queue]
    gateway.admission.release()
    clock.advance(WAIT_S)
    assert not channel.requests and gateway.admission.admitted == 0


def test_a_drain_ends_every_wait_with_a_503_that_closes():
    clock, gateway, site = burst_gateway(max_inflight=1)
    channel, transport = connect(site)
    channel.dataReceived(POST)
    gateway.admission.drain()
    assert not site.queue
    assert b"shutting down" in answer(transport) and transport.disconnecting


def test_new_connections_wait_in_the_backlog_while_requests_wait():
    clock, gateway, site = burst_gateway(max_inflight=2)
    gateway.admission.release()
    assert site.room() > 0
    channel, _ = connect(site)  # (took the free slot for its first request)
    channel.dataReceived(POST)
    waiting, _ = connect(site)
    waiting.dataReceived(POST)
    assert len(site.queue) == 1 and site._slots() <= 0


def test_waiting_requests_are_gauged_and_counted():
    clock, gateway, site = burst_gateway(max_inflight=2)

    def value(name: str) -> float | None:
        return gateway.metrics.registry.get_sample_value(name)

    assert (value("txfanout_queued_requests"), value("txfanout_queued_total")) == (0, 0)
    requests(site, 2)
    assert (value("txfanout_queued_requests"), value("txfanout_queued_total")) == (2, 2)
    clock.advance(WAIT_S)
    assert (value("txfanout_queued_requests"), value("txfanout_queued_total")) == (0, 2)


def test_a_burst_through_the_network_is_served_whole_at_the_pace_of_its_slots(net: Network):
    partner = net.partner()
    gw = net.gateway(route_config({"p": {"url": partner.url("/delay/20")}}, max_inflight=4))
    gw.gateway.lag.start()
    net.advance(PERIOD_S)
    clients = [gw.client(POST) for _ in range(8)]  # 8 at once, 4 slots, 20 ms each
    net.until(lambda: all(c.received for c in clients))
    answers = [c.take() for c in clients]
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)
    assert gw.value("txfanout_queued_total") == 4
    assert gw.value("txfanout_shed_total", reason="max_inflight") == 0


def refused_after_a_wait() -> tuple[MemoryReactorClock, GatewaySite, Any, StringTransport]:
    """A kept-alive client whose request waited its whole wait, then got
    its 503."""
    clock, gateway, site = burst_gateway()
    channel, transport = connect(site)
    channel.dataReceived(POST)
    clock.advance(WAIT_S)
    assert b"in-flight limit" in answer(transport)
    return clock, site, channel, transport


def test_a_client_refused_after_a_wait_is_paced_from_its_request_not_its_503():
    # Its wait was the gateway's doing: a client sending once a second sent
    # its next request a second after the last, not too soon.
    clock, site, channel, transport = refused_after_a_wait()
    clock.advance(PACE_S - WAIT_S)  # a pace after its request, less after its 503
    channel.dataReceived(POST)
    assert b"in-flight limit" in answer(transport) and channel not in site.held


def test_a_client_that_resends_at_once_after_a_wait_is_paced():
    clock, site, channel, transport = refused_after_a_wait()
    channel.dataReceived(POST)  # at once, ignoring Retry-After
    assert not answer(transport) and channel in site.held and not site.queue


@pytest.mark.parametrize("waiting", [0, 1])
def test_a_burst_that_waited_does_not_grow_the_limit_past_its_start(waiting):
    clock, gateway, site = burst_gateway(max_inflight=1000)  # START (64) taken
    assert gateway.admission.limit.current == START
    requests(site, waiting)
    assert len(site.queue) == waiting
    clock.advance(PERIOD_S)  # full, the core idle: grown, unless the excess waited
    assert gateway.lag.busy < BUSY
    assert (gateway.admission.limit.current > START) == (not waiting)


def test_a_reload_moves_the_wait_with_the_partners_timeouts():
    clock, gateway, site = burst_gateway()
    assert gateway.admission.slot_wait == pytest.approx(WAIT_S)
    gateway.reconfigure(parse(route_config({"p": {"url": "http://127.0.0.1:9/",
                                                  "timeout_ms": 100}}, max_inflight=2)))
    assert gateway.admission.slot_wait == pytest.approx(0.395)
    gateway.reconfigure(parse(route_config({"p": {"url": "http://127.0.0.1:9/",
                                                  "timeout_ms": 495}}, max_inflight=2)))
    channel, transport = connect(site)
    channel.dataReceived(POST)
    assert b"in-flight limit" in answer(transport) and not site.queue


def test_a_slow_upload_takes_no_place_in_the_queue():
    clock, gateway, site = burst_gateway()
    slow, slow_transport = connect(site)
    slow.dataReceived(POST[:-2])  # its head, and its body to come
    assert not site.queue
    whole, _ = connect(site)
    whole.dataReceived(POST)
    assert len(site.queue) == 1  # first in line, whatever the slow one does
    slow.dataReceived(POST[-2:])
    assert b"in-flight limit" in answer(slow_transport) and len(site.queue) == 1


def test_a_tiny_deadline_header_moves_nothing_the_queue_shares():
    clock, gateway, site = burst_gateway()
    tiny, tiny_transport = connect(site)
    tiny.dataReceived(POST.replace(b"\r\n\r\n", b"\r\nX-Fanout-Deadline-Ms: 1\r\n\r\n"))
    other, other_transport = connect(site)
    other.dataReceived(POST)
    assert len(site.queue) == 2 and gateway.admission.slot_wait == pytest.approx(WAIT_S)
    clock.advance(WAIT_S - 0.001)  # the tiny deadline passed long ago: the other still waits
    assert len(site.queue) == 2 and not answer(other_transport)
    gateway.admission.release()
    clock.advance(0)  # its turn: its calls skipped (its own deadline); then the other's
    mine = answer(tiny_transport)
    assert mine.startswith(b"HTTP/1.1 200 ") and b'"outcome": "skipped"' in mine
    assert other.requests and not site.queue and not answer(other_transport)
    assert gateway.admission.limit.current == 2
    assert gateway.admission.slot_wait == pytest.approx(WAIT_S)


def test_a_client_waiting_every_period_cannot_hold_the_limit_down():
    # It waits only within a lag period of the slots filling: through the
    # periods of full slots after it, it is refused at once, and the limit
    # grows as before.
    clock, gateway, site = burst_gateway(max_inflight=1000)  # START (64) taken
    for _ in range(4):
        channel, _ = connect(site)
        channel.dataReceived(POST)
        clock.advance(PERIOD_S)
    assert gateway.lag.busy < BUSY
    assert gateway.admission.limit.current > START
