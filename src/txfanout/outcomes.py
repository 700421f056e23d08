"""The outcome of one partner call: a closed set, and the record of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from txfanout._compat import SLOTS

from .strictjson import is_json_text, is_json_type

OK = "ok"                  # 2xx
HTTP_ERROR = "http_error"  # any other status; status and body kept
TIMEOUT = "timeout"        # no complete answer within the call's budget
ERROR = "error"            # refused, reset, DNS, TLS, malformed HTTP
TOO_LARGE = "too_large"    # body over max_response_bytes; connection aborted
SHED = "shed"              # partner at max_concurrency; not called
OPEN = "open"              # partner's circuit breaker open; not called
RATE_LIMITED = "rate_limited"  # partner at max_rps; not called
SKIPPED = "skipped"        # less than min_call_ms of budget left; not called
CANCELLED = "cancelled"    # the client went away; the call was aborted
ABANDONED = "abandoned"    # the answer was ready without it (completion.py); aborted

ALL = (OK, HTTP_ERROR, TIMEOUT, ERROR, TOO_LARGE, SHED, OPEN, RATE_LIMITED, SKIPPED, CANCELLED,
       ABANDONED)
NOT_CALLED = frozenset((SHED, OPEN, SKIPPED, RATE_LIMITED))  # the partner never saw the request


@dataclass(**SLOTS)
class CallResult:
    """What happened to one partner call, as reported to the client.

    A partner's answer is either ``json`` (its type said JSON and its body
    is one strict JSON document in UTF-8: the body as it came, to stand in
    the client's answer as a value) or ``body`` (text: the body decoded as
    UTF-8, each invalid byte U+FFFD)."""

    partner: str
    outcome: str
    status: int | None = None
    latency_ms: float = 0.0
    body: str | None = None
    error: str | None = None
    json: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        """The result's entry in the answer, but for an embedded ``json``
        answer, which the answer splices in as it came (answer.py)."""
        out: dict[str, Any] = {
            "partner": self.partner, "outcome": self.outcome, "status": self.status,
            "latency_ms": self.latency_ms,
        }
        if self.json is None:
            out["body"] = self.body
        if self.error is not None:
            out["error"] = self.error
        return out


def answered(partner: str, code: int, latency_ms: float, payload: bytes,
             content_type: bytes | None) -> CallResult:
    """The record of an HTTP answer: ``ok`` (2xx) or ``http_error``, its
    body kept as JSON when its type says JSON and it is strict JSON in
    UTF-8, else as text."""
    outcome = OK if 200 <= code < 300 else HTTP_ERROR
    if content_type is not None and is_json_type(content_type) and is_json_text(payload):
        return CallResult(partner, outcome, code, latency_ms, json=payload)
    return CallResult(partner, outcome, code, latency_ms, payload.decode("utf-8", "replace"))
