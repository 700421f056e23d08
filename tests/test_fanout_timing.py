"""Budgets, skips and sheds, on a fake clock (no real time passes)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from txfanout.budget import Budget
from txfanout.config import PartnerConfig, ServerConfig
from txfanout.fanout import Fanout
from txfanout.outcomes import CallResult
from txfanout.snapshot import PartnerState


class RecordingUpstream:
    """Stands in for the network: records each call and lets the test end it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, dict, Deferred]] = []
        self.tails: list[object] = []  # each call's ``tail`` (None: not to be sampled)

    def call(self, partner, url, headers, body, timeout_s, phase=None, tail=None):
        self.tails.append(tail)
        d: Deferred[CallResult] = Deferred(
            lambda d: d.callback(CallResult(partner.name, "cancelled")))
        self.calls.append((partner.name, timeout_s, dict(headers.getAllRawHeaders()), d))
        return d


def fanout(clock, upstream, started=0.0, deadline_ms=500):
    server = ServerConfig(deadline_ms=deadline_ms, reserve_ms=5, min_call_ms=5)
    return Fanout(clock, upstream, server, "rid-1", "bid",
                  Budget.of(started, deadline_ms, server))


def test_call_budget_is_capped_by_partner_timeout_and_what_is_left():
    clock, upstream = Clock(), RecordingUpstream()
    partners = [PartnerState(PartnerConfig("a", "http://h/", timeout_ms=300), clock),
                PartnerState(PartnerConfig("b", "http://h/", timeout_ms=1000), clock)]
    clock.advance(0.1)  # 100 ms already gone since arrival
    fanout(clock, upstream).run(partners, b"{}")
    (a, a_budget, a_headers, _), (b, b_budget, b_headers, _) = upstream.calls
    assert a_budget == 0.3
    assert abs(b_budget - 0.395) < 1e-9  # 500 - 100 - 5 reserve
    assert a_headers[b"X-Fanout-Deadline-Ms"] == [b"300"]
    assert b_headers[b"X-Fanout-Deadline-Ms"] == [b"395"]
    assert a_headers[b"X-Request-Id"] == [b"rid-1"]


def test_no_budget_means_skipped_not_started():
    clock, upstream = Clock(), RecordingUpstream()
    partner = PartnerState(PartnerConfig("a", "http://h/"), clock)
    clock.advance(0.491)  # 9 ms left, minus the 5 ms reserve: under min_call_ms
    done = fanout(clock, upstream).run([partner], b"{}")
    assert upstream.calls == []
    assert [r.outcome for r in done.result] == ["skipped"]
    assert partner.slots.inflight == 0


def outcomes_of(d):
    """The outcomes a fired gather fired with."""
    assert d.called, "the gather has not fired"
    return [r.outcome for r in d.result]


def test_a_call_to_a_full_partner_waits_for_a_slot_first_come_first_served():
    clock, upstream = Clock(), RecordingUpstream()
    partner = PartnerState(PartnerConfig("a", "http://h/", max_concurrency=2), clock)
    first = fanout(clock, upstream).run([partner, partner], b"{}")
    assert partner.slots.inflight == 2
    second = fanout(clock, upstream).run([partner], b"{}")
    third = fanout(clock, upstream).run([partner], b"{}")
    assert len(upstream.calls) == 2 and len(partner.slots.waiting) == 2
    clock.advance(0.1)
    upstream.calls[0][3].callback(CallResult("a", "ok", 200))  # a slot frees
    assert len(upstream.calls) == 3 and len(partner.slots.waiting) == 1
    assert abs(upstream.calls[2][1] - 0.3) < 1e-9  # its own timeout, from now
    upstream.calls[1][3].callback(CallResult("a", "ok", 200))
    assert outcomes_of(first) == ["ok", "ok"]
    for _, _, _, d in upstream.calls[2:]:
        d.callback(CallResult("a", "ok", 200))
    assert outcomes_of(second) == ["ok"] and outcomes_of(third) == ["ok"]
    assert partner.slots.inflight == 0 and not partner.slots.waiting


def test_a_waiting_call_is_shed_when_its_budget_runs_out():
    clock, upstream = Clock(), RecordingUpstream()
    partner = PartnerState(PartnerConfig("a", "http://h/", max_concurrency=1), clock)
    fanout(clock, upstream).run([partner], b"{}")
    waiting = fanout(clock, upstream).run([partner], b"{}")
    clock.advance(0.489)  # 500 ms deadline less 5 reserve, 5 min_call: 490 ms
    assert not waiting.called
    clock.advance(0.001)
    assert outcomes_of(waiting) == ["shed"] and not partner.slots.waiting
    assert len(upstream.calls) == 1


def test_no_more_calls_wait_than_the_partner_takes_at_once():
    clock, upstream = Clock(), RecordingUpstream()
    partner = PartnerState(PartnerConfig("a", "http://h/", max_concurrency=2), clock)
    fanout(clock, upstream).run([partner, partner], b"{}")
    fanout(clock, upstream).run([partner, partner], b"{}")  # both wait
    third = fanout(clock, upstream).run([partner], b"{}")
    assert outcomes_of(third) == ["shed"] and len(partner.slots.waiting) == 2


def test_cancelling_a_waiting_call_takes_it_out_of_the_queue():
    clock, upstream = Clock(), RecordingUpstream()
    partner = PartnerState(PartnerConfig("a", "http://h/", max_concurrency=1), clock)
    fanout(clock, upstream).run([partner], b"{}")
    waiting = fanout(clock, upstream).run([partner], b"{}")
    waiting.cancel()
    assert outcomes_of(waiting) == ["cancelled"] and not partner.slots.waiting
    upstream.calls[0][3].callback(CallResult("a", "ok", 200))
    assert partner.slots.inflight == 0 and len(upstream.calls) == 1
    assert not clock.getDelayedCalls()  # its timer went with it


def test_a_slot_passes_over_a_waiting_call_its_breaker_refuses():
    clock, upstream = Clock(), RecordingUpstream()
    config = PartnerConfig("a", "http://h/", max_concurrency=2, breaker_failures=1)
    partner = PartnerState(config, clock)
    fanout(clock, upstream).run([partner, partner], b"{}")
    first = fanout(clock, upstream).run([partner], b"{}")
    second = fanout(clock, upstream).run([partner], b"{}")
    partner.breaker.record("error", None, partner.breaker.epoch)  # opens it
    upstream.calls[0][3].callback(CallResult("a", "ok", 200))
    assert outcomes_of(first) == ["open"] and outcomes_of(second) == ["open"]
    assert partner.slots.inflight == 1 and not partner.slots.waiting


def test_gather_waits_for_all_and_cancel_aborts_the_rest():
    clock, upstream = Clock(), RecordingUpstream()
    partners = [PartnerState(PartnerConfig(n, "http://h/"), clock) for n in "abc"]
    f = fanout(clock, upstream)
    done = f.run(partners, b"{}")
    upstream.calls[1][3].callback(CallResult("b", "ok", 200))
    assert not done.called
    assert f.pending_partners() == ["a", "c"]
    done.cancel()
    assert [r.outcome for r in done.result] == ["cancelled", "ok", "cancelled"]
    assert all(p.slots.inflight == 0 for p in partners)
