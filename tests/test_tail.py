"""``tail_sample``: timed-out calls that run on to measure the partner's tail.
The key; the sampler's share and bounds on a fake clock; whole requests in
memory (the answer at the timeout, the late end in the histogram, the slot,
the bounds, reloads, shutdown, top); one partner on real loopback sockets."""

from __future__ import annotations

import math
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from txfanout import tail
from txfanout.config import PartnerConfig, parse
from txfanout.configview import config_view
from txfanout.snapshot import CallSlots, PartnerState
from txfanout.top import Scrape, Window, render

from .configs import route_config
from .fakes import Network
from .loopback import within
from .test_admin import AdminUnderTest
from .test_config import errors_of
from .test_fanout_timing import RecordingUpstream, fanout

# -- the key --


def test_bad_tail_sample_values_are_refused_naming_the_key():
    for bad in (-0.01, 1.01, "1%", True, [0.5]):
        assert errors_of(route_config({"a": {"url": "http://h/", "tail_sample": bad}})) == [
            "partners.a.tail_sample: must be a number from 0 to 1 (0: off)"], bad
    config = parse(route_config({"a": {"url": "http://h/", "tail_sample": 0},
                                 "b": {"url": "http://h/", "tail_sample": 1},
                                 "c": {"url": "http://h/"}}))
    assert [config.partners[n].tail_sample for n in "abc"] == [0.0, 1.0, 0.01]
    assert [config_view(config)["partners"][n]["tail_sample"] for n in "abc"] == [0.0, 1.0, 0.01]


# -- the sampler, on a fake clock --


def _sample(sampler: tail.TailSampler, partner: str = "a", share: float = 1.0,
            slots: CallSlots | None = None, clock: Clock | None = None) -> tail.Sample | None:
    return sampler.sample(partner, share, slots or CallSlots(), Deferred(), 0.0, 0.3,
                          clock or Clock())


def test_the_share_is_exact_per_partner_and_0_samples_nothing():
    sampler = tail.TailSampler()
    taken = [_sample(sampler, share=0.01) is not None for _ in range(300)]
    assert [i + 1 for i, t in enumerate(taken) if t] == [100, 200, 300]
    assert _sample(sampler, "b", 0.5) is None and _sample(sampler, "b", 0.5) is not None
    assert all(_sample(sampler, "c", 0.0) is None for _ in range(1000))


def test_at_most_so_many_samples_run_per_partner_and_in_all():
    sampler = tail.TailSampler()
    assert [_sample(sampler, "a") is not None for _ in range(6)] == [True] * 4 + [False] * 2
    for partner in "bcdef":
        for _ in range(4):
            _sample(sampler, partner)
    assert sum(sampler.running.values()) == tail.MAX_RUNNING == 16
    assert sampler.running == {"a": 4, "b": 4, "c": 4, "d": 4}


def test_a_sample_holds_a_slot_until_its_end_and_is_cut_at_twice_its_timeout():
    clock, slots, seen = Clock(), CallSlots(), []
    sampler = tail.TailSampler(lambda p, r: seen.append((p, r)))
    call: Deferred[object] = Deferred(lambda d: d.errback(Exception("aborted")))
    call.addErrback(lambda f: sample.ended(False, clock.seconds()))
    clock.advance(0.3)  # it timed out, 300 ms after it started at 0
    sample = sampler.sample("a", 1.0, slots, call, 0.0, 0.3, clock)
    assert sample is not None and slots.inflight == 1
    clock.advance(0.299)
    assert not call.called and slots.inflight == 1
    clock.advance(0.001)  # 600 ms since it started
    assert call.called and slots.inflight == 0 and seen == [("a", math.inf)]
    assert sampler.running == {} and not clock.getDelayedCalls()


def test_a_timeout_run_past_the_bound_by_a_busy_reactor_is_cut_at_once():
    clock, slots, seen = Clock(), CallSlots(), []
    sampler = tail.TailSampler(lambda p, r: seen.append(r))
    call: Deferred[object] = Deferred(lambda d: d.errback(Exception("aborted")))
    call.addErrback(lambda f: sample.ended(False, clock.seconds()))
    clock.advance(0.7)  # a 300 ms timeout run 400 ms late: past twice its timeout
    sample = sampler.sample("a", 1.0, slots, call, 0.0, 0.3, clock)
    [bound] = clock.getDelayedCalls()
    assert bound.getTime() == 0.7  # now: a reactor refuses a delay below 0
    clock.advance(0)
    assert call.called and seen == [math.inf] and slots.inflight == 0


def test_only_calls_given_their_whole_timeout_may_be_sampled():
    clock, upstream = Clock(), RecordingUpstream()
    states = [PartnerState(PartnerConfig(n, "http://h/", timeout_ms=t, tail_sample=s), clock)
              for n, t, s in (("whole", 300, 0.01), ("cut", 1000, 0.01), ("off", 300, 0.0))]
    fanout(clock, upstream, deadline_ms=500).run(states, b"{}")
    assert upstream.tails == [states[0].slots, None, None]


# -- whole requests, in memory --


def _gateway(net: Network, path: str, **partner: Any) -> Any:
    server = net.partner()
    settings = {"url": server.url(path), "timeout_ms": 300, "tail_sample": 1, **partner}
    return server, net.gateway(route_config({"p": settings}, deadline_ms=1000))


def _tail(gw: Any, le: str) -> float | None:
    return gw.value("txfanout_partner_tail_ratio_bucket", partner="p", le=le)


def test_a_sampled_timeout_answers_at_the_timeout_and_its_late_answer_is_recorded(net):
    server, gw = _gateway(net, "/delay/450")
    started = net.clock.seconds()
    client = gw.send()
    net.until(lambda: client.closed)
    answer = client.answers()[0]
    assert round(net.clock.seconds() - started, 6) == 0.3  # not a moment later
    assert answer.outcomes() == {"p": "timeout"}
    assert answer.results()["p"]["error"] == "no answer in 300 ms"
    state = gw.gateway.snapshot.partners["p"]
    assert state.slots.inflight == 1 and gw.gateway.upstream.tails.running == {"p": 1}
    assert gw.value("txfanout_partner_tail_running", partner="p") == 1
    assert AdminUnderTest(gw.gateway).get("/debug/inflight").json["tail_samples"] == {"p": 1}
    assert _tail(gw, "+Inf") == 0
    net.until(lambda: not gw.gateway.upstream.tails.running)
    assert round(net.clock.seconds() - started, 6) == 0.45
    assert (_tail(gw, "1.25"), _tail(gw, "1.5"), _tail(gw, "+Inf")) == (0, 1, 1)
    assert state.slots.inflight == 0 and server.lost_count == 0  # answered, kept alive
    assert gw.value("txfanout_partner_calls_total", partner="p", outcome="timeout") == 1
    assert state.breaker.state == "closed"


def test_a_hung_sample_is_aborted_at_twice_its_timeout_and_counted_unanswered(net):
    server, gw = _gateway(net, "/hang")
    started = net.clock.seconds()
    assert gw.post().outcomes() == {"p": "timeout"}
    assert server.lost_count == 0  # still open: the sample runs on
    net.until(lambda: server.lost_count == 1)
    assert round(net.clock.seconds() - started, 6) == 0.6
    assert (_tail(gw, "2.0"), _tail(gw, "+Inf")) == (0, 1)
    assert gw.gateway.snapshot.partners["p"].slots.inflight == 0


def test_past_the_bound_a_timeout_is_aborted_as_ever(net):
    server, gw = _gateway(net, "/hang")
    clients = [gw.send() for _ in range(tail.MAX_PER_PARTNER + 2)]
    net.until(lambda: all(c.closed for c in clients))
    assert [c.answers()[0].outcomes() for c in clients] == [{"p": "timeout"}] * 6
    assert gw.gateway.upstream.tails.running == {"p": tail.MAX_PER_PARTNER}
    assert server.lost_count == 2  # the two not sampled, at the timeout
    net.until(lambda: server.lost_count == 6)
    assert _tail(gw, "+Inf") == 4


def test_the_slot_stays_taken_until_the_sample_ends(net):
    server, gw = _gateway(net, "/delay/450", max_concurrency=1)
    state = gw.gateway.snapshot.partners["p"]
    assert gw.post().outcomes() == {"p": "timeout"}
    second = gw.send()
    net.run()
    assert len(state.slots.waiting) == 1 and server.seen == 1  # the sample has the slot
    net.until(lambda: server.seen == 2)
    assert not gw.gateway.upstream.tails.running and state.slots.inflight == 1


def test_cancelled_and_abandoned_calls_are_not_sampled(net):
    server = net.partner()
    config = route_config({"fast": {"url": server.url("/delay/10"), "tail_sample": 1},
                           "hung": {"url": server.url("/hang"), "tail_sample": 1}},
                          deadline_ms=1000)
    config["routes"]["bid"]["answer_when"] = "first_ok"
    gw = net.gateway(config)
    assert gw.post().outcomes() == {"fast": "ok", "hung": "abandoned"}
    net.run()
    assert server.lost_count == 1
    config["routes"]["bid"]["answer_when"] = "all"
    gw.gateway.reconfigure(parse(config))
    client = gw.send()
    net.advance(0.1)
    client.abort()  # the client leaves before the timeout
    net.run()
    assert server.lost_count == 2 and not gw.gateway.upstream.tails.running
    net.advance(1.0)
    assert gw.value("txfanout_partner_tail_ratio_count", partner="hung") == 0


def test_a_reload_changes_the_share(net):
    server = net.partner()
    config = route_config({"p": {"url": server.url("/hang"), "timeout_ms": 300,
                                 "tail_sample": 0}}, deadline_ms=1000)
    gw = net.gateway(config)
    gw.post()
    assert server.lost_count == 1  # aborted at the timeout: not sampled
    config["partners"]["p"]["tail_sample"] = 1
    gw.gateway.reconfigure(parse(config))
    gw.post()
    assert server.lost_count == 1 and gw.gateway.upstream.tails.running == {"p": 1}
    assert config_view(gw.gateway.snapshot.config)["partners"]["p"]["tail_sample"] == 1.0


def test_shutdown_aborts_the_samples_without_counting_them(net):
    server, gw = _gateway(net, "/hang")
    gw.post()
    gw.gateway.close()
    net.run()
    assert server.lost_count == 1 and not gw.gateway.upstream.tails.running
    assert _tail(gw, "+Inf") == 0
    assert gw.gateway.snapshot.partners["p"].slots.inflight == 0


def test_top_shows_what_longer_timeouts_would_have_answered(net):
    server = net.partner()
    gw = net.gateway(route_config(
        {"quick": {"url": server.url("/delay/400"), "timeout_ms": 300, "tail_sample": 1},
         "slow": {"url": server.url("/delay/580"), "timeout_ms": 300, "tail_sample": 1},
         "never": {"url": server.url("/ok"), "timeout_ms": 300, "tail_sample": 1}},
        deadline_ms=1000))
    metrics = gw.gateway.metrics
    before = Scrape.parse(metrics.exposition().decode(), 0.0)
    gw.post()
    net.advance(1.0)  # both samples end: at 1.33 and 1.93 x their timeout
    after = Scrape.parse(metrics.exposition().decode(), 1.0)
    lines = render(Window(before, after), "x").splitlines()
    head = lines.index(next(line for line in lines if line.startswith("tail (sampled t/o)")))
    assert lines[head].split()[3:] == ["samples", "t/o", "+50%", "t/o", "+100%", "running"]
    assert [line.split() for line in lines[head + 1:head + 3]] == [
        ["quick", "1", "100.0%", "100.0%", "0"], ["slow", "1", "0.0%", "100.0%", "0"]]
    assert not any(line.startswith("never") for line in lines[head:])


# -- real sockets --


@pytest_twisted.ensureDeferred
async def test_a_late_partner_on_loopback_lands_in_the_histogram(partner, make_gateway):
    gw = make_gateway(route_config({"p": {"url": partner.url("/delay/260"), "timeout_ms": 200,
                                          "tail_sample": 1}}, deadline_ms=1000))
    ended: Deferred[float] = Deferred()
    record = gw.gateway.upstream.tails.observe

    def observe(partner_name: str, ratio: float) -> None:
        record(partner_name, ratio)
        ended.callback(ratio)

    gw.gateway.upstream.tails.observe = observe
    answer = await gw.post()
    assert answer.outcomes() == {"p": "timeout"}
    assert answer.json["results"][0]["latency_ms"] < 260  # at its timeout, not the partner's
    ratio = await within(ended)
    assert 1.3 <= ratio <= tail.BOUND  # answered (260 ms), before the bound (400 ms)
    value = gw.gateway.metrics.registry.get_sample_value
    assert value("txfanout_partner_tail_ratio_count", {"partner": "p"}) == 1
    assert value("txfanout_partner_tail_ratio_bucket", {"partner": "p", "le": "1.25"}) == 0
    assert gw.gateway.snapshot.partners["p"].slots.inflight == 0
