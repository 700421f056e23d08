"""Connections to partners, counted per upstream (scheme, host, port).

The pool (``HTTPConnectionPool``) keeps idle connections but counts
nothing. The agent's endpoint factory is wrapped so that each new
connection's factory is tagged with its upstream, and the pool's protocols
(pool.PartnerProtocol) count themselves opened and closed on it. Idle
connections are read from the pool when asked; active ones are the open
ones that are not idle.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.defer import Deferred
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from .pool import PartnerClientFactory, PartnerPool, UpstreamKey


def upstream_key(url: str) -> UpstreamKey:
    """The upstream a partner URL's calls go to (the Agent's parse)."""
    uri = URI.fromBytes(url.encode("ascii"))
    return (uri.scheme, uri.host, uri.port)


def upstream_label(key: UpstreamKey) -> str:
    """``scheme://host:port``: the one spelling of an upstream in every
    ``upstream`` label (the URL's host as written, not the resolved IP)."""
    scheme, host, port = key
    name = host.decode("ascii")
    if ":" in name:
        name = f"[{name}]"
    return f"{scheme.decode('ascii')}://{name}:{port}"


class UpstreamConnections:
    """Connections opened to and closed by one upstream, since start."""

    __slots__ = ("key", "label", "opened", "closed")

    def __init__(self, key: UpstreamKey) -> None:
        self.key = key
        self.label = upstream_label(key)
        self.opened = 0
        self.closed = 0


class UpstreamView(NamedTuple):
    """One upstream's connections, as /debug/pool and the metrics show them."""

    upstream: str
    idle: int
    active: int
    opened: int
    closed: int
    max_idle: int


class ConnectionStats:
    """Every upstream's counters, created on first connection (so bounded by
    the partner URLs in the configuration)."""

    def __init__(self) -> None:
        self.upstreams: dict[UpstreamKey, UpstreamConnections] = {}

    def for_key(self, key: UpstreamKey) -> UpstreamConnections:
        counter = self.upstreams.get(key)
        if counter is None:
            counter = self.upstreams[key] = UpstreamConnections(key)
        return counter

    def view(self, pool: PartnerPool) -> list[UpstreamView]:
        """Per upstream: idle, active, opened, closed, and the cap on idle
        connections (sorted by upstream)."""
        out = []
        for key, counter in self.upstreams.items():
            # TLS profiles pool under (scheme, host, port, profile): count them all.
            idle = sum(1 for k, conns in pool.idle_connections().items() if k[:3] == key
                       for c in conns if c.state == "QUIESCENT")
            max_idle = sum(cap for k, cap in pool.idle_caps.items() if k[:3] == key)
            open_now = counter.opened - counter.closed
            out.append(UpstreamView(counter.label, idle, max(0, open_now - idle),
                                    counter.opened, counter.closed,
                                    max_idle or pool.maxPersistentPerHost))
        out.sort(key=lambda row: row.upstream)
        return out


@implementer(IStreamClientEndpoint)
class _TaggingEndpoint:
    __slots__ = ("_endpoint", "_upstream")

    def __init__(self, endpoint: IStreamClientEndpoint, upstream: UpstreamConnections) -> None:
        self._endpoint = endpoint
        self._upstream = upstream

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        if isinstance(factory, PartnerClientFactory):
            factory.upstream = self._upstream
        return self._endpoint.connect(factory)


@implementer(IAgentEndpointFactory)
class CountingEndpoints:
    """Wraps an agent's endpoint factory: every connection it opens is
    tagged with its upstream's counters in ``stats``."""

    def __init__(self, wrapped: IAgentEndpointFactory, stats: ConnectionStats) -> None:
        self._wrapped = wrapped
        self._stats = stats

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        upstream = self._stats.for_key((uri.scheme, uri.host, uri.port))
        return _TaggingEndpoint(self._wrapped.endpointForURI(uri), upstream)
