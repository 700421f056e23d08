"""Adaptive timeouts (``adaptive_timeout = true``): a partner's timeout
follows its recent latency, so that a partner that degrades (hangs some of
its calls) stops holding every request to its whole ``timeout_ms``.

The window is the latencies of the partner's last :data:`WINDOW` ``ok``
calls, as the gateway measured them. Once it holds :data:`MIN_SAMPLES`
(``timeout_ms`` until then), the effective timeout is ``FACTOR`` times
their p99, at least :data:`FLOOR_MS`, never above ``timeout_ms``; it is
recomputed every :data:`UPDATE_EVERY` samples, and at once on one above it.

Only evidence the gateway owns moves it: an ``ok`` call that had its whole
timeout. A call the request's own deadline cut shorter (a client's short
deadline) says nothing: an answer it got is one of the quick ones. A
timeout is no sample either: a partner that hangs a share of its calls
would push the timeout back up to ``timeout_ms``, which is what this is
for. To learn that a partner got slower as a whole (every call now past
the short timeout, no ``ok`` left to learn from), every
:data:`PROBE_EVERY`-th call gets the whole ``timeout_ms``: its answer is the
partner's latency as it is now.
"""

from __future__ import annotations

import math

from . import outcomes
from .outcomes import CallResult

WINDOW = 200        # ok latencies kept (a ring)
MIN_SAMPLES = 50    # fewer: the timeout stays timeout_ms
UPDATE_EVERY = 10   # samples between two recomputations
PROBE_EVERY = 20    # one call in this many gets the whole timeout_ms
FACTOR = 1.5        # the effective timeout over the window's p99
FLOOR_MS = 20       # the effective timeout's floor (if timeout_ms is above it)


class AdaptiveTimeout:
    """One partner's window; ``timeout_ms`` is its effective timeout."""

    __slots__ = ("cap_ms", "timeout_ms", "_samples", "_next", "_fresh", "_calls")

    def __init__(self, cap_ms: int, kept: AdaptiveTimeout | None = None) -> None:
        """``cap_ms``: the partner's timeout_ms; ``kept``: the window of its
        state before a reload, carried over."""
        self.cap_ms = cap_ms
        self._samples: list[float] = list(kept._samples) if kept is not None else []
        self._next: int = kept._next if kept is not None else 0  # the oldest, once full
        self._fresh = 0  # samples since the last recomputation
        self._calls = 0  # calls since the last probe
        self.timeout_ms = float(cap_ms)
        self._update()

    def for_call(self) -> float:
        """The timeout of a call that starts now (ms)."""
        self._calls += 1
        if self._calls >= PROBE_EVERY:
            self._calls = 0
            return float(self.cap_ms)
        return self.timeout_ms

    def ended(self, result: CallResult, cut: bool) -> CallResult:
        """A call ended (``cut``: its deadline left it less than its timeout)."""
        if result.outcome == outcomes.OK and not cut:
            self.record(result.latency_ms)
        return result

    def record(self, latency_ms: float) -> None:
        """One ok call's latency."""
        samples = self._samples
        if len(samples) < WINDOW:
            samples.append(latency_ms)
        else:
            samples[self._next] = latency_ms
            self._next = (self._next + 1) % WINDOW
        self._fresh += 1
        # An answer past the effective timeout (a probe's) is news: at once.
        if self._fresh >= UPDATE_EVERY or latency_ms > self.timeout_ms:
            self._update()

    def _update(self) -> None:
        self._fresh = 0
        samples = self._samples
        if len(samples) < MIN_SAMPLES:
            self.timeout_ms = float(self.cap_ms)
            return
        p99 = sorted(samples)[math.ceil(len(samples) * 0.99) - 1]
        self.timeout_ms = float(min(self.cap_ms, max(FLOOR_MS, math.ceil(p99 * FACTOR))))
