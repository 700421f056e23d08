"""Configurations the tests build (as the parsed TOML would be)."""

from __future__ import annotations

from typing import Any


def route_config(partners: dict[str, dict[str, Any]], **server: Any) -> dict[str, Any]:
    """A config with one route 'bid' calling ``partners`` in order."""
    return {"server": server, "partners": partners,
            "routes": {"bid": {"partners": list(partners)}}}
