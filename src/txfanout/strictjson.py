"""Strict JSON, the one decoder for what clients and partners send.

Strict: no ``NaN``, no ``Infinity``, no number that overflows to one, no
nesting deeper than the interpreter's recursion allows. ``inbound`` decodes
request bodies with it; ``outcomes`` checks with it the partner answers that
are embedded in the client's answer as they came.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("number out of range")
    return number


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Made once: json.loads with hooks builds a decoder per call.
_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant)


def decode_json(body: bytes) -> Any:
    """A strict JSON document (no NaN, no Infinity, no number that overflows
    to one), or None for an empty body; ValueError when it is not one.
    UTF-8, -16 or -32, as ``json.loads`` reads bytes."""
    if not body.strip():
        return None
    try:
        return _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except RecursionError:
        raise ValueError("nested too deeply") from None


def is_json_text(body: bytes) -> bool:
    """Whether ``body`` is one strict JSON document in UTF-8 (so that it can
    stand in a UTF-8 JSON answer as it is)."""
    try:
        _DECODER.decode(body.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return False
    return True


def is_json_type(content_type: bytes) -> bool:
    """Whether a Content-Type value names JSON: ``application/json`` or
    ``application/*+json``, any parameters (``; charset=utf-8``) aside."""
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json"))
