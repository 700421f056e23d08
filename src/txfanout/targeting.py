"""Who calls whom: the user's country and OS, and the partners they select.

The selection is a table compiled once per configuration: (route, country,
OS) -> partners, so a request costs two dict look-ups, not a loop over rules.
"""

from __future__ import annotations

from typing import Any

from twisted.web.http_headers import Headers

from .config import OS_NAMES, Config, PartnerConfig, TargetingConfig

_OS_ALIASES = {
    "ipados": "ios", "iphone os": "ios", "iphoneos": "ios",
    "mac": "macos", "macosx": "macos", "mac os x": "macos", "mac os": "macos", "osx": "macos",
    "os x": "macos", "win": "windows", "win32": "windows", "win64": "windows",
}
_OS_KNOWN = frozenset(OS_NAMES)
_MAX_OS_LEN = 32


class BadTargeting(ValueError):
    """A country or OS value in the request is malformed (answered with 400)."""


def parse_country(value: Any, source: str) -> str:
    """A two-letter country code, upper-cased, or :class:`BadTargeting`."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str) or len(value) != 2 or not value.isascii() \
            or not value.isalpha():
        raise BadTargeting(f"{source} must be a two-letter ISO 3166-1 country code")
    return value.upper()


def parse_os(value: Any, source: str) -> str:
    """One of OS_NAMES; an unrecognised but well-formed name is 'other'."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_OS_LEN \
            or not value.isascii() or not value.isprintable():
        raise BadTargeting(f"{source} must be an OS name of at most {_MAX_OS_LEN} printable "
                           "ASCII characters")
    name = value.strip().lower()
    if name in _OS_KNOWN:
        return name
    return _OS_ALIASES.get(name, "other")


def os_from_user_agent(user_agent: bytes | None) -> str:
    """A best guess of the OS from a User-Agent header; 'other' when unsure."""
    if not user_agent:
        return "other"
    ua = user_agent[:512].lower()
    if b"android" in ua:
        return "android"
    if b"iphone" in ua or b"ipad" in ua or b"ipod" in ua:
        return "ios"
    if b"windows" in ua:
        return "windows"
    if b"macintosh" in ua or b"mac os x" in ua:
        return "macos"
    if b"linux" in ua or b"x11" in ua:
        return "linux"
    return "other"


def json_field(document: Any, path: tuple[str, ...]) -> Any:
    """The value at a dotted path in a decoded JSON document, or None."""
    for key in path:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


class Selector:
    """The compiled partner table of one configuration."""

    def __init__(self, config: Config) -> None:
        partners = config.partners
        countries: set[str | None] = {None}
        for p in partners.values():
            countries.update(p.countries or ())
            countries.update(p.exclude_countries)
        self._countries = frozenset(countries)
        self._tables: dict[str, dict[tuple[str | None, str], tuple[PartnerConfig, ...]]] = {}
        for route in config.routes.values():
            candidates = [partners[name] for name in route.partners]
            table = {}
            for country in countries:
                for os_name in OS_NAMES:
                    chosen = [p for p in candidates if p.matches(country, os_name)]
                    table[(country, os_name)] = tuple(chosen[:route.max_partners])
            self._tables[route.name] = table

    def has_route(self, route: str) -> bool:
        return route in self._tables

    def select(self, route: str, country: str | None, os_name: str) -> tuple[PartnerConfig, ...]:
        """The partners to call, in priority order. A country that no partner
        names behaves like an unknown one."""
        if country not in self._countries:
            country = None
        return self._tables[route][(country, os_name)]


class Targeting:
    """Where a request says its country and OS (configurable header, else a
    JSON field of its body; the OS, failing both, from its User-Agent)."""

    __slots__ = ("_config", "_country_header", "_country_path", "_os_header", "_os_path")

    def __init__(self, config: TargetingConfig) -> None:
        self._config = config
        self._country_header = config.country_header.encode("ascii")
        self._country_path = tuple(config.country_field.split("."))
        self._os_header = config.os_header.encode("ascii")
        self._os_path = tuple(config.os_field.split("."))

    def resolve(self, headers: Headers, document: Any) -> tuple[str | None, str]:
        """(country or None, OS) of a request; :class:`BadTargeting` when a
        value it gives is malformed."""
        t = self._config
        country: str | None = None
        raw = headers.getRawHeaders(self._country_header)
        if raw is not None:
            country = parse_country(raw[-1], t.country_header)
        else:
            value = json_field(document, self._country_path)
            if value is not None:
                country = parse_country(value, t.country_field)
        raw = headers.getRawHeaders(self._os_header)
        if raw is not None:
            return country, parse_os(raw[-1], t.os_header)
        value = json_field(document, self._os_path)
        if value is not None:
            return country, parse_os(value, t.os_field)
        return country, os_from_user_agent(headers.getRawHeaders(b"User-Agent", [b""])[0])
