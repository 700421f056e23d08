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


_MARK = "\x00json\x00"  # where a JSON answer goes, until it is put there
_MARK_JSON = _RESULTS_JSON.encode(_MARK).encode("utf-8")


def _encode(head: dict[str, Any], entries: list[dict[str, Any]],
            calls: Sequence[CallResult]) -> bytes:
    """``head`` with ``"results": entries``, each JSON answer spliced into
    its entry as it came: encoded with a mark in its place, then the marks
    replaced. A text body that is the mark itself shows as one mark too
    many; then each entry is encoded on its own."""
    answers = []
    for entry, call in zip(entries, calls):
        answer = _embedded(entry, call)
        if answer is not None:
            entry["json"] = _MARK
            answers.append(answer)
    document = _RESULTS_JSON.encode({**head, "results": entries}).encode("utf-8")
    if not answers:
        return document
    pieces = document.split(_MARK_JSON)
    if len(pieces) != len(answers) + 1:
        return _encode_each(head, entries, calls)
    spliced = [pieces[0]]
    for answer, piece in zip(answers, pieces[1:]):
        spliced += (answer, piece)
    return b"".join(spliced)


def _encode_each(head: dict[str, Any], entries: list[dict[str, Any]],
                 calls: Sequence[CallResult]) -> bytes:
    parts = []
    for entry, call in zip(entries, calls):
        answer = _embedded(entry, call)
        entry.pop("json", None)
        text = _RESULTS_JSON.encode(entry).encode("utf-8")
        if answer is not None:  # '{..., "latency_ms": 1.0}' with '"json": ...' before the }
            text = b"%s, \"json\": %s}" % (text[:-1], answer)
        parts.append(text)
    opening = _RESULTS_JSON.encode({**head, "results": []}).encode("utf-8")[:-2]
    return b"%s%s]}" % (opening, b", ".join(parts))


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
