"""The configuration: one TOML file, validated as a whole.

``load(path)`` returns a :class:`Config` or raises :class:`ConfigError`, whose
``errors`` list names every bad key with its dotted path and the reason, e.g.
``partners.dsp-a.timeout_ms: must be an integer from 1 to 60000``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping
from urllib.parse import urlsplit

from ._compat import tomllib
from .adminauth import listens_on_loopback
from .tls import TLS_VERSIONS, PartnerTLS, TLSSettingError, server_endpoint_problem

OS_NAMES = ("android", "ios", "windows", "macos", "linux", "other")
MAX_FANOUT = 8
MAX_RPS = 1000000

_COUNTRY = re.compile(r"^[A-Za-z]{2}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ROUTE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ABSOLUTE_PATH = re.compile(r"^/[^\0]*$")
_TLS_VERSION = re.compile("^(" + "|".join(re.escape(v) for v in TLS_VERSIONS) + ")$")
TLS_KEYS = ("ca_file", "client_cert", "client_key", "tls_min_version", "tls_verify")
_TOKEN = re.compile(r"^[\x21-\x7e]{16,256}$")


class ConfigError(Exception):
    """A configuration was refused; ``errors`` says why, one line per key."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "tcp:8080:backlog=4096"
    admin: str = "tcp:8081:interface=127.0.0.1"
    deadline_ms: int = 500
    max_inflight: int = 2000
    max_body_bytes: int = 65536
    max_answer_bytes: int = 16 * 1024 * 1024
    deadline_header: str = "X-Fanout-Deadline-Ms"
    reserve_ms: int = 5
    min_call_ms: int = 5
    max_connections: int = 10000
    idle_timeout_ms: int = 30000
    request_timeout_ms: int = 10000
    max_lag_ms: int = 200
    adaptive_inflight: bool = True
    pace_ms: int = 900
    drain_grace_ms: int = 0
    admin_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TargetingConfig:
    country_header: str = "X-Country"
    country_field: str = "device.geo.country"
    os_header: str = "X-OS"
    os_field: str = "device.os"


@dataclass(frozen=True)
class UpstreamConfig:
    idle_timeout_ms: int = 4000


@dataclass(frozen=True)
class LogConfig:
    access_log: str = ""             # path of the JSON-lines access log; "" = none
    access_log_sample: float = 1.0   # share of requests logged (0 < x <= 1)


@dataclass(frozen=True)
class PartnerConfig:
    name: str
    url: str
    timeout_ms: int = 300
    max_concurrency: int = 256
    countries: frozenset[str] | None = None
    exclude_countries: frozenset[str] = frozenset()
    os: frozenset[str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # secrets
    max_response_bytes: int = 1048576
    breaker_failures: int = 5
    breaker_cooldown_ms: int = 5000
    breaker_probes: int = 2
    max_rps: float = 0.0  # calls a second (all processes together); 0 = no cap
    adaptive_timeout: bool = False  # the timeout follows recent latency (adaptive.py)
    tail_sample: float = 0.01  # share of timeouts that run on to measure the tail (tail.py)
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    tls_min_version: str | None = None
    tls_verify: bool = True
    # Built from the keys above at load, for https URLs: the files already read
    # ("derived": not a key of the file, left out of the effective config).
    tls: PartnerTLS | None = field(default=None, compare=False, repr=False,
                                   metadata={"derived": True})

    def matches(self, country: str | None, os_name: str | None) -> bool:
        """True when a request from ``country`` / ``os_name`` may call this
        partner. An unknown country or OS only matches an unrestricted list."""
        if self.countries is not None and country not in self.countries:
            return False
        if country in self.exclude_countries:
            return False
        if self.os is not None and os_name not in self.os:
            return False
        return True


ANSWER_WHEN = ("all", "first_ok")  # or an integer k: see completion.py
MAX_GRACE_MS = 60000


@dataclass(frozen=True)
class RouteConfig:
    name: str
    partners: tuple[str, ...]
    max_partners: int = MAX_FANOUT
    answer_when: str | int = "all"  # when the answer is ready: completion.py
    primary: tuple[str, ...] = ()
    grace_ms: int = 0  # with primary only (and required there)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = ServerConfig()
    targeting: TargetingConfig = TargetingConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    log: LogConfig = LogConfig()
    partners: Mapping[str, PartnerConfig] = field(default_factory=dict)
    routes: Mapping[str, RouteConfig] = field(default_factory=dict)


# -- validation helpers: each returns the cleaned value or records an error --


class _Checker:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, path: str, reason: str) -> None:
        self.errors.append(f"{path}: {reason}")

    def table(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, "must be a table")
            return {}
        return value

    def unknown(self, table: Mapping[str, Any], allowed: set[str], path: str) -> None:
        for key in sorted(set(table) - allowed):
            self.fail(f"{path}.{key}" if path else key, "unknown key")

    def integer(self, value: Any, path: str, low: int, high: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(path, f"must be an integer from {low} to {high}")
            return None
        return int(value)

    def number(self, value: Any, path: str, low: float, high: float,
               note: str = "") -> float | None:
        """An integer or a decimal number from ``low`` to ``high``."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not low <= value <= high:
            self.fail(path, f"must be a number from {low:g} to {high:g}{note}")
            return None
        return float(value)

    def boolean(self, value: Any, path: str) -> bool | None:
        if not isinstance(value, bool):
            self.fail(path, "must be true or false")
            return None
        return value

    def fraction(self, value: Any, path: str) -> float | None:
        """A number in (0, 1]."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 < value <= 1:
            self.fail(path, "must be a number greater than 0 and at most 1")
            return None
        return float(value)

    def path(self, value: Any, path: str) -> str | None:
        """A file path, or "" for none."""
        if not isinstance(value, str) or "\0" in value:
            self.fail(path, "must be a file path (or \"\" for none)")
            return None
        return value

    def string(self, value: Any, path: str, pattern: re.Pattern[str] | None = None,
               what: str = "a string") -> str | None:
        if not isinstance(value, str) or not value or (pattern and not pattern.match(value)):
            self.fail(path, f"must be {what}")
            return None
        return value

    def endpoint(self, value: Any, path: str) -> str | None:
        checked = self.string(value, path, re.compile(r"^[a-z0-9]+:\S+$"),
                              "a Twisted endpoint string such as 'tcp:8080'")
        if checked is not None and checked.startswith("ssl:"):
            problem = server_endpoint_problem(checked)
            if problem:
                self.fail(path, problem)
                return None
        return checked

    def header(self, value: Any, path: str) -> str | None:
        return self.string(value, path, _HEADER_NAME, "an HTTP header name")

    def dotted(self, value: Any, path: str) -> str | None:
        return self.string(value, path, re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"),
                           "a dotted path such as 'device.geo.country'")

    def string_list(self, value: Any, path: str, check: Callable[[str], object],
                    what: str) -> list[str] | None:
        if not isinstance(value, list) or not value:
            self.fail(path, f"must be a non-empty list of {what}")
            return None
        bad = [v for v in value if not isinstance(v, str) or not check(v)]
        if bad:
            self.fail(path, f"must be a non-empty list of {what}; bad: {bad!r}")
            return None
        return value


def _section(chk: _Checker, raw: Mapping[str, Any], name: str, cls: type,
             fields: Mapping[str, Callable[[Any, str], Any]]) -> Any:
    table = chk.table(raw.get(name, {}), name)
    chk.unknown(table, set(fields), name)
    values = {}
    for key, check in fields.items():
        if key in table:
            value = check(table[key], f"{name}.{key}")
            if value is not None:
                values[key] = value
    return cls(**values)


def _partner(chk: _Checker, name: str, raw: Any) -> PartnerConfig | None:
    path = f"partners.{name}"
    if not _NAME.match(name):
        chk.fail(path, "partner names are 1-64 characters of letters, digits, '_', '.', '-'")
    table = chk.table(raw, path)
    allowed = {"url", "timeout_ms", "max_concurrency", "countries", "exclude_countries",
               "os", "headers", "max_response_bytes", "breaker_failures",
               "breaker_cooldown_ms", "breaker_probes", "max_rps", "adaptive_timeout",
               "tail_sample", *TLS_KEYS}
    chk.unknown(table, allowed, path)
    before = len(chk.errors)
    values: dict[str, Any] = {"name": name}

    url = table.get("url")
    if url is None:
        chk.fail(f"{path}.url", "is required")
    elif _check_url(url):
        chk.fail(f"{path}.url", _check_url(url))
    else:
        values["url"] = url
    for key, low, high in (("timeout_ms", 1, 60000), ("max_concurrency", 1, 100000),
                           ("max_response_bytes", 1, 64 * 1024 * 1024),
                           ("breaker_failures", 0, 100000), ("breaker_cooldown_ms", 1, 3600000),
                           ("breaker_probes", 1, 1000)):
        if key in table:
            values[key] = chk.integer(table[key], f"{path}.{key}", low, high)
    if "max_rps" in table:
        values["max_rps"] = chk.number(table["max_rps"], f"{path}.max_rps", 0, MAX_RPS,
                                       " (0: no cap)")
    if "adaptive_timeout" in table:
        values["adaptive_timeout"] = chk.boolean(table["adaptive_timeout"],
                                                 f"{path}.adaptive_timeout")
    if "tail_sample" in table:
        values["tail_sample"] = chk.number(table["tail_sample"], f"{path}.tail_sample", 0, 1,
                                           " (0: off)")
    for key in ("countries", "exclude_countries"):
        if key in table:
            codes = chk.string_list(table[key], f"{path}.{key}", _COUNTRY.match,
                                    "two-letter ISO 3166-1 country codes")
            if codes is not None:
                values[key] = frozenset(c.upper() for c in codes)
    if "countries" in table and "exclude_countries" in table:
        chk.fail(path, "give countries or exclude_countries, not both")
    if "os" in table:
        names = chk.string_list(table["os"], f"{path}.os", lambda v: v.lower() in OS_NAMES,
                                "OS names (" + ", ".join(OS_NAMES) + ")")
        if names is not None:
            values["os"] = frozenset(v.lower() for v in names)
    if "headers" in table:
        headers = chk.table(table["headers"], f"{path}.headers")
        for key, value in headers.items():
            hpath = f"{path}.headers.{key}"
            if not _HEADER_NAME.match(key):
                chk.fail(hpath, "is not a valid HTTP header name")
            elif not isinstance(value, str) or any(c in value for c in "\r\n\0"):
                chk.fail(hpath, "must be a string without CR, LF or NUL")
        values["headers"] = dict(headers)
    if "url" in values:
        _partner_tls(chk, path, table, values)
    if len(chk.errors) > before:
        return None
    return PartnerConfig(**values)


def _partner_tls(chk: _Checker, path: str, table: Mapping[str, Any],
                 values: dict[str, Any]) -> None:
    """Check a partner's TLS keys and, for an https URL, read its files and
    build its :class:`PartnerTLS` into ``values``."""
    parts = urlsplit(values["url"])
    if parts.scheme != "https":
        for key in TLS_KEYS:
            if key in table:
                chk.fail(f"{path}.{key}", "only applies to https:// URLs")
        return
    before = len(chk.errors)
    for key in ("ca_file", "client_cert", "client_key"):
        if key in table:
            values[key] = chk.string(table[key], f"{path}.{key}", _ABSOLUTE_PATH,
                                     "an absolute file path")
    if "tls_min_version" in table:
        values["tls_min_version"] = chk.string(
            table["tls_min_version"], f"{path}.tls_min_version", _TLS_VERSION,
            "one of " + ", ".join(f'"{v}"' for v in TLS_VERSIONS))
    if "tls_verify" in table:
        if isinstance(table["tls_verify"], bool):
            values["tls_verify"] = table["tls_verify"]
        else:
            chk.fail(f"{path}.tls_verify", "must be true or false")
    for given, needed in (("client_cert", "client_key"), ("client_key", "client_cert")):
        if given in table and needed not in table:
            chk.fail(f"{path}.{needed}", f"is required with {given}")
    if "ca_file" in table and table.get("tls_verify") is False:
        chk.fail(f"{path}.ca_file", "has no use with tls_verify = false")
    if len(chk.errors) > before:
        return
    try:
        values["tls"] = PartnerTLS(
            parts.hostname or "", ca_file=values.get("ca_file"),
            client_cert=values.get("client_cert"), client_key=values.get("client_key"),
            min_version=values.get("tls_min_version"), verify=values.get("tls_verify", True))
    except TLSSettingError as e:
        chk.fail(f"{path}.{e.key}", e.reason)


def _check_url(url: Any) -> str:
    """The reason ``url`` is not a usable partner URL, or '' when it is."""
    if not isinstance(url, str):
        return "must be a string"
    if not url.isascii():
        return "must be ASCII (percent-encode the path, use the punycode host name)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        return f"is not a valid URL ({e})"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "has no host"
    if parts.username or parts.password:
        return "must not carry credentials; use headers"
    if parts.fragment or any(c.isspace() for c in url):
        return "must not contain a fragment or white space"
    return ""


def _partner_names(chk: _Checker, value: Any, path: str, known: Collection[str],
                   unknown: str) -> list[str] | None:
    """A list of partner names, each once and each in ``known`` (else the
    error ``unknown``, formatted with the name)."""
    names = chk.string_list(value, path, lambda v: True, "partner names")
    if names is not None:
        for n in names:
            if n not in known:
                chk.fail(path, unknown.format(n))
        if len(set(names)) != len(names):
            chk.fail(path, "lists a partner twice")
    return names


def _route(chk: _Checker, name: str, raw: Any, partners: Mapping[str, Any]) -> RouteConfig | None:
    path = f"routes.{name}"
    if not _ROUTE.match(name):
        chk.fail(path, "route names are 1-64 characters of letters, digits, '_', '.', '-'")
    table = chk.table(raw, path)
    chk.unknown(table, {"partners", "max_partners", "answer_when", "primary", "grace_ms"},
                path)
    before = len(chk.errors)
    names = _partner_names(chk, table.get("partners"), f"{path}.partners", partners,
                           "unknown partner {!r}")
    max_partners: int | None = MAX_FANOUT
    if "max_partners" in table:
        max_partners = chk.integer(table["max_partners"], f"{path}.max_partners", 1, MAX_FANOUT)
    if len(chk.errors) > before or names is None or max_partners is None:
        return None
    early = _route_completion(chk, path, table, names, max_partners)
    if len(chk.errors) > before:
        return None
    return RouteConfig(name=name, partners=tuple(names), max_partners=max_partners, **early)


def _route_completion(chk: _Checker, path: str, table: Mapping[str, Any],
                      names: list[str], max_partners: int) -> dict[str, Any]:
    """A route's ``answer_when``, ``primary`` and ``grace_ms``, checked
    against its partners (see completion.py for what they mean)."""
    values: dict[str, Any] = {}
    callable_at_once = min(len(names), max_partners)
    when = table.get("answer_when", "all")
    if isinstance(when, bool) or not (when in ANSWER_WHEN or isinstance(when, int)) \
            or isinstance(when, int) and not 1 <= when <= MAX_FANOUT:
        chk.fail(f"{path}.answer_when",
                 f'must be "all", "first_ok" or an integer from 1 to {MAX_FANOUT}')
    elif isinstance(when, int) and when > callable_at_once:
        chk.fail(f"{path}.answer_when", f"must be at most the number of partners the route "
                                        f"calls at once ({callable_at_once})")
    else:
        values["answer_when"] = when
    if "primary" in table:
        primary = _partner_names(chk, table["primary"], f"{path}.primary", names,
                                 "{!r} is not one of the route's partners")
        if primary is not None:
            values["primary"] = tuple(primary)
        if when != "all":
            chk.fail(f"{path}.primary", 'cannot be combined with answer_when other than "all"')
        if "grace_ms" not in table:
            chk.fail(f"{path}.grace_ms", "is required with primary")
    if "grace_ms" in table:
        if "primary" not in table:
            chk.fail(f"{path}.grace_ms", "only applies with primary")
        values["grace_ms"] = chk.integer(table["grace_ms"], f"{path}.grace_ms", 0, MAX_GRACE_MS)
    return values


def parse(raw: Mapping[str, Any]) -> Config:
    """Validate a decoded TOML document; raise :class:`ConfigError` listing
    every problem."""
    chk = _Checker()
    chk.unknown(raw, {"server", "targeting", "upstream", "log", "partners", "routes"}, "")
    server = _section(chk, raw, "server", ServerConfig, {
        "listen": chk.endpoint,
        "admin": chk.endpoint,
        "deadline_ms": lambda v, p: chk.integer(v, p, 10, 60000),
        "max_inflight": lambda v, p: chk.integer(v, p, 1, 1000000),
        "max_body_bytes": lambda v, p: chk.integer(v, p, 0, 64 * 1024 * 1024),
        "max_answer_bytes": lambda v, p: chk.integer(v, p, 65536, 1024 * 1024 * 1024),
        "deadline_header": chk.header,
        "reserve_ms": lambda v, p: chk.integer(v, p, 0, 10000),
        "min_call_ms": lambda v, p: chk.integer(v, p, 1, 10000),
        "max_connections": lambda v, p: chk.integer(v, p, 1, 1000000),
        "idle_timeout_ms": lambda v, p: chk.integer(v, p, 100, 3600000),
        "request_timeout_ms": lambda v, p: chk.integer(v, p, 100, 600000),
        "max_lag_ms": lambda v, p: chk.integer(v, p, 0, 60000),
        "adaptive_inflight": chk.boolean,
        "pace_ms": lambda v, p: chk.integer(v, p, 0, 999),
        "drain_grace_ms": lambda v, p: chk.integer(v, p, 0, 60000),
        "admin_token": lambda v, p: chk.string(v, p, _TOKEN, "16 to 256 printable ASCII "
                                                             "characters without spaces"),
    })
    token_given = isinstance(raw.get("server"), dict) and "admin_token" in raw["server"]
    if not token_given and not listens_on_loopback(server.admin):
        chk.fail("server.admin_token", "is required when server.admin listens beyond "
                                       "loopback (a unix socket or a 127.0.0.1/::1 interface)")
    if server.reserve_ms + server.min_call_ms >= server.deadline_ms:
        chk.fail("server.deadline_ms", "must exceed reserve_ms + min_call_ms")
    targeting = _section(chk, raw, "targeting", TargetingConfig, {
        "country_header": chk.header,
        "country_field": chk.dotted,
        "os_header": chk.header,
        "os_field": chk.dotted,
    })
    upstream = _section(chk, raw, "upstream", UpstreamConfig, {
        "idle_timeout_ms": lambda v, p: chk.integer(v, p, 100, 3600000),
    })
    log = _section(chk, raw, "log", LogConfig, {
        "access_log": chk.path,
        "access_log_sample": chk.fraction,
    })
    raw_partners = chk.table(raw.get("partners", {}), "partners")
    partners = {}
    for name, value in raw_partners.items():
        partner = _partner(chk, name, value)
        if partner is not None:
            partners[name] = partner
    raw_routes = chk.table(raw.get("routes", {}), "routes")
    if not raw_routes:
        chk.fail("routes", "at least one route is required")
    routes = {}
    for name, value in raw_routes.items():
        route = _route(chk, name, value, raw_partners)
        if route is not None:
            routes[name] = route
    if chk.errors:
        raise ConfigError(chk.errors)
    return Config(server=server, targeting=targeting, upstream=upstream, log=log,
                  partners=partners, routes=routes)


def read(path: str) -> dict[str, Any]:
    """Decode the TOML file at ``path`` (not yet validated)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read ({e.strerror or e})"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not valid TOML ({e})"]) from None


def with_server_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with ``[server]`` keys replaced by ``overrides`` (the plugin's
    options, which win over the file); values that are None are ignored."""
    merged = dict(raw)
    server = merged.get("server", {})
    if isinstance(server, dict):
        server = dict(server)
        server.update({k: v for k, v in overrides.items() if v is not None})
        merged["server"] = server
    return merged


def load(path: str, overrides: Mapping[str, Any] = {}) -> Config:
    """Read and validate the TOML file at ``path``, options applied."""
    return parse(with_server_overrides(read(path), overrides))
