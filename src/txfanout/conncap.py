"""Accept: how many new connections the public face takes (the admin face
makes room at its cap instead, see admin.AdminSite).

A site accepts while it has ``room()``: under ``max_connections`` open
connections, and whatever else a subclass counts (the public face: free
in-flight slots, see site.py). With no room its listening ports stop
accepting: newcomers wait in the kernel's backlog (its size bounds them),
costing nothing, instead of being accepted, read and refused at once, over
and over, by clients that retry at once. With room, a port takes at most
that many connections per batch (Twisted's ``Port.numberAccepts``), and
never more than ``ACCEPT_BATCH``, so that a flood of new connections is
taken over several turns of the event loop rather than in one long one; a
connection a batch takes past ``max_connections`` anyway is closed at once.

The site learns its ports from ``listening(port)``, which the listener (or
a test) calls once the port is up.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Site

from . import _twisted

ACCEPT_BATCH = 128


class CappedChannel(HTTPChannel):
    """An HTTP channel that reports its opening and closing to its
    :class:`CappedSite`."""

    site: CappedSite

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.connection_opened()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.site.connection_closed()


class CappedSite(Site):
    """A Site that accepts only while it has ``room()`` (see the module)."""

    # Twisted types it as its HTTP/2-or-1.1 wrapper; any HTTPChannel class serves.
    protocol = CappedChannel  # type: ignore[assignment]

    @property
    def max_connections(self) -> int:
        """Open connections the site serves at most."""
        raise NotImplementedError

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_connections = 0
        self.ports: list[Any] = []
        self._paused = False

    def listening(self, port: Any) -> None:
        """Accept on ``port`` (a listening port of this site) as room allows."""
        self.ports.append(port)
        if self._paused:  # paused before this port listened: it joins the pause
            port.stopReading()
        self.sync_accepting()

    def room(self) -> int:
        """Connections the site takes now."""
        return self.max_connections - self.open_connections

    def sync_accepting(self) -> None:
        """Pause or resume the ports for the room there is now."""
        room = self.room()
        if room <= 0:
            if not self._paused:
                self._paused = True
                for port in self.ports:
                    port.stopReading()
            return
        batch = min(room, ACCEPT_BATCH)
        for port in self.ports:
            _twisted.set_accept_batch(port, batch)
        if self._paused:
            self._paused = False
            for port in self.ports:
                if port.connected:
                    port.startReading()

    def buildProtocol(self, addr: Any) -> Any:
        if self.open_connections >= self.max_connections:
            return None  # Twisted closes it at once
        return super().buildProtocol(addr)

    def connection_opened(self) -> None:
        self.open_connections += 1
        self.sync_accepting()

    def connection_closed(self) -> None:
        self.open_connections -= 1
        self.sync_accepting()
