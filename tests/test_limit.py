"""The adaptive in-flight limit: unit rules on a fake clock, then a real
gateway that no client and no partner can talk into admitting fewer."""

from __future__ import annotations

import gc
import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import Clock, LoopingCall

from txfanout.admission import SHED_BACKLOG, SHED_MAX_INFLIGHT, Admission
from txfanout.config import ServerConfig
from txfanout.lag import ReactorLag
from txfanout.limit import BUSY, CUT_EVERY, FLOOR, REFUSING, SHRINK, START, InflightLimit
from txfanout.memory import collector_pauses

from .configs import route_config
from .fakes import Network
from .loopback import raw_client, within
from .rawpartners import RawPartner


def test_lag_above_the_target_cuts_it_at_most_once_per_period_down_to_a_floor():
    clock = Clock()
    limit = InflightLimit(clock, 50, target=0.1)
    limit.observe(0.125, 10**6)
    limit.observe(0.125, 10**6)  # the same period: the first cut has not shown yet
    assert limit.current == 40  # in proportion: 0.1 / 0.125
    clock.advance(CUT_EVERY)
    limit.observe(1.0, 10**6)
    assert limit.current == 20  # at most by half
    for _ in range(30):
        clock.advance(CUT_EVERY)
        limit.observe(0.15, 10**6)
    assert limit.current == FLOOR
    limit.observe(0.07, 10**6)  # between half the target and the target: hold
    assert limit.current == FLOOR


def grown(limit: InflightLimit) -> InflightLimit:
    """``limit`` after quiet lag samples with it all in use: at its ceiling."""
    while limit.current < limit.ceiling:
        limit.observe(0.001, 10**6)
    return limit


def test_it_starts_low_and_grows_only_while_it_is_used():
    clock = Clock()
    limit = InflightLimit(clock, 2000, target=0.1)
    assert limit.current == START
    limit.observe(0.001, START // 2 - 1)  # quiet, but less than half of it was used
    assert limit.current == START
    limit.observe(0.001, START // 2)
    assert limit.current == int(START * 1.1 + 1)
    assert InflightLimit(clock, 2000, adaptive=False).current == 2000
    assert InflightLimit(clock, 50, target=0.1).current == 50


def test_a_cut_is_in_proportion_to_what_is_in_flight_when_that_is_less():
    clock = Clock()
    limit = grown(InflightLimit(clock, 2000, target=0.1))
    limit.observe(0.25, 1600)  # the loop runs 2.5x too long with 1600 in flight
    assert limit.current == 800  # at most by half
    clock.advance(CUT_EVERY)
    limit.observe(0.125, 400)
    assert limit.current == 320  # 400 x 0.1 / 0.125, not 800 x ...
    clock.advance(CUT_EVERY)
    limit.observe(1.0, 2)  # a long turn with next to nothing in flight
    assert limit.current == FLOOR


def test_lag_below_half_the_target_brings_it_back_to_max_inflight_within_seconds():
    clock = Clock()
    limit = InflightLimit(clock, 2000, target=0.1)
    for _ in range(40):
        clock.advance(CUT_EVERY)
        limit.observe(1.0, 10**6)
    assert limit.current == FLOOR
    ticks = 0
    while limit.current < 2000:
        limit.observe(0.001, 10**6)  # one lag sample every 100 ms
        ticks += 1
    assert ticks * 0.1 <= 7.0, ticks  # the issue asks for 10 s at most


def test_fixed_when_not_adaptive_and_clamped_by_a_reload():
    limit = InflightLimit(Clock(), 100, adaptive=False)
    limit.observe(1.0, 10**6)
    assert limit.current == 100
    limit.configure(40, adaptive=True, target=0.1)
    assert limit.current == 40
    limit.configure(4, adaptive=True, target=0.1)
    limit.observe(1.0, 10**6)
    assert limit.current == 4  # a max_inflight below the floor is not cut
    limit.configure(50, adaptive=False, target=0.1)
    assert limit.current == 50


def test_it_does_not_grow_while_the_core_is_busy():
    # A core with nothing to spare serves no more for more in flight.
    clock = Clock()
    limit = InflightLimit(clock, 2000, target=0.1)
    limit.observe(0.001, START, busy=BUSY)
    assert limit.current == START
    limit.observe(0.001, START, busy=BUSY - 0.01)
    assert limit.current == int(START * 1.1 + 1)
    limit.observe(0.15, 10**6, busy=0.2)  # a late loop is cut, busy or not
    assert limit.current < START


def test_busy_is_the_share_of_the_interval_the_process_spent_on_a_cpu():
    clock = Clock()
    used = [0.0]
    lag = ReactorLag(clock, cpu=lambda: used[0])
    lag.start()
    used[0] += 0.097
    clock.advance(0.1)
    assert lag.busy == pytest.approx(0.97)
    used[0] += 0.02
    clock.advance(0.1)
    assert lag.busy == pytest.approx(0.2)


def every_slot_taken() -> tuple[Clock, list[float], Admission]:
    """An adaptive limit's START slots all taken, its lag monitor running on
    a fake clock and on a CPU time the test adds to (``used[0]``)."""
    clock = Clock()
    used = [0.0]
    lag = ReactorLag(clock, cpu=lambda: used[0])
    lag.start()
    admission = Admission(clock, lag, ServerConfig(max_inflight=1000))
    for _ in range(START):
        assert admission.admit() is None
    return clock, used, admission


def test_a_gateway_whose_core_is_busy_holds_its_limit_where_it_is():
    clock, used, admission = every_slot_taken()
    for _ in range(20):  # on time, every slot taken, the core all in use
        used[0] += 0.1
        clock.advance(0.1)
    assert admission.limit.current == START
    used[0] += 0.05  # half of it: room to grow
    clock.advance(0.1)
    assert admission.limit.current > START


def test_a_limit_cut_below_its_start_grows_back_to_it_while_the_core_is_busy():
    clock = Clock()
    limit = InflightLimit(clock, 2000, target=0.1)
    limit.observe(0.3, START, busy=1.0)  # a passing stall
    assert limit.current == START // 2
    for _ in range(20):  # the work that follows keeps the core busy
        limit.observe(0.001, limit.current, busy=1.0)
    assert limit.current == START  # back, and no further while it stays busy


def test_a_limit_grown_past_its_start_comes_back_to_it_while_the_core_is_busy():
    # Grown while the core had room (or by one light sample), the slots past
    # START only let in requests that wait once it is busy.
    clock = Clock()
    limit = InflightLimit(clock, 2000, target=0.1)
    for _ in range(10):
        limit.observe(0.001, 10**6, busy=0.5)
    grown = limit.current
    assert grown > 2 * START
    limit.observe(0.001, 10**6, busy=BUSY)
    assert START < limit.current < grown  # a hundredth at a time
    for _ in range(120):  # 12 s
        limit.observe(0.001, 10**6, busy=1.0)
    assert limit.current == START  # and no lower: that is the lag's to cut


def test_a_busy_core_that_still_refuses_brings_it_down_to_the_refusing_level():
    # Those refused are refused whatever the limit; slots past what keeps
    # the core busy only add requests that wait, alive at each collection.
    clock = Clock()
    limit = InflightLimit(clock, 2000, target=0.1)
    limit.observe(0.001, START, busy=1.0, refusing=True)
    assert limit.value == pytest.approx(START / SHRINK)  # a twentieth at a time
    for _ in range(30):
        limit.observe(0.001, limit.current, busy=1.0, refusing=True)
    assert limit.current == REFUSING  # and no lower: that is the lag's to cut
    limit.observe(0.001, REFUSING, busy=0.5, refusing=True)  # room on the core: it grows
    assert limit.current > REFUSING
    for _ in range(30):  # busy, refusing no one: back to START, as before
        limit.observe(0.001, limit.current, busy=1.0)
    assert limit.current == START


def test_a_limit_cut_below_the_refusing_level_grows_back_to_it_while_refusing():
    clock = Clock()
    limit = InflightLimit(clock, 2000, target=0.1)
    limit.observe(0.3, START, busy=1.0)  # a passing stall
    limit.observe(0.3, START // 2, busy=1.0)
    clock.advance(CUT_EVERY)
    limit.observe(0.3, START // 2, busy=1.0)
    assert limit.current < REFUSING
    for _ in range(20):  # a storm that keeps the core busy
        limit.observe(0.001, limit.current, busy=1.0, refusing=True)
    assert limit.current == REFUSING


def test_a_burst_whose_excess_waited_for_slots_does_not_grow_it_past_its_start():
    # The queue serves the burst; grown, the limit would let the next one in
    # whole (slotqueue.py).
    clock = Clock()
    limit = InflightLimit(clock, 2000, target=0.1)
    for _ in range(20):
        limit.observe(0.001, limit.current, busy=0.2, waited=True)
    assert limit.current == START
    limit.observe(0.001, START, busy=0.2)  # full, and nothing waited: it grows
    assert limit.current > START


def test_a_limit_cut_below_its_start_grows_back_while_bursts_wait():
    clock = Clock()
    limit = InflightLimit(clock, 2000, target=0.1)
    limit.observe(0.3, START, busy=1.0)  # a passing stall
    assert limit.current < START
    for _ in range(20):
        limit.observe(0.001, limit.current, busy=0.2, waited=True)
    assert limit.current == START


def test_the_gateways_own_refusals_for_want_of_a_slot_bring_it_down_on_a_busy_core():
    clock, used, admission = every_slot_taken()
    for _ in range(10):  # busy, refusing only for another reason: it holds
        admission.refused(SHED_BACKLOG)
        used[0] += 0.1
        clock.advance(0.1)
    assert admission.limit.current == START
    for _ in range(20):  # busy, every slot taken, a request refused each sample
        assert admission.admit() == SHED_MAX_INFLIGHT
        used[0] += 0.1
        clock.advance(0.1)
    assert admission.limit.current == REFUSING
    for _ in range(START):
        admission.release()
    for _ in range(20):  # the storm is over: back to START, busy or not
        used[0] += 0.1
        clock.advance(0.1)
        for _ in range(admission.limit.current):  # every slot in use at some moment
            admission.admit()
        for _ in range(admission.admitted):
            admission.release()
    assert admission.limit.current == START


@pytest.mark.parametrize("needed", [100, 150, 400])
def test_a_limit_the_core_needs_past_its_start_keeps_the_core_busy(needed):
    # Slow partners: ``needed`` in flight keep the core busy, fewer leave
    # it idle in proportion. Stepping back toward START while busy must
    # not cost the core its work (a tenth per sample kept it 93-95% busy).
    clock = Clock()
    limit = InflightLimit(clock, 2000, target=0.1)
    used = []
    for _ in range(600):
        busy = min(1.0, limit.current / needed)
        used.append(busy)
        limit.observe(0.001, limit.current, busy=busy)
    assert sum(used[300:]) / 300 >= 0.975


def test_a_busy_event_loop_cuts_it():
    clock = Clock()
    lag = ReactorLag(clock)
    lag.start()
    admission = Admission(clock, lag, ServerConfig(max_inflight=40))
    for _ in range(40):
        assert admission.admit() is None
    clock.advance(0.35)  # the probe due at 0.1 s ran 250 ms late, 40 in flight
    assert admission.limit.current == 20
    for _ in range(12):
        clock.advance(0.1)  # on time again: the late sample leaves the window
    assert admission.limit.current == 40


def test_a_burst_between_two_lag_samples_counts_as_use():
    clock = Clock()
    lag = ReactorLag(clock)
    lag.start()
    admission = Admission(clock, lag, ServerConfig(max_inflight=1000))
    for _ in range(START // 2):
        assert admission.admit() is None
    for _ in range(START // 2):
        admission.release()
    clock.advance(0.1)  # nothing in flight at the sample, but half was taken since the last
    grown = admission.limit.current
    assert grown > START
    clock.advance(0.1)  # unused since: it holds
    assert admission.limit.current == grown


def slow_post(address, deadline_ms: int | None, body_every: float) -> tuple:
    """A POST whose 10-byte body comes a byte every ``body_every`` seconds,
    with ``X-Fanout-Deadline-Ms`` when given; fires with the raw answer."""
    head = b"POST /bid HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 10\r\n"
    if deadline_ms is not None:
        head += b"X-Fanout-Deadline-Ms: %d\r\n" % deadline_ms
    client = raw_client(address, head + b"\r\n")
    pending = list(b"{" + b" " * 8 + b"}")

    def one() -> None:
        if pending and client.transport is not None and client.transport.connected:
            client.transport.write(bytes([pending.pop(0)]))

    loop = LoopingCall(one)
    loop.clock = reactor
    loop.start(body_every)
    return client.closed.addBoth(lambda raw: (loop.stop(), raw)[1])


# The limit as the hostile traffic finds it: at a ceiling below START, and
# grown past START (the busy core may step it back toward START meanwhile,
# never below it; a cut would take it to a few, limit.py).
STANDING = pytest.mark.parametrize("max_inflight, standing", [(50, 50), (2000, 120)],
                                   ids=["at-its-ceiling", "grown-past-its-start"])


def assert_not_cut(limit: InflightLimit, standing: int) -> None:
    if standing > START:
        assert START <= limit.current <= standing
    else:
        assert limit.current == standing


@STANDING
def test_slow_uploads_and_dripping_partners_end_as_they_should_with_the_limit_untouched(
        net: Network, max_inflight: int, standing: int):
    # In memory, the lag monitor running on the fake clock: uploads spread
    # over 150 ms against a 100 ms deadline, with and without a 1 ms
    # deadline header, leave no time to call anyone; a partner that drips
    # its answer times out; none of it cuts the limit.
    drip = net.raw_partner()
    gw = net.gateway(route_config({
        "fast": {"url": net.partner().url("/ok")},
        "drip": {"url": drip.url("/drip"), "timeout_ms": 60, "breaker_failures": 0},
    }, max_inflight=max_inflight, deadline_ms=100))
    gw.gateway.admission.limit.value = float(standing)
    gw.gateway.lag.start()
    try:
        head = b"POST /bid HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 10\r\n"
        clients = [gw.client(head + (b"X-Fanout-Deadline-Ms: 1\r\n" if tiny else b"") + b"\r\n")
                   for tiny in (False, True, False, True)]
        for _ in range(10):  # the bodies, a byte every 15 ms each
            for client in clients:
                client.send(b" ")
            net.advance(0.015)
        net.until(lambda: all(c.closed for c in clients))
        for client in clients:
            [answer] = client.answers()
            assert answer.code == 200 and answer.outcomes() == {"fast": "skipped",
                                                                "drip": "skipped"}
        for _ in range(3):
            answer = gw.post()
            assert answer.outcomes() == {"fast": "ok", "drip": "timeout"}
            assert answer.results()["drip"]["latency_ms"] == 60.0
    finally:
        gw.gateway.lag.stop()
    assert_not_cut(gw.gateway.admission.limit, standing)


@pytest.mark.slow  # real uploads and a real partner against the reactor's real lag
@STANDING
@pytest_twisted.ensureDeferred
async def test_slow_uploads_tiny_deadlines_and_dripping_partners_leave_it_alone(
        partner, make_gateway, max_inflight: int, standing: int):
    drip = RawPartner().start()
    gw = make_gateway(route_config({
        "fast": {"url": partner.url("/ok")},
        "drip": {"url": drip.url("/drip"), "timeout_ms": 60, "breaker_failures": 0},
    }, max_inflight=max_inflight, deadline_ms=100))
    gw.gateway.admission.limit.value = float(standing)
    lag = gw.gateway.lag
    lag.start()
    try:
        # Uploads spread over 150 ms against a 100 ms deadline, with and
        # without a 1 ms deadline header; a partner that drips its answer.
        hostile = [slow_post(gw.address, deadline, 0.015) for deadline in (None, 1, None, 1)]
        answers = await within(DeferredList(hostile, consumeErrors=True), 5)
        for ok, raw in answers:
            assert ok and raw.startswith(b"HTTP/1.1 200 "), raw[:200]
            outcomes = {r["partner"]: r["outcome"]
                        for r in json.loads(raw.split(b"\r\n\r\n", 1)[1])["results"]}
            assert outcomes == {"fast": "skipped", "drip": "skipped"}
        for _ in range(3):
            answer = await gw.post()
            assert answer.outcomes() == {"fast": "ok", "drip": "timeout"}
    finally:
        lag.stop()
        await drip.stop()
    assert_not_cut(gw.gateway.admission.limit, standing)


def test_a_collector_pause_neither_cuts_the_limit_nor_sheds():
    # A collection stalls the loop once, whatever is in flight: a cut would
    # not shorten the next. Lateness beyond the pause is still the work's.
    clock = Clock()
    paused = [0.0]
    lag = ReactorLag(clock, paused=lambda: paused[0])
    lag.start()
    admission = Admission(clock, lag, ServerConfig(max_inflight=40, max_lag_ms=200))
    for _ in range(40):
        assert admission.admit() is None
    paused[0] += 0.25
    clock.advance(0.35)  # the probe ran 250 ms late, all of it the collector's
    assert (lag.recent, lag.behind) == (pytest.approx(0.25), 0.0)
    assert admission.limit.current == 40
    assert admission.shed_reason() == "max_inflight"  # full, but not for lag
    admission.release()
    assert admission.shed_reason() is None
    paused[0] += 0.05
    clock.advance(0.35)  # 250 ms late again, 50 ms of it the collector's
    assert lag.behind == pytest.approx(0.2)
    assert admission.limit.current == 20


def test_the_pauses_left_out_are_this_runtimes_collections():
    # CPython's cyclic collector (its gc.callbacks), or PyPy's (total_gc_time,
    # in whole milliseconds: a heap this size takes several to collect).
    alive = [[i] for i in range(300_000)]
    before = collector_pauses()
    gc.collect()
    assert collector_pauses() - before > 0
    assert len(alive) == 300_000
