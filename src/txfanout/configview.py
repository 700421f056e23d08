"""The effective configuration as JSON, secrets redacted.

Redacted: every partner header value (API keys travel there), the query
string of partner URLs, and any value whose key names a secret (``key``,
``secret``, ``token``, ``password``, ``passphrase``; not ``*_file`` paths).
Left out: what the loader derived from the keys (a partner's TLS settings
with its files read), which the keys themselves show.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .config import Config

REDACTED = "<redacted>"
_SECRET_KEY = re.compile(r"(^|_)(key|secret|token|password|passphrase)($|_)", re.I)


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=REDACTED)) if parts.query else url


def _plain(value: Any, key: str = "") -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name), f.name)
                for f in dataclasses.fields(value) if not f.metadata.get("derived")}
    if key == "headers" and isinstance(value, dict):
        return {name: REDACTED for name in value}
    if isinstance(value, dict):
        return {k: _plain(v, k) for k, v in value.items()}
    if isinstance(value, (frozenset, set)):
        return sorted(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str) and key and not key.endswith("_file") and _SECRET_KEY.search(key):
        return REDACTED
    if key == "url" and isinstance(value, str):
        return _redact_url(value)
    return value


def config_view(config: Config) -> dict[str, Any]:
    """``config`` as plain JSON-able data, secrets replaced by ``<redacted>``."""
    view: dict[str, Any] = _plain(config)
    return view
