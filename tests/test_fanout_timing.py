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

    def call(self, partner, url, headers, body, timeout_s, phase=None):
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


def test_partner_at_its_cap_is_shed_without_queueing():
    clock, upstream = Clock(), RecordingUpstream()
    partner = PartnerState(PartnerConfig("a", "http://h/", max_concurrency=2), clock)
    first = fanout(clock, upstream).run([partner, partner], b"{}")
    assert partner.slots.inflight == 2
    second = fanout(clock, upstream).run([partner], b"{}")
    assert [r.outcome for r in second.result] == ["shed"]
    assert len(upstream.calls) == 2
    for _, _, _, d in upstream.calls:
        d.callback(CallResult("a", "ok", 200))
    assert partner.slots.inflight == 0
    assert [r.outcome for r in first.result] == ["ok", "ok"]


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
