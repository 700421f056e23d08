"""When a fan-out's answer is ready: a route's ``answer_when``, ``primary``
and ``grace_ms``.

By default (``answer_when = "all"``, no ``primary``) it is ready when every
call has ended, and fanout.py gathers the calls as it always did: the
default costs nothing here. Otherwise a :class:`Completion` watches the
calls, and the answer is ready once every call has ended, or sooner:

- ``answer_when = "first_ok"`` or k: once 1 (or k) calls ended ``ok``;
- ``primary``: once every primary call has ended (whatever its outcome) and
  then every other call has ended or ``grace_ms`` passed since the last
  primary ended, whichever comes first. Only the primaries targeting
  selected count; when it selected none, the answer waits for every call.

Calls still running then are aborted (their connections closed, their
slots freed as at the end of any call) and reported ``abandoned``: the
gateway chose to stop waiting, which says nothing about the partner, so
the breaker counts them for neither side (as ``cancelled``, which they are
to it), and the answer is not ``complete``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from . import outcomes, timers
from .config import RouteConfig
from .outcomes import CallResult

ABANDONED_ERROR = "the answer was ready without it"


@dataclass(frozen=True)
class Rule:
    """A route's rule, compiled: ready once ``oks`` calls ended ``ok`` (0:
    not by count), or ``grace_s`` after the selected ``primary`` calls."""

    oks: int
    primary: frozenset[str]
    grace_s: float


def rule(route: RouteConfig) -> Rule | None:
    """``route``'s rule; None for the default (wait for every call)."""
    when = route.answer_when
    if when == "all" and not route.primary:
        return None
    oks = 1 if when == "first_ok" else 0 if when == "all" else int(when)
    return Rule(oks, frozenset(route.primary), route.grace_ms / 1000.0)


def abandoned(result: CallResult) -> CallResult:
    """``result`` of a call aborted because the answer was ready without it."""
    if result.outcome != outcomes.CANCELLED:
        return result
    return dataclasses.replace(result, outcome=outcomes.ABANDONED, error=ABANDONED_ERROR)


class Completion:
    """Watches one fan-out's ``calls`` (each fires with its CallResult and
    never fails; ``results`` holds each one's once it fired): ``done`` fires
    with them all once ``rule`` says the answer is ready. Cancelling
    ``done`` (the client went away) cancels every call still running."""

    __slots__ = ("done", "_clock", "_rule", "_results", "_calls", "_left", "_oks",
                 "_primaries", "_grace", "_settled")

    def __init__(self, clock: IReactorTime, rule: Rule, partners: list[str],
                 results: list[CallResult | None], calls: list[Deferred[CallResult]]) -> None:
        self.done: Deferred[list[CallResult]] = Deferred(self._cancel)
        self._clock = clock
        self._rule = rule
        self._results = results
        self._calls = calls
        self._left = len(calls)
        self._oks = 0
        # Selected primaries still running; None: none selected (wait for all).
        self._primaries: int | None = sum(1 for p in partners if p in rule.primary) or None
        self._grace: IDelayedCall | None = None
        self._settled = False
        for call, result in zip(calls, results):
            if result is None:
                call.addCallback(self._ended)
            else:
                self._count(result)
        self._check()

    def _count(self, result: CallResult) -> None:
        self._left -= 1
        if result.outcome == outcomes.OK:
            self._oks += 1
        if self._primaries and result.partner in self._rule.primary:
            self._primaries -= 1

    def _ended(self, result: CallResult) -> CallResult:
        if not self._settled:
            self._count(result)
            self._check()
        return result

    def _check(self) -> None:
        if not self._left or 0 < self._rule.oks <= self._oks:
            self._settle(abandon=True)
        elif self._primaries == 0 and self._grace is None:
            if self._rule.grace_s:
                self._grace = self._clock.callLater(self._rule.grace_s, self._settle, True)
            else:
                self._settle(abandon=True)

    def _cancel(self, done: Deferred[list[CallResult]]) -> None:
        self._settle(abandon=False)

    def _settle(self, abandon: bool) -> None:
        """Stop waiting: cancel the calls still running (``abandon``: the
        answer is ready without them; else the client left), then fire."""
        self._settled = True
        timers.cancel(self._grace)
        results = self._results
        for index, call in enumerate(self._calls):
            if results[index] is None:
                call.cancel()  # fires it at once, with outcome cancelled
                result = results[index]
                assert result is not None
                results[index] = abandoned(result) if abandon else result
        self.done.callback([r for r in results if r is not None])
