"""Scatter-gather for one inbound request.

Each selected partner gets a call whose timeout is what is left of the
request's deadline (less a reserve for answering), capped by the partner's
own timeout. The gather fires when every call has ended; as every call is
bounded by the deadline, so is the gather. Cancelling the gather (the client
went away) aborts every call still running.
"""

from __future__ import annotations

from typing import Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers

from . import outcomes
from .budget import Budget
from .config import ServerConfig
from .outcomes import CallResult
from .phases import CallPhase
from .snapshot import PartnerState
from .upstream import Upstream


def call_headers(prepared: Headers,
                 extra: Iterable[tuple[bytes | str, bytes | str]]) -> Headers:
    """``prepared`` (a partner's headers, checked when they were set) plus
    ``extra``: a shallow copy, where ``Headers.copy`` would check every
    value again. The lists of values stay shared: only set headers on the
    copy (``setRawHeaders`` replaces a list), never add to them."""
    headers = Headers()
    headers._rawHeaders = dict(prepared._rawHeaders)
    for name, value in extra:
        headers.setRawHeaders(name, [value])
    return headers


class Fanout:
    """One request's fan-out, visible while in flight."""

    def __init__(self, clock: IReactorTime, upstream: Upstream, server: ServerConfig,
                 request_id: str, route: str, budget: Budget) -> None:
        self._clock = clock
        self._upstream = upstream
        self._server = server
        self.request_id = request_id
        self.route = route
        self.budget = budget
        self.started = budget.started
        self.deadline_at = budget.deadline_at
        self.partners: list[str] = []
        self.results: list[CallResult | None] = []
        self.phases: list[CallPhase | None] = []  # of started calls, for the in-flight view
        self._calls: list[Deferred[CallResult]] = []
        self._pending = 0
        self.done: Deferred[list[CallResult]] = Deferred(self._cancel)

    def run(self, partners: Iterable[PartnerState], body: bytes) -> Deferred[list[CallResult]]:
        """Start every call; the result fires with one CallResult per partner,
        in the order given."""
        server = self._server
        for index, partner in enumerate(partners):
            config = partner.config
            self.partners.append(config.name)
            self.results.append(None)
            self.phases.append(None)
            now = self._clock.seconds()
            budget_ms = self.budget.for_call(config.timeout_ms, now)
            if budget_ms is None:
                self.results[index] = CallResult(config.name, outcomes.SKIPPED,
                                                 error="no time left in the deadline")
                continue
            slots = partner.slots
            if slots.inflight >= config.max_concurrency:
                self.results[index] = CallResult(config.name, outcomes.SHED,
                                                 error="partner at max_concurrency")
                continue
            breaker = partner.breaker
            if breaker is not None and not breaker.allow():
                self.results[index] = CallResult(config.name, outcomes.OPEN,
                                                 error="circuit open after repeated failures")
                continue
            headers = call_headers(partner.headers, (
                (server.deadline_header, b"%d" % budget_ms), (b"X-Request-Id", self.request_id)))
            slots.inflight += 1
            self._pending += 1
            phase = self.phases[index] = CallPhase(now)
            call = self._upstream.call(config, partner.url, headers, body, budget_ms / 1000.0,
                                       phase=phase)
            self._calls.append(call)
            call.addCallback(self._finished, index, partner)
        if not self._pending:
            self.done.callback(self.results)  # type: ignore[arg-type]
        return self.done

    def _finished(self, result: CallResult, index: int, partner: PartnerState) -> None:
        partner.slots.inflight -= 1
        if partner.breaker is not None:
            partner.breaker.record(result.outcome, result.status, result.unread)
        self.results[index] = result
        self._pending -= 1
        if not self._pending and not self.done.called:
            self._calls = []
            self.done.callback(self.results)  # type: ignore[arg-type]

    def _cancel(self, _: Deferred[list[CallResult]]) -> None:
        for call in self._calls:
            call.cancel()

    def pending_partners(self) -> list[str]:
        """Names of partners whose call is still running."""
        return [name for name, r in zip(self.partners, self.results) if r is None]
