"""Circuit breakers: unit rules on a fake clock, then a real failing partner."""

from __future__ import annotations

import time

import pytest_twisted
from twisted.internet.task import Clock

from txfanout import upstream
from txfanout.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, verdict

from .conftest import route_config


def test_verdicts():
    assert verdict("timeout", None) is False
    assert verdict("error", None) is False
    assert verdict("http_error", 503) is False
    assert verdict("http_error", 404) is True
    assert verdict("ok", 200) is True
    for neutral in ("shed", "skipped", "cancelled", "open"):
        assert verdict(neutral, None) is None


def test_opens_after_n_consecutive_failures_only():
    clock = Clock()
    b = Breaker(clock, failures=3, cooldown_s=5.0, probes=2)
    for outcome in ("timeout", "error", "ok", "timeout", "error"):
        assert b.allow()
        b.record(outcome, None)
    assert b.state == CLOSED  # the ok broke the run
    for _ in range(10):  # shed says nothing about health
        b.record("shed", None)
    assert b.allow()
    b.record("http_error", 500)
    assert b.state == OPEN
    assert not b.allow()
    clock.advance(4.9)
    assert not b.allow()


def test_half_open_probes_close_or_reopen():
    clock = Clock()
    b = Breaker(clock, failures=1, cooldown_s=1.0, probes=2)
    b.allow()
    b.record("timeout", None)
    clock.advance(1.0)
    assert b.allow() and b.allow()  # two probes at once
    assert b.state == HALF_OPEN
    assert not b.allow()  # no third
    b.record("ok", 200)
    assert b.state == HALF_OPEN
    b.record("error", None)  # one failed probe: open again, cool-down restarts
    assert b.state == OPEN and not b.allow()
    clock.advance(1.0)
    assert b.allow() and b.allow()
    b.record("ok", 200)
    b.record("cancelled", None)  # neutral: frees the slot, no verdict
    assert b.state == HALF_OPEN and b.allow()
    b.record("ok", 200)
    assert b.state == CLOSED and b.allow()


@pytest_twisted.ensureDeferred
async def test_failing_partner_is_opened_and_costs_nothing(partner, make_gateway):
    gw = make_gateway(route_config({
        "bad": {"url": partner.url("/status/503"), "breaker_failures": 3,
                "breaker_cooldown_ms": 60000},
        "good": {"url": partner.url("/ok")},
    }))
    for _ in range(3):
        answer = await gw.post()
        assert answer.outcomes() == {"bad": "http_error", "good": "ok"}
    calls_before = partner.seen
    started = time.monotonic()
    answer = await gw.post()
    assert answer.outcomes() == {"bad": "open", "good": "ok"}
    assert partner.seen == calls_before + 1  # only "good" was called
    bad = answer.json["results"][0]
    assert bad["status"] is None and bad["latency_ms"] == 0.0 and "circuit open" in bad["error"]
    assert time.monotonic() - started < 1.0


@pytest_twisted.ensureDeferred
async def test_breaker_can_be_turned_off(partner, make_gateway):
    gw = make_gateway(route_config({"bad": {"url": partner.url("/status/500"),
                                            "breaker_failures": 0}}))
    for _ in range(8):
        assert (await gw.post()).outcomes() == {"bad": "http_error"}


def test_timeouts_while_the_gateway_lags_are_not_the_partners_fault():
    clock = Clock()
    lagging = [True]
    b = Breaker(clock, failures=2, cooldown_s=1.0, probes=1, excused=lambda: lagging[0])
    for _ in range(5):
        assert b.allow()
        b.record("timeout", None)
    assert b.state == CLOSED  # our own lag: the partner keeps its chances
    b.record("error", None)
    b.record("error", None)
    assert b.state == OPEN  # errors are never excused
    clock.advance(1.0)
    assert b.allow()
    b.record("timeout", None)  # an excused probe frees its slot, no verdict
    assert b.state == HALF_OPEN and b.allow()
    lagging[0] = False
    b.record("timeout", None)
    assert b.state == OPEN


def test_a_timeout_with_the_answer_unread_is_not_the_partners_fault():
    b = Breaker(Clock(), failures=1, cooldown_s=1.0, probes=1)
    b.record("timeout", None, unread=True)
    assert b.state == CLOSED
    b.record("timeout", None)
    assert b.state == OPEN


class UnreadBody(upstream.BytesProducer):
    """Sends the request, then stops reading its connection: the gateway
    "too busy" to read the partner's answer, which waits in its socket."""

    def startProducing(self, consumer):
        done = super().startProducing(consumer)
        self.connection.stopReading()
        return done


@pytest_twisted.ensureDeferred
async def test_an_answer_left_unread_by_a_busy_gateway_does_not_open_the_breaker(
        partner, make_gateway, monkeypatch):
    gw = make_gateway(route_config({"p": {"url": partner.url("/ok"), "timeout_ms": 200,
                                          "breaker_failures": 1}}))
    monkeypatch.setattr(upstream, "BytesProducer", UnreadBody)
    for _ in range(2):
        [result] = (await gw.post()).json["results"]
        assert result["outcome"] == "timeout", result
        assert result["error"] == "answer not read in 200 ms (gateway busy)"
    assert gw.gateway.snapshot.partners["p"].breaker.state == CLOSED
    monkeypatch.undo()  # a partner that really does not answer trips it
    hang = make_gateway(route_config({"p": {"url": partner.url("/hang"), "timeout_ms": 200,
                                            "breaker_failures": 1}}))
    [result] = (await hang.post()).json["results"]
    assert (result["outcome"], result["error"]) == ("timeout", "no answer in 200 ms")
    assert (await hang.post()).outcomes() == {"p": "open"}
