"""The adaptive in-flight limit: unit rules on a fake clock, then a gateway
whose partners' answers it is too busy to read."""

from __future__ import annotations

import pytest_twisted
from twisted.internet.task import Clock

from txfanout.limit import CUT_EVERY, FLOOR, InflightLimit

from .conftest import route_config
from .test_breaker import UnreadBody


def test_late_answers_cut_it_at_most_once_per_period_down_to_a_floor():
    clock = Clock()
    limit = InflightLimit(clock, 100)
    limit.answered_late()
    limit.answered_late()  # the same period: the first cut has not shown yet
    assert limit.current == 75
    for _ in range(30):
        clock.advance(CUT_EVERY)
        limit.answered_late()
    assert limit.current == FLOOR


def test_answers_in_time_raise_it_about_one_per_round_back_to_max_inflight():
    limit = InflightLimit(Clock(), 100)
    limit.answered_late()
    for _ in range(76):  # one round of requests at 75 in flight
        limit.answered_in_time()
    assert limit.current == 76
    for _ in range(10000):
        limit.answered_in_time()
    assert limit.value == 100.0


def test_fixed_when_not_adaptive_and_clamped_by_a_reload():
    limit = InflightLimit(Clock(), 100, adaptive=False)
    limit.answered_late()
    assert limit.current == 100
    limit.configure(40, adaptive=True)
    assert limit.current == 40
    limit.configure(4, adaptive=True)
    limit.answered_late()
    assert limit.current == 4  # a max_inflight below the floor is not cut
    limit.configure(50, adaptive=False)
    assert limit.current == 50


@pytest_twisted.ensureDeferred
async def test_a_gateway_that_reads_answers_late_admits_fewer(partner, make_gateway,
                                                              monkeypatch):
    gw = make_gateway(route_config({"p": {"url": partner.url("/ok"), "timeout_ms": 100}},
                                   max_inflight=40))
    assert (await gw.post()).outcomes() == {"p": "ok"}
    assert gw.gateway.admission.limit.current == 40
    monkeypatch.setattr("txfanout.upstream.BytesProducer", UnreadBody)
    assert (await gw.post()).outcomes() == {"p": "timeout"}
    assert gw.gateway.admission.limit.current == 30
    sample = gw.gateway.metrics.registry.get_sample_value("txfanout_inflight_limit")
    assert sample == 30
