"""Circuit breakers: unit rules on a fake clock, then failing partners in
memory (tests/fakes.py), and once a real reactor's busy turn (slow)."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from txfanout.breaker import CLOSED, HALF_OPEN, OPEN, WINDOW_S, Breaker, verdict

from .configs import route_config
from .daemon import ThreadedPartner
from .fakes import Network


class Warnings:
    """The text of every warning logged while a test runs."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.warn:
            self.lines.append(formatEvent(event))


@pytest.fixture
def warnings_logged() -> Iterator[Warnings]:
    warnings = Warnings()
    globalLogPublisher.addObserver(warnings)
    yield warnings
    globalLogPublisher.removeObserver(warnings)


def test_verdicts():
    assert verdict("timeout", None) is False
    assert verdict("error", None) is False
    assert verdict("http_error", 503) is False
    assert verdict("http_error", 404) is True
    assert verdict("ok", 200) is True
    assert verdict("too_large", None) is False  # an answer it can never use
    for neutral in ("shed", "skipped", "cancelled", "open"):
        assert verdict(neutral, None) is None


class Recorder:
    """A breaker's changes of state, as reported."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str, str]] = []

    def __call__(self, old: str, new: str, why: str) -> None:
        self.changes.append((old, new, why))


def call(b: Breaker, outcome: str, status: int | None = None, cut: bool = False) -> None:
    """One call through ``b``: allowed, then recorded in its epoch."""
    assert b.allow()
    b.record(outcome, status, b.epoch, cut)


def test_opens_once_failures_reach_the_count_and_half_the_calls():
    clock = Clock()
    b = Breaker(clock, failures=3, cooldown_s=5.0, probes=2)
    for outcome in ("ok", "ok", "ok", "ok", "timeout", "error", "timeout"):
        call(b, outcome)
    assert b.state == CLOSED  # 3 failures, but of 7 calls
    for _ in range(10):  # shed says nothing about health
        b.record("shed", None, b.epoch)
    call(b, "http_error", 500)
    assert b.state == OPEN  # 4 of 8
    assert not b.allow()
    clock.advance(4.9)
    assert not b.allow()


def test_a_partner_slow_for_a_fifth_of_its_calls_stays_closed():
    clock = Clock()
    b = Breaker(clock, failures=5, cooldown_s=5.0, probes=2)
    for _ in range(200):  # timeouts end together, in runs of five
        for _ in range(20):
            call(b, "ok", 200)
        for _ in range(5):
            call(b, "timeout")
        clock.advance(0.1)
    assert b.state == CLOSED


def test_only_the_last_ten_seconds_count():
    clock = Clock()
    b = Breaker(clock, failures=3, cooldown_s=5.0, probes=2)
    call(b, "error")
    call(b, "error")
    clock.advance(WINDOW_S)
    call(b, "error")
    assert b.state == CLOSED  # the first two are out of the window
    call(b, "error")
    call(b, "error")
    assert b.state == OPEN


def test_half_open_probes_close_or_reopen():
    clock = Clock()
    b = Breaker(clock, failures=1, cooldown_s=1.0, probes=2)
    call(b, "timeout")
    clock.advance(1.0)
    assert b.allow() and b.allow()  # two probes at once
    probes = b.epoch
    assert b.state == HALF_OPEN
    assert not b.allow()  # no third
    b.record("ok", 200, probes)
    assert b.state == HALF_OPEN
    b.record("error", None, probes)  # one failed probe: open again, cool-down restarts
    assert b.state == OPEN and not b.allow()
    clock.advance(1.0)
    assert b.allow() and b.allow()
    probes = b.epoch
    b.record("ok", 200, probes)
    b.record("cancelled", None, probes)  # neutral: frees the slot, no verdict
    assert b.state == HALF_OPEN and b.allow()
    b.record("ok", 200, probes)
    assert b.state == CLOSED and b.allow()


def test_late_results_of_calls_made_before_it_opened_are_no_probes():
    clock = Clock()
    b = Breaker(clock, failures=1, cooldown_s=0.1, probes=1)
    assert b.allow()
    slow = b.epoch  # a call with a timeout longer than the cool-down
    call(b, "error")
    clock.advance(0.1)
    assert b.allow() and b.state == HALF_OPEN  # the one probe is out
    b.record("ok", 200, slow)  # the slow call answers: it was no probe
    assert b.state == HALF_OPEN and not b.allow()
    b.record("timeout", None, slow)
    assert b.state == HALF_OPEN


def test_timeouts_the_partner_did_not_cause_do_not_count():
    clock = Clock()
    lagging = [True]
    b = Breaker(clock, failures=2, cooldown_s=1.0, probes=1, excused=lambda: lagging[0])
    for _ in range(5):
        call(b, "timeout")
    assert b.state == CLOSED  # our own lag: the partner keeps its chances
    lagging[0] = False
    for _ in range(5):  # budgets a request cut below the partner's timeout
        call(b, "timeout", cut=True)
    assert b.state == CLOSED
    call(b, "error", cut=True)
    call(b, "error", cut=True)
    assert b.state == OPEN  # errors are never excused
    clock.advance(1.0)
    lagging[0] = True
    call(b, "timeout")  # an excused probe frees its slot, no verdict
    assert b.state == HALF_OPEN and b.allow()
    lagging[0] = False
    b.record("timeout", None, b.epoch)
    assert b.state == OPEN


def test_every_change_of_state_is_reported_with_its_reason():
    clock, changes = Clock(), Recorder()
    b = Breaker(clock, failures=2, cooldown_s=0.5, probes=1, changed=changes)
    call(b, "timeout")
    call(b, "http_error", 502)
    clock.advance(0.5)
    call(b, "ok", 200)
    assert changes.changes == [
        (CLOSED, OPEN, "2 of 2 calls failed in 10 s (last: http_error)"),
        (OPEN, HALF_OPEN, "cool-down of 500 ms over"),
        (HALF_OPEN, CLOSED, "1 probes answered"),
    ]


def test_failing_partner_is_opened_and_costs_nothing(net):
    partner = net.partner()
    gw = net.gateway(route_config({
        "bad": {"url": partner.url("/status/503"), "breaker_failures": 3,
                "breaker_cooldown_ms": 60000},
        "good": {"url": partner.url("/ok")},
    }))
    for _ in range(3):
        answer = gw.post()
        assert answer.outcomes() == {"bad": "http_error", "good": "ok"}
    calls_before = partner.seen
    client = gw.send()
    assert net.until(lambda: client.closed) == 0.0  # nothing to wait for
    answer = gw.answer(client)
    assert answer.outcomes() == {"bad": "open", "good": "ok"}
    assert partner.seen == calls_before + 1  # only "good" was called
    bad = answer.json["results"][0]
    assert bad["status"] is None and bad["latency_ms"] == 0.0 and "circuit open" in bad["error"]


def test_breaker_can_be_turned_off(net):
    partner = net.partner()
    gw = net.gateway(route_config({"bad": {"url": partner.url("/status/500"),
                                           "breaker_failures": 0}}))
    for _ in range(8):
        assert gw.post().outcomes() == {"bad": "http_error"}


def test_a_clients_short_deadline_does_not_open_anyones_breaker(net: Network, warnings_logged):
    partner = net.partner()
    gw = net.gateway(route_config({"slow": {"url": partner.url("/delay/40"),
                                            "breaker_failures": 2}}))
    for _ in range(5):  # each of its calls gets 7 ms, and times out
        answer = gw.post(headers={"X-Fanout-Deadline-Ms": "12"})
        assert answer.outcomes() == {"slow": "timeout"}
        assert answer.results()["slow"]["latency_ms"] == 7.0
    assert gw.post().outcomes() == {"slow": "ok"}
    assert gw.gateway.snapshot.partners["slow"].breaker.state == CLOSED
    assert not warnings_logged.lines


def test_a_breaker_that_opens_is_logged_and_counted(net, warnings_logged):
    partner = net.partner()
    gw = net.gateway(route_config({"bad": {"url": partner.url("/status/503"),
                                           "breaker_failures": 2}}))
    for _ in range(2):
        gw.post()
    refused = gw.post()  # its one partner's circuit is open: nobody to call
    assert refused.code == 503 and "circuit open" in refused.json["error"]
    assert refused.header("Retry-After") == "1"
    [line] = warnings_logged.lines
    assert line == "partner bad: circuit breaker closed -> open (2 of 2 calls failed " \
                   "in 10 s (last: http_error))"
    counted = gw.gateway.metrics.registry.get_sample_value(
        "txfanout_breaker_transitions_total", {"partner": "bad", "state": "open"})
    assert counted == 1


class BusyTurn:
    """A reader on a pipe whose one read takes 200 ms: a long turn of an
    overloaded gateway, spent on I/O (so that the poll before it has
    already happened, and the timers due meanwhile run before the next)."""

    def __init__(self, before: Callable[[], None]) -> None:
        self._before = before
        self.read_end, self.write_end = os.pipe()
        reactor.addReader(self)

    def fileno(self) -> int:
        return self.read_end

    def logPrefix(self) -> str:
        return "BusyTurn"

    def doRead(self) -> None:
        os.read(self.read_end, 1)
        self._before()
        time.sleep(0.2)  # the busy turn under test, not a wait for something

    def start(self) -> None:
        os.write(self.write_end, b"x")

    def connectionLost(self, reason: Any) -> None:
        pass

    def close(self) -> None:
        reactor.removeReader(self)
        os.close(self.read_end)
        os.close(self.write_end)


def test_an_answer_unread_when_its_call_times_out_is_read_before_the_call_is_judged(
        net: Network):
    # In memory: the partner answers at 50 ms, the call times out at 100 ms,
    # and a 200 ms turn from 40 ms leaves both due when it ends: the
    # timeout finds the answer waiting unread (the peek at the kernel).
    partner = net.partner()
    gw = net.gateway(route_config({"p": {"url": partner.url("/delay/50"), "timeout_ms": 100,
                                         "breaker_failures": 1}}))
    client = gw.send()
    net.run()
    assert partner.seen == 1
    net.clock.callLater(0.04, net.busy, 0.2)
    [result] = gw.answer(client).json["results"]
    assert result["outcome"] == "ok" and result["latency_ms"] == 240.0, result
    assert gw.gateway.snapshot.partners["p"].breaker.state == CLOSED


@pytest.mark.slow  # a real 200 ms turn of the reactor, and the kernel's buffer
@pytest_twisted.ensureDeferred
async def test_an_answer_waiting_unread_at_the_timeout_is_read_before_the_call_is_judged(
        make_gateway):
    # The partner answers from a thread during a 200 ms turn: the call's
    # 100 ms timer is due, with the answer unread, before the next poll.
    partner = ThreadedPartner()
    busy = BusyTurn(partner.release)
    gw = make_gateway(route_config({"p": {"url": partner.url("/hold"), "timeout_ms": 100,
                                          "breaker_failures": 1}}))

    def busy_once_the_partner_has_it() -> None:
        if partner.arrived.empty():
            reactor.callLater(0, busy_once_the_partner_has_it)
        else:
            busy.start()

    reactor.callLater(0, busy_once_the_partner_has_it)
    try:
        answer = await gw.post()
    finally:
        busy.close()
        partner.close()
    [result] = answer.json["results"]
    assert result["outcome"] == "ok" and result["latency_ms"] >= 200, result
    assert gw.gateway.snapshot.partners["p"].breaker.state == CLOSED
