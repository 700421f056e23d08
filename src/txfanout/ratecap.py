"""Per-partner rate cap (``max_rps``): a token bucket on the reactor's clock.

The bucket holds at most ``burst`` tokens: a tenth of a second of the rate,
at least one call. Each call takes a token; a call that finds less than a
whole one is not made (outcome ``rate_limited``). With ``--workers N`` (or
``--worker-count N``) each process enforces ``max_rps / N``, fractions
kept: the processes together make at most ``max_rps`` calls a second, plus
their bursts.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

BURST_S = 0.1  # the burst: this many seconds of the rate (at least one call)


class TokenBucket:
    """``rate`` calls a second, ``burst`` at once; full when made."""

    __slots__ = ("rate", "burst", "tokens", "_at")

    def __init__(self, rate: float, clock: IReactorTime) -> None:
        self.rate = rate
        self.burst = max(1.0, rate * BURST_S)
        self.tokens = self.burst
        self._at = clock.seconds()

    def ready(self, now: float) -> bool:
        """Refill up to ``now``; True when a call may go (then ``take()``)."""
        # max(): the reactor's clock is the wall clock, which may step back.
        tokens = self.tokens + max(0.0, now - self._at) * self.rate
        self.tokens = tokens if tokens < self.burst else self.burst
        self._at = now
        return self.tokens >= 1.0

    def take(self) -> None:
        """A call goes: it takes one token (``ready()`` said there was one)."""
        self.tokens -= 1.0
