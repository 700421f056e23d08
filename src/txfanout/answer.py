"""Answer: the JSON a client receives, the fan-out's results or an error.

Every answer has a ``Content-Length`` (Klein would send bytes chunked) and
``Content-Type: application/json``; errors are ``{"error": "..."}``. The
results are UTF-8 JSON with characters unescaped (``\\uXXXX`` would make a
body of bytes that are not UTF-8, each one U+FFFD, six times its size
rather than three). A partner's JSON answer stands in it as a value
(``json``), as it came: it was checked to be strict JSON in UTF-8, so it is
neither decoded into objects nor encoded again; any other answer is text
(``body``). An answer is at most ``server.max_answer_bytes``: partner
answers that would pass it are left out, largest first.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from twisted.web.server import Request

from . import outcomes
from .inbound import Inbound
from .outcomes import CallResult

_COMPLETE = frozenset((outcomes.OK, outcomes.HTTP_ERROR))
_RESULTS_JSON = json.JSONEncoder(ensure_ascii=False)
# What one character of a text body can take, JSON-encoded (\u001f), and all
# of an entry but its answer (a name, an error text and numbers); the top
# level takes less. A JSON answer takes its own size. Together they bound an
# answer's size before it is built.
MAX_CHAR_BYTES = 6
ENTRY_BYTES = 512


def is_complete(results: Sequence[CallResult]) -> bool:
    """Did every selected partner answer (``ok`` or ``http_error``)?"""
    return all(r.outcome in _COMPLETE for r in results)


def json_body(request: Request, body: bytes) -> bytes:
    """Mark ``body`` as the JSON answer, with its length (no chunking)."""
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def json_error(request: Request, code: int, message: str) -> bytes:
    """Set ``code`` and return the JSON error body ``{"error": message}``."""
    request.setResponseCode(code)
    return json_body(request, json.dumps({"error": message}).encode("utf-8"))


def write_error(request: Request, code: int, message: str, close: bool = False) -> None:
    """Answer ``request`` at once with a JSON error (outside Klein)."""
    body = json_error(request, code, message)
    if close:
        request.setHeader(b"Connection", b"close")
        request.channel.persistent = False  # and do close it after this answer
    request.write(body)
    request.finish()


def results(request: Request, inbound: Inbound, calls: Sequence[CallResult],
            elapsed: float, max_bytes: int) -> tuple[bytes, bool]:
    """The 200 answer, at most ``max_bytes``: the country and OS the
    partners were chosen by, one entry per selected partner, and whether
    every one of them answered and its answer is in (also returned)."""
    entries = [r.to_json() for r in calls]
    left_out = leave_out_bodies(entries, calls, max_bytes)
    complete = not left_out and is_complete(calls)
    request.setHeader(b"X-Request-Id", inbound.request_id.encode("ascii"))
    request.setHeader(b"X-Fanout-Complete", b"true" if complete else b"false")
    head = {"request_id": inbound.request_id, "route": inbound.route,
            "country": inbound.country, "os": inbound.os, "complete": complete,
            "elapsed_ms": round(elapsed * 1000.0, 1)}
    return json_body(request, _encode(head, entries, calls)), complete


def _embedded(entry: dict[str, Any], call: CallResult) -> bytes | None:
    """The JSON answer an entry carries (None: it has a ``body`` instead,
    its own or null where its answer was left out)."""
    return None if "body" in entry else call.json


def _encode(head: dict[str, Any], entries: list[dict[str, Any]],
            calls: Sequence[CallResult]) -> bytes:
    """``head`` with ``"results": entries``, each JSON answer spliced into
    its entry (last, as ``"json"``) as it came. The bytes are
    ``json.dumps(..., ensure_ascii=False)``'s, written out for this one
    shape: on PyPy the json module's encoder is pure Python, and took a
    twentieth of the CPU per request."""
    parts = [b"{", _members(head), b', "results": [']
    for i, (entry, call) in enumerate(zip(entries, calls)):
        parts += (b", {" if i else b"{", _members(entry))
        answer = _embedded(entry, call)
        if answer is not None:
            parts += (b', "json": ', answer)
        parts.append(b"}")
    parts.append(b"]}")
    return b"".join(parts)


def _members(members: dict[str, Any]) -> bytes:
    """An object's members, without its braces."""
    return ", ".join([_string(name) + ": " + _value(value)
                      for name, value in members.items()]).encode("utf-8")


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    kind = type(value)
    if kind is str:
        return _string(value)
    if kind is int or kind is float:
        return repr(value)  # json.dumps's too (our floats are finite)
    return _RESULTS_JSON.encode(value)


def _string(text: str) -> str:
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return '"' + text + '"'  # nothing to escape: the usual case
    return _RESULTS_JSON.encode(text)


def _answer_size(call: CallResult) -> int:
    """At most what a call's answer takes in ours (MAX_CHAR_BYTES)."""
    return len(call.json) if call.json is not None else MAX_CHAR_BYTES * len(call.body or "")


def leave_out_bodies(entries: list[dict[str, Any]], calls: Sequence[CallResult],
                     max_bytes: int) -> bool:
    """Leave out the largest partner answers (``body`` null, an ``error``
    saying why) until the answer fits in ``max_bytes``; True when any was
    left out. ``entries`` are the ``calls``' entries, in order."""
    overhead = ENTRY_BYTES * (len(entries) + 1)
    if overhead + sum(_answer_size(c) for c in calls) <= max_bytes:
        return False  # fits, whatever the answers hold: the usual case, and cheap
    sizes = {i: len(c.json) if c.json is not None
             else len(_RESULTS_JSON.encode(c.body).encode("utf-8"))
             for i, c in enumerate(calls) if c.json is not None or c.body is not None}
    total = overhead + sum(sizes.values())
    left_out = False
    for i in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if total <= max_bytes:
            break
        total -= sizes[i]
        entries[i]["body"] = None
        entries[i]["error"] = f"body left out: answer over {max_bytes} bytes"
        left_out = True
    return left_out
