"""Real loopback sockets: a gateway listening on a free port, and raw clients
for it (for the tests where the socket itself is under test)."""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ClientFactory, Protocol

from txfanout.config import parse
from txfanout.gateway import Gateway
from txfanout.site import GatewaySite

from .partners import take_message


def closed_all(site: Any) -> Deferred[None]:
    """Fires once ``site`` (a gateway's or a partner's) has seen every
    connection to it closed: now, or at a later ``connection_closed``. The
    far end of a close is seen a turn or more after the near end's."""
    done: Deferred[None] = Deferred()
    if site.open_connections == 0:
        done.callback(None)
        return done
    closed = site.connection_closed

    def watch() -> None:
        closed()
        if site.open_connections == 0:
            del site.connection_closed  # the class's again
            done.callback(None)

    site.connection_closed = watch
    return done


def within(d: Any, seconds: float = 5.0) -> Deferred[Any]:
    """``d`` (a Deferred or coroutine), failing with TimeoutError after
    ``seconds`` instead of hanging."""
    if not isinstance(d, Deferred):
        d = Deferred.fromCoroutine(d)
    return d.addTimeout(seconds, reactor)


class RawClient(Protocol):
    """Writes bytes, collects what comes back; ``closed`` fires with it all
    when the server closes the connection."""

    def __init__(self, data: bytes, hang_up: bool = False) -> None:
        self.data = data
        self.hang_up = hang_up
        self.received = bytearray()  # not bytes: += on bytes copies it all each time
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        if self.data:
            self.transport.write(self.data)
        if self.hang_up:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(bytes(self.received))


class KeepAliveClient(Protocol):
    """One persistent connection: ``request(raw)`` sends bytes and fires with
    the next complete response (head and Content-Length body)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.waiting: list[Deferred[bytes]] = []
        self.closed: Deferred[bytes] = Deferred()

    def request(self, raw: bytes) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.waiting.append(d)
        self.transport.write(raw)
        return d

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while self.waiting:
            message = take_message(self.buffer)
            if message is None:
                return
            head, body, self.buffer = message
            self.waiting.pop(0).callback(head + b"\r\n\r\n" + body)

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(self.buffer)


async def keep_alive_client(address: tuple[str, int]) -> KeepAliveClient:
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    client = KeepAliveClient()
    await connectProtocol(TCP4ClientEndpoint(reactor, *address), client)
    return client


def raw_client(address: tuple[str, int], data: bytes, hang_up: bool = False) -> RawClient:
    """Connect to ``address`` and send ``data`` as is (then hang up at once
    with ``hang_up``)."""
    client = RawClient(data, hang_up)
    reactor.connectTCP(*address, ClientFactory.forProtocol(lambda: client))
    return client


class Answer:
    """A response from the gateway, body read and decoded."""

    def __init__(self, code: int, headers: Any, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def outcomes(self) -> dict[str, str]:
        return {r["partner"]: r["outcome"] for r in self.json["results"]}


class GatewayUnderTest:
    """A Gateway on 127.0.0.1:<free port> in the test's reactor; ``stop()``
    closes what the test left connected, so no later test meets it."""

    def __init__(self, raw_config: dict[str, Any]) -> None:
        self.config = parse(raw_config)
        self.gateway = Gateway(reactor, self.config)
        self.site = GatewaySite(self.gateway)
        self.site.buildProtocol = self._build_channel  # type: ignore[method-assign]
        self.channels: dict[Any, Deferred[None]] = {}  # open ones, with their loss
        self.port = reactor.listenTCP(0, self.site, backlog=1024, interface="127.0.0.1")
        self.site.listening(self.port)

    def _build_channel(self, addr: Any) -> Any:
        channel = GatewaySite.buildProtocol(self.site, addr)
        if channel is None:  # past max_connections: Twisted closes it at once
            return None
        lost: Deferred[None] = Deferred()
        self.channels[channel] = lost
        connection_lost = channel.connectionLost

        def lose(reason: Any) -> None:
            connection_lost(reason)
            del self.channels[channel]
            lost.callback(None)

        channel.connectionLost = lose
        return channel

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port.getHost().port)

    def url(self, path: str = "/bid") -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}{path}"

    async def post(self, path: str = "/bid", body: bytes = b"{}",
                   headers: dict[str, str] | None = None, method: str = "POST") -> Answer:
        response = await within(treq.request(method, self.url(path), data=body,
                                             headers=headers or {}, persistent=False))
        content = await within(treq.content(response))
        return Answer(response.code, response.headers, content)

    async def stop(self) -> None:
        await self.port.stopListening()
        lost = list(self.channels.values())
        for channel in list(self.channels):
            channel.transport.abortConnection()
        await gatherResults(lost)
        await self.gateway.close()
