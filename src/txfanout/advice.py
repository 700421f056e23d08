"""Warnings about a valid configuration that cannot work as it is.

A partner whose URL names a host reserved for examples (RFC 2606:
``*.example``, ``*.invalid``, ``example.com``, ``.net``, ``.org``) is a
placeholder: every call to it would fail. A partner with
``adaptive_timeout`` whose ``timeout_ms`` the deadline never leaves it
(``server.deadline_ms`` less ``server.reserve_ms`` is below it) never
adapts: no call of it is evidence. ``check-config`` prints these
warnings and the daemon logs them when it starts; neither refuses the file.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .config import Config

_RESERVED_SUFFIXES = (".example", ".invalid")
_RESERVED_DOMAINS = ("example.com", "example.net", "example.org")


def is_placeholder(host: str) -> bool:
    host = host.rstrip(".").lower()
    return host.endswith(_RESERVED_SUFFIXES) or host in ("example", "invalid") or any(
        host == d or host.endswith("." + d) for d in _RESERVED_DOMAINS)


def warnings(config: Config) -> list[str]:
    """One line per such partner, naming its key."""
    out = []
    longest = config.server.deadline_ms - config.server.reserve_ms
    for name, partner in config.partners.items():
        if partner.adaptive_timeout and partner.timeout_ms > longest:
            out.append(f"partners.{name}.adaptive_timeout: never adapts, as no call gets its "
                       f"whole timeout_ms ({partner.timeout_ms} ms; server.deadline_ms less "
                       f"reserve_ms leaves {longest} ms)")
        host = urlsplit(partner.url).hostname or ""
        if is_placeholder(host):
            out.append(f"partners.{name}.url: {host} is a placeholder host (reserved for "
                       "examples): every call to it fails; give your partner's URL")
    return out
