"""When a fan-out's answer is ready (completion.py): on a fake clock for the
timing, in memory for whole requests and a reload, and on real loopback
sockets for the connection a partner sees closed."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.defer import DeferredList
from twisted.internet.task import Clock

from txfanout import completion
from txfanout.breaker import CLOSED, HALF_OPEN
from txfanout.config import PartnerConfig, RouteConfig, parse
from txfanout.configview import config_view
from txfanout.outcomes import CallResult
from txfanout.snapshot import PartnerState

from .configs import route_config
from .loopback import within
from .partners import PartnerServer
from .test_fanout_timing import RecordingUpstream, fanout


def partners(clock: Clock, names: str = "abc", **config: Any) -> list[PartnerState]:
    return [PartnerState(PartnerConfig(n, "http://h/", **config), clock) for n in names]


def rule(**route: Any) -> completion.Rule | None:
    return completion.rule(RouteConfig("bid", ("a", "b", "c"), **route))


def end(upstream: RecordingUpstream, name: str, outcome: str = "ok",
        status: int | None = 200) -> None:
    """End the running call to ``name``."""
    [d] = [d for n, _, _, d in upstream.calls if n == name and not d.called]
    d.callback(CallResult(name, outcome, status))


def outcomes(done: Any) -> list[str] | None:
    """The outcomes the fan-out's answer fired with; None: not ready yet."""
    return [r.outcome for r in done.result] if done.called else None


def test_the_default_is_the_plain_gather():
    assert rule() is None and rule(answer_when="all") is None
    clock, upstream = Clock(), RecordingUpstream()
    assert isinstance(fanout(clock, upstream).run(partners(clock), b"{}", None), DeferredList)


def test_first_ok_answers_at_the_first_ok_and_abandons_the_rest():
    clock, upstream = Clock(), RecordingUpstream()
    states = partners(clock, breaker_failures=1)
    done = fanout(clock, upstream).run(states, b"{}", rule(answer_when="first_ok"))
    end(upstream, "b", "http_error", 500)
    assert outcomes(done) is None  # an answer, but not ok
    clock.advance(0.02)
    end(upstream, "c")
    assert outcomes(done) == ["abandoned", "http_error", "ok"]
    assert done.result[0].error == "the answer was ready without it"
    assert all(p.slots.inflight == 0 for p in states)  # each freed once
    # The gateway stopped waiting: says nothing about a (breaker_failures = 1
    # would have opened on one failure).
    assert states[0].breaker.state == CLOSED


def test_k_oks_are_waited_for():
    clock, upstream = Clock(), RecordingUpstream()
    done = fanout(clock, upstream).run(partners(clock, "abcd"), b"{}", rule(answer_when=2))
    end(upstream, "a")
    end(upstream, "b", "timeout", None)
    assert outcomes(done) is None
    end(upstream, "d")
    assert outcomes(done) == ["ok", "timeout", "abandoned", "ok"]


def test_fewer_oks_than_k_wait_for_every_call():
    clock, upstream = Clock(), RecordingUpstream()
    done = fanout(clock, upstream).run(partners(clock), b"{}", rule(answer_when=2))
    end(upstream, "a")
    end(upstream, "b", "error", None)
    assert outcomes(done) is None
    end(upstream, "c", "http_error", 404)
    assert outcomes(done) == ["ok", "error", "http_error"]


def test_the_others_get_grace_ms_after_the_last_primary_ended():
    clock, upstream = Clock(), RecordingUpstream()
    done = fanout(clock, upstream).run(partners(clock), b"{}",
                                       rule(primary=("a", "b"), grace_ms=50))
    clock.advance(0.1)
    end(upstream, "a")
    clock.advance(0.1)
    assert outcomes(done) is None  # b, a primary, still runs: no grace yet
    end(upstream, "b", "timeout", None)
    clock.advance(0.049)
    assert outcomes(done) is None
    clock.advance(0.001)
    assert outcomes(done) == ["ok", "timeout", "abandoned"]


def test_others_that_end_within_the_grace_end_it():
    clock, upstream = Clock(), RecordingUpstream()
    done = fanout(clock, upstream).run(partners(clock), b"{}", rule(primary=("a",), grace_ms=50))
    end(upstream, "a")
    clock.advance(0.02)
    end(upstream, "b")
    assert outcomes(done) is None
    end(upstream, "c", "http_error", 503)
    assert outcomes(done) == ["ok", "ok", "http_error"]
    assert not clock.getDelayedCalls()  # the grace timer went with it


def test_others_that_end_first_wait_for_the_primary():
    clock, upstream = Clock(), RecordingUpstream()
    done = fanout(clock, upstream).run(partners(clock), b"{}", rule(primary=("a",), grace_ms=0))
    end(upstream, "b")
    assert outcomes(done) is None
    end(upstream, "a")  # grace 0: the others get no more time
    assert outcomes(done) == ["ok", "ok", "abandoned"]


def test_without_a_selected_primary_every_call_is_waited_for():
    clock, upstream = Clock(), RecordingUpstream()
    done = fanout(clock, upstream).run(partners(clock, "bc"), b"{}",
                                       rule(primary=("a",), grace_ms=0))
    end(upstream, "b")
    assert outcomes(done) is None
    end(upstream, "c")
    assert outcomes(done) == ["ok", "ok"]


def test_with_no_partner_selected_the_answer_is_ready_at_once():
    clock, upstream = Clock(), RecordingUpstream()
    done = fanout(clock, upstream).run([], b"{}", rule(answer_when="first_ok"))
    assert outcomes(done) == []


def test_a_client_that_leaves_cancels_and_abandons_nothing():
    clock, upstream = Clock(), RecordingUpstream()
    states = partners(clock)
    done = fanout(clock, upstream).run(states, b"{}", rule(primary=("a",), grace_ms=50))
    end(upstream, "a")
    done.cancel()
    assert outcomes(done) == ["ok", "cancelled", "cancelled"]
    assert not clock.getDelayedCalls() and all(p.slots.inflight == 0 for p in states)


def test_a_call_waiting_for_a_slot_is_abandoned_out_of_the_queue():
    clock, upstream = Clock(), RecordingUpstream()
    [a] = partners(clock, "a", max_concurrency=1)
    [b] = partners(clock, "b")
    fanout(clock, upstream).run([a], b"{}")  # takes a's one slot
    done = fanout(clock, upstream).run([a, b], b"{}", rule(answer_when="first_ok"))
    assert len(a.slots.waiting) == 1
    end(upstream, "b")
    assert outcomes(done) == ["abandoned", "ok"]
    assert not a.slots.waiting and a.slots.inflight == 1 and not clock.getDelayedCalls()
    end(upstream, "a")
    assert a.slots.inflight == 0 and len(upstream.calls) == 2  # never called


def test_an_abandoned_probe_neither_closes_nor_reopens_the_breaker():
    clock, upstream = Clock(), RecordingUpstream()
    states = partners(clock, "ab", breaker_failures=1, breaker_probes=1,
                      breaker_cooldown_ms=1000)
    breaker = states[0].breaker
    breaker.record("error", None, breaker.epoch)  # opens it
    clock.advance(1.0)
    done = fanout(clock, upstream, started=1.0).run(states, b"{}", rule(answer_when="first_ok"))
    assert breaker.state == HALF_OPEN and not breaker.allow()  # a's call is the probe
    end(upstream, "b")
    assert outcomes(done) == ["abandoned", "ok"]
    assert breaker.state == HALF_OPEN and breaker.allow()  # the probe's slot is free again


# -- whole requests, in memory --


def test_a_route_answers_at_its_first_ok_and_counts_the_rest_abandoned(net):
    partner = net.partner()
    config = route_config({"fast": {"url": partner.url("/delay/10")},
                           "hung": {"url": partner.url("/hang")}}, deadline_ms=1000)
    config["routes"]["bid"]["answer_when"] = "first_ok"
    gw = net.gateway(config)
    answer = gw.post()
    assert answer.outcomes() == {"fast": "ok", "hung": "abandoned"}
    assert answer.json["elapsed_ms"] == 10.0
    assert answer.json["complete"] is False and answer.header("X-Fanout-Complete") == "false"
    net.run()
    assert partner.lost_count == 1  # the hung call's connection was closed
    assert gw.value("txfanout_partner_calls_total", partner="hung", outcome="abandoned") == 1
    assert gw.value("txfanout_answers_total", route="bid", complete="false") == 1
    hung = gw.gateway.snapshot.partners["hung"]
    assert hung.slots.inflight == 0 and hung.breaker.state == CLOSED
    assert not gw.gateway.inflight


def test_the_keys_take_effect_on_a_reload_and_show_in_the_config_view(net):
    partner = net.partner()
    config = route_config({"fast": {"url": partner.url("/delay/10")},
                           "slow": {"url": partner.url("/delay/200")}}, deadline_ms=1000)
    gw = net.gateway(config)
    assert gw.post().outcomes() == {"fast": "ok", "slow": "ok"}
    config["routes"]["bid"].update(primary=["fast"], grace_ms=50)
    reloaded = parse(config)
    gw.gateway.reconfigure(reloaded)
    answer = gw.post()
    assert answer.outcomes() == {"fast": "ok", "slow": "abandoned"}
    assert answer.json["elapsed_ms"] == 60.0  # 10 ms, then 50 ms of grace
    view = config_view(reloaded)["routes"]["bid"]
    assert (view["answer_when"], view["primary"], view["grace_ms"]) == ("all", ["fast"], 50)


# -- real sockets --


@pytest_twisted.ensureDeferred
async def test_first_ok_on_loopback_closes_the_hung_call(partner, make_gateway):
    hung = PartnerServer().start()
    try:
        config = route_config({"fast": {"url": partner.url("/hang"), "timeout_ms": 5000},
                               "hung": {"url": hung.url("/hang"), "timeout_ms": 5000}},
                              deadline_ms=10000)
        config["routes"]["bid"]["answer_when"] = "first_ok"
        gw = make_gateway(config)
        fast_seen, hung_seen = partner.wait_request(), hung.wait_request()
        answered = within(gw.post())  # started: both partners hang until told otherwise
        fast_request = await within(fast_seen)
        await within(hung_seen)
        lost = hung.wait_hang_lost()
        fast_request.write(b'{"bid": 1}')  # the first ok
        fast_request.finish()
        answer = await answered
        assert answer.outcomes() == {"fast": "ok", "hung": "abandoned"}
        await within(lost)  # the hung partner saw its connection closed
        assert gw.gateway.snapshot.partners["hung"].slots.inflight == 0
    finally:
        await hung.stop()
