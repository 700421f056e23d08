"""A finished request is freed by reference counting, not left to the
cyclic collector (CPython).

Cyclic garbage ages into the oldest generation, whose collections walk
everything alive: with every request's fan-out in it, they took a fifth of
the CPU at 2,500 clients. Klein's render and werkzeug's router kept every
request in cycles of their own (closures that name themselves): the public
route no longer goes through them (endpoint.py), and nothing of the fan-out
may be in a cycle of ours. PyPy frees nothing by reference counting: there,
this is not a property to have.
"""

from __future__ import annotations

import gc
import platform
import weakref

import pytest

from txfanout.fanout import Fanout
from txfanout.memory import MIDDLE_EVERY, YOUNG, collector_pauses, freeze_startup
from txfanout.outcomes import CallResult
from txfanout.phases import CallPhase
from txfanout.site import Exchange, GatewayRequest
from txfanout.upstream import BytesProducer

from .configs import route_config
from .fakes import http_request

OURS = (Fanout, CallResult, CallPhase, Exchange, BytesProducer)

pytestmark = pytest.mark.skipif(platform.python_implementation() != "CPython",
                                reason="PyPy frees nothing by reference counting")


def test_answered_and_timed_out_calls_leave_nothing_to_the_cyclic_collector(net):
    partner = net.partner()
    gw = net.gateway(route_config({"ok": {"url": partner.url("/ok")},
                                   "hangs": {"url": partner.url("/hang"), "timeout_ms": 50}}))
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        outcomes = [sorted(r["outcome"] for r in gw.post().json["results"]) for _ in range(5)]
        gc.collect()
        left = sorted({type(o).__name__ for o in gc.garbage if isinstance(o, OURS)})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert outcomes == [["ok", "timeout"]] * 5
    assert left == []


def test_an_answered_request_is_freed_at_once(net, monkeypatch):
    served = []
    process = GatewayRequest.process
    monkeypatch.setattr(GatewayRequest, "process",
                        lambda self: served.append(weakref.ref(self)) or process(self))
    partner = net.partner()
    gw = net.gateway(route_config({"p": {"url": partner.url("/ok")}}))
    gc.collect()
    gc.disable()
    try:
        client = gw.client(http_request(close=False) * 3)
        net.until(lambda: len(client.answers()) == 3)
        alive = [ref() is not None for ref in served]
    finally:
        gc.enable()
    assert [a.code for a in client.answers()] == [200, 200, 200]
    assert alive == [False, False, False]


def test_the_young_and_middle_generations_are_collected_less_often_once_ready():
    # Young collections come from what is in flight: rarer, they walk it
    # less often; the middle generation is collected every 70,000.
    young, middle, old = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, old)  # CPython's defaults
        freeze_startup()
        assert gc.get_threshold() == (YOUNG, MIDDLE_EVERY, old)
        assert YOUNG > 700 and YOUNG * MIDDLE_EVERY >= 700 * 100
    finally:
        gc.set_threshold(young, middle, old)


def test_the_collectors_time_is_a_metric(net):
    gw = net.gateway(route_config({"ok": {"url": net.partner().url("/ok")}}))
    before = gw.value("txfanout_gc_seconds_total", generation="2")
    gc.collect()
    after = gw.value("txfanout_gc_seconds_total", generation="2")
    assert before is not None and after is not None and after > before


def test_the_gateways_lag_leaves_the_collectors_pauses_out_of_what_admission_sees(net):
    gw = net.gateway(route_config({"ok": {"url": net.partner().url("/ok")}}))
    lag = gw.gateway.lag
    lag.start()  # (idempotent) its next probe is due one interval from now
    before = collector_pauses()
    gc.collect()
    pause = collector_pauses() - before
    assert pause > 0
    net.clock.advance(lag.interval + pause)  # the probe ran late by the pause
    assert lag.recent == pytest.approx(pause) and lag.behind < pause / 100  # (float error)
