"""Strict JSON, the one decoder for what clients and partners send.

Strict: no ``NaN``, no ``Infinity``, no number that overflows to one, no
nesting deeper than ``MAX_DEPTH`` (on either runtime: PyPy's decoder reads
deeper than CPython's). ``inbound`` decodes
request bodies with it; ``outcomes`` checks with it the partner answers that
are embedded in the client's answer as they came.

The document is read by ``json.loads`` without hooks, then its numbers are
checked: on PyPy any hook (``parse_float``, ``parse_constant``) turns the
native decoder off for the pure-Python one, which took an eighth of the
gateway's CPU at fan-out 2 (docs/decisions.rst).
"""

from __future__ import annotations

import json
from math import isfinite
from typing import Any

MAX_DEPTH = 512
"""Arrays and objects nested deeper than this are refused (CPython's own
decoder stops near 1,000, by its recursion limit)."""


def _strict(text: str) -> Any:
    document = json.loads(text)
    if not _finite_throughout(document):
        raise ValueError("NaN, Infinity or a number out of range is not JSON")
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(document) > MAX_DEPTH:
        raise ValueError("nested too deeply")
    return document


def _finite_throughout(document: Any) -> bool:
    """Whether every number in ``document`` is finite (no recursion: as deep
    as the decoder went)."""
    waiting = [document]
    while waiting:
        value = waiting.pop()
        kind = type(value)
        if kind is float:
            if not isfinite(value):
                return False
        elif kind is dict:
            waiting.extend(value.values())
        elif kind is list:
            waiting.extend(value)
    return True


def _depth(document: Any) -> int:
    """How deep arrays and objects nest in ``document`` (a scalar: 0)."""
    deepest = 0
    waiting = [(document, 1)]
    while waiting:
        value, depth = waiting.pop()
        if type(value) is dict:
            value = list(value.values())
        if type(value) is list:
            deepest = max(deepest, depth)
            waiting.extend((item, depth + 1) for item in value)
    return deepest


def decode_json(body: bytes) -> Any:
    """A strict JSON document (no NaN, no Infinity, no number that overflows
    to one), or None for an empty body; ValueError when it is not one.
    UTF-8, -16 or -32, as ``json.loads`` reads bytes."""
    if not body.strip():
        return None
    try:
        return _strict(body.decode(json.detect_encoding(body), "surrogatepass"))
    except RecursionError:
        raise ValueError("nested too deeply") from None


def is_json_text(body: bytes) -> bool:
    """Whether ``body`` is one strict JSON document in UTF-8 (so that it can
    stand in a UTF-8 JSON answer as it is)."""
    try:
        _strict(body.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return False
    return True


def is_json_type(content_type: bytes) -> bool:
    """Whether a Content-Type value names JSON: ``application/json`` or
    ``application/*+json``, any parameters (``; charset=utf-8``) aside."""
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json"))
