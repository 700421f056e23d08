"""Scatter and gather: one request's partner calls.

Scatter: each selected partner gets a call whose timeout is its share of
the request's budget (budget.py), shortened to its recent latency with
``adaptive_timeout`` (adaptive.py). A partner at its ``max_concurrency``
makes the call wait, first come first served, for one of its slots, for as
long as the budget allows a call to start (at most ``max_concurrency``
calls wait per partner; past that, or when the budget runs out, the call is
``shed``); a partner at its ``max_rps`` is not called (``rate_limited``,
ratecap.py), and an open breaker refuses it (``open``). A call that had its
whole ``timeout_ms`` and timed out may run on as a tail sample (tail.py),
holding its slot until it ends.

Gather: ``gatherResults`` over one Deferred per partner, each of which
fires with that partner's :class:`CallResult` and never fails, so the
gather fires when every call has ended; as every call is bounded by the
deadline, so is the gather. Cancelling it (the client went away) cancels
every call: those running are aborted, those waiting leave the queue. A
route that may answer sooner (its ``answer_when``, ``primary``) has a
:class:`~txfanout.completion.Completion` watch the calls instead.
"""

from __future__ import annotations

from typing import Iterable

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers

from . import _twisted, outcomes
from .budget import Budget
from .completion import Completion, Rule
from .config import ServerConfig
from .outcomes import CallResult
from .phases import CallPhase
from .snapshot import PartnerState
from .upstream import Upstream


def call_headers(prepared: Headers, extra: Iterable[tuple[bytes, bytes]]) -> Headers:
    """A copy of ``prepared`` (a partner's headers) with ``extra`` set: each
    value one that Twisted would not rewrite (no line break)."""
    return _twisted.headers_with(prepared, {
        _twisted.canonical_name(name): [value] for name, value in extra})


class SlotWait:
    """A call waiting in its partner's queue (``CallSlots.waiting``) for at
    most ``wait_s``; ``result`` fires with its CallResult."""

    __slots__ = ("_fanout", "_index", "partner", "result", "_timer", "_call")

    def __init__(self, fanout: "Fanout", index: int, partner: PartnerState,
                 clock: IReactorTime, wait_s: float) -> None:
        self._fanout = fanout
        self._index = index
        self.partner = partner
        self.result: Deferred[CallResult] = Deferred(self._cancel)
        self._timer = clock.callLater(wait_s, self._expire)
        self._call: Deferred[CallResult] | None = None
        partner.slots.waiting.append(self)

    def start(self) -> None:
        """A slot is free (and this call has left the queue): call."""
        self._timer.cancel()
        self._call = self._fanout._start(self._index, self.partner)
        self._call.chainDeferred(self.result)

    def _expire(self) -> None:
        self.partner.slots.waiting.remove(self)
        self.result.callback(CallResult(self.partner.config.name, outcomes.SHED,
                                        error="partner at max_concurrency"))

    def _cancel(self, result: Deferred[CallResult]) -> None:
        if self._call is not None:
            self._call.cancel()  # it fires at once, and so does result
            return
        self._timer.cancel()
        self.partner.slots.waiting.remove(self)
        result.callback(CallResult(self.partner.config.name, outcomes.CANCELLED,
                                   error="cancelled"))


class Fanout:
    """One request's fan-out, visible while in flight."""

    def __init__(self, clock: IReactorTime, upstream: Upstream, server: ServerConfig,
                 request_id: str, route: str, budget: Budget) -> None:
        self._clock = clock
        self._upstream = upstream
        self._deadline_header = _twisted.canonical_name(server.deadline_header.encode("ascii"))
        self.request_id = request_id
        self._request_id = request_id.encode("ascii")  # inbound.RequestIds: ASCII
        self.route = route
        self.budget = budget
        self.started = budget.started
        self.deadline_at = budget.deadline_at
        self.partners: list[str] = []
        self.results: list[CallResult | None] = []
        self.phases: list[CallPhase | None] = []  # of started calls, for the in-flight view
        self._body = b""

    def run(self, partners: Iterable[PartnerState], body: bytes,
            rule: Rule | None = None) -> Deferred[list[CallResult]]:
        """Start every call; the result fires with one CallResult per partner,
        in the order given, once every call has ended or sooner as ``rule``
        (the route's: completion.py) says."""
        self._body = body
        calls = []
        for index, partner in enumerate(partners):
            self.partners.append(partner.config.name)
            self.results.append(None)
            self.phases.append(None)
            call = self._scatter(index, partner)
            call.addCallback(self._ended, index)
            calls.append(call)
        if rule is None:
            return gatherResults(calls)
        return Completion(self._clock, rule, self.partners, self.results, calls).done

    def _ended(self, result: CallResult, index: int) -> CallResult:
        self.results[index] = result
        return result

    def _scatter(self, index: int, partner: PartnerState) -> Deferred[CallResult]:
        """Call ``partner`` now, or queue the call for one of its slots."""
        config = partner.config
        now = self._clock.seconds()
        if self.budget.for_call(config.timeout_ms, now) is None:
            return succeed(CallResult(config.name, outcomes.SKIPPED,
                                      error="no time left in the deadline"))
        slots = partner.slots
        if slots.inflight < config.max_concurrency:
            return self._start(index, partner)
        wait_s = self.budget.last_start - now
        if wait_s <= 0 or len(slots.waiting) >= config.max_concurrency:
            return succeed(CallResult(config.name, outcomes.SHED,
                                      error="partner at max_concurrency"))
        return SlotWait(self, index, partner, self._clock, wait_s).result

    def _start(self, index: int, partner: PartnerState) -> Deferred[CallResult]:
        """Start the call to ``partner`` (one of its slots is free)."""
        config = partner.config
        now = self._clock.seconds()
        budget_ms = self.budget.for_call(config.timeout_ms, now)
        if budget_ms is None:
            return succeed(CallResult(config.name, outcomes.SKIPPED,
                                      error="no time left in the deadline"))
        bucket = partner.bucket
        if bucket is not None and not bucket.ready(now):
            return succeed(CallResult(config.name, outcomes.RATE_LIMITED,
                                      error="partner at max_rps"))
        breaker = partner.breaker
        if breaker is not None and not breaker.allow():
            return succeed(CallResult(config.name, outcomes.OPEN,
                                      error="circuit open after repeated failures"))
        if bucket is not None:
            bucket.take()  # only now: a call the breaker refused costs no token
        adaptive = partner.adaptive
        if adaptive is not None:
            timeout_ms = adaptive.for_call()
            cut = budget_ms < timeout_ms  # by the request's deadline: no evidence
            budget_ms = min(budget_ms, timeout_ms)
        epoch = breaker.epoch if breaker is not None else 0
        headers = call_headers(partner.headers, (
            (self._deadline_header, b"%d" % budget_ms), (b"X-Request-Id", self._request_id)))
        partner.slots.inflight += 1
        phase = self.phases[index] = CallPhase(now, budget_ms)
        # A timeout at a shortened (adaptive) timeout is "cut" for the breaker
        # too: only calls given the whole timeout_ms are judged, or tail-sampled.
        whole = budget_ms >= config.timeout_ms
        call = self._upstream.call(config, partner.url, headers, self._body, budget_ms / 1000.0,
                                   phase=phase,
                                   tail=partner.slots if whole and config.tail_sample else None)
        call.addCallback(self._finished, partner, epoch, not whole)
        if adaptive is not None:
            call.addCallback(adaptive.ended, cut)
        return call

    @staticmethod
    def _finished(result: CallResult, partner: PartnerState, epoch: int,
                  cut: bool) -> CallResult:
        if partner.breaker is not None:
            partner.breaker.record(result.outcome, result.status, epoch, cut)
        partner.slots.release()
        return result

    def pending_partners(self) -> list[str]:
        """Names of partners whose call is still running."""
        return [name for name, r in zip(self.partners, self.results) if r is None]
