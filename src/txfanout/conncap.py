"""A cap on a Site's open connections (the public face's; the admin face
makes room at its cap instead, see admin.AdminSite).

At the cap the site's listening ports stop accepting: newcomers wait in the
kernel's backlog (its size bounds them) until a connection closes. Twisted
accepts connections in batches, so those of a batch past the cap are closed
at once.
"""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Site


def _listening_port(transport: Any) -> Any:
    """The listening port a connection was accepted on (through TLS too)."""
    while transport is not None:
        port = getattr(transport, "server", None)
        if port is not None:
            return port
        transport = getattr(transport, "transport", None)
    return None


class CappedChannel(HTTPChannel):
    """An HTTP channel that reports its opening and closing to its
    :class:`CappedSite`."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.connection_opened(self.transport)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.site.connection_closed()


class CappedSite(Site):
    """A Site that keeps at most ``max_connections`` connections open (a
    subclass sets it, or makes it a property read at each connection, so
    that a reload can change it)."""

    protocol = CappedChannel
    max_connections: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_connections = 0
        self._paused_ports: set[Any] = set()

    def buildProtocol(self, addr: Any) -> Any:
        if self.open_connections >= self.max_connections:
            return None  # Twisted closes it at once
        return super().buildProtocol(addr)

    def connection_opened(self, transport: Any) -> None:
        self.open_connections += 1
        if self.open_connections >= self.max_connections:
            port = _listening_port(transport)
            if port is not None and port not in self._paused_ports:
                port.stopReading()
                self._paused_ports.add(port)

    def connection_closed(self) -> None:
        self.open_connections -= 1
        if self._paused_ports and self.open_connections < self.max_connections:
            for port in self._paused_ports:
                if port.connected:
                    port.startReading()
            self._paused_ports.clear()
