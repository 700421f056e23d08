"""A gateway on a fake reactor, and in-memory connections to and from it:
for tests of time and bytes inside one process (exact and instant).

Two levels:

* ``full_gateway`` and ``connect``: a gateway's site on a
  ``MemoryReactorClock`` and one channel on a ``StringTransport``, driven by
  hand (``channel.dataReceived``, ``clock.advance``).
* :class:`Network`: a fake reactor (a ``MemoryReactorClock``) and every
  TCP connection on it in memory (iosim's ``FakeTransport`` at each end,
  see :class:`Pipe`). Clients the test makes reach the sites listening on
  it through an accept queue that honours the site's ``stopReading`` and
  ``numberAccepts`` (the kernel's backlog); the connections the gateway's
  pool opens (``reactor.connectTCP``) reach the partners listening on it
  (``partners.PartnerServer``, ``rawpartners.RawPartner``), or are refused.
  ``run()`` goes turn by turn as a reactor does, the timers due then the
  I/O, until nothing moves; ``advance(s)`` and ``until(condition)`` move time
  from one timer to the next; ``busy(s)``, called from a callback, is a long
  turn. What happens in a real reactor happens here in the same order,
  without waiting, and every time the same way.
"""

from __future__ import annotations

import bisect
import socket
from collections import deque
from typing import Any, Callable

from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionAborted, ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport
from twisted.web.http_headers import Headers

from txfanout.config import parse
from txfanout.gateway import Gateway
from txfanout.site import GatewaySite

from .configs import route_config
from .loopback import Answer
from .partners import PartnerServer, take_message
from .rawpartners import RawPartner


def no_jitter() -> float:
    """A site's ``draw`` here: every pacing hold its full length, exactly."""
    return 0.0


def full_gateway(max_inflight: int = 1, **server: Any
                 ) -> tuple[MemoryReactorClock, Gateway, GatewaySite]:
    """A gateway on a fake reactor with every in-flight slot taken
    (``server``: more [server] keys)."""
    clock = MemoryReactorClock()
    gateway = Gateway(clock, parse(route_config({"p": {"url": "http://127.0.0.1:9/"}},
                                                max_inflight=max_inflight, **server)))
    site = GatewaySite(gateway, reactor=clock, draw=no_jitter)
    for _ in range(max_inflight):
        assert gateway.admission.admit() is None
    return clock, gateway, site


def connect(site: GatewaySite) -> tuple[Any, StringTransport]:
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def answer(transport: StringTransport) -> bytes:
    """What the gateway wrote since the last call, then forgets it."""
    data = transport.value()
    transport.clear()
    return data


class FakePort:
    """A listening port as the accept gate drives it."""

    def __init__(self) -> None:
        self.reading = True
        self.connected = True
        self.numberAccepts = 100

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


# -- the in-memory network ----------------------------------------------------

READ_SIZE = 65536
"""The most a TCP transport reads in one go (Twisted's ``bufferSize``): what
is sent is delivered in pieces of at most this, as from a socket."""


class Pipe(FakeTransport):
    """One end of an in-memory TCP connection: iosim's ``FakeTransport``,
    plus what the gateway relies on in a TCP transport. ``pauseProducing``
    stops reading (what arrives waits, as in the kernel's buffer, until
    ``resumeProducing``); ``abortConnection`` drops what is unsent and the
    peer sees a reset (``ConnectionLost``), the aborting side a
    ``ConnectionAborted``; a close reaches the peer once it has read what
    came before it. ``getHandle`` is a real socket whose buffer shows what
    this end has not read yet, for the code that peeks at the kernel."""

    def __init__(self, protocol: Any, is_server: bool, host: IPv4Address,
                 peer: IPv4Address, kernels: list[Any] | None = None) -> None:
        super().__init__(protocol, is_server, hostAddress=host, peerAddress=peer)
        self.reading = True
        self.held: list[bytes] = []  # arrived while not reading
        self.aborted = False
        self.fin = False  # the peer closed; not yet seen by this end
        self.other: Pipe | None = None
        self._kernels = kernels  # where socket pairs are kept, to be closed
        self._kernel: tuple[socket.socket, socket.socket] | None = None
        self._signalled = self._fin_signalled = False

    def getHandle(self) -> socket.socket | None:
        """One end of a socket pair whose receive buffer holds a byte while
        bytes sent to this end wait unread, and the peer's FIN once the peer
        closed (not yet seen): what pool.unread_bytes and pool.peer_closed
        peek at. Made when first asked for, brought up to date when asked."""
        if self.disconnected or self._kernels is None:
            return None
        if self._kernel is None:
            self._kernel = socket.socketpair()
            self._kernels.append(self._kernel)
        mine, far = self._kernel
        waiting = self.unread() > 0
        if waiting and not self._signalled and not self._fin_signalled:
            far.send(b"x")
            self._signalled = True
        elif not waiting and self._signalled:
            mine.recv(1)
            self._signalled = False
        if self.fin and not self._fin_signalled:
            far.shutdown(socket.SHUT_WR)
            self._fin_signalled = True
        return mine

    @property
    def connected(self) -> bool:
        return not self.disconnected

    @property
    def producerState(self) -> str:
        return "producing" if self.reading else "paused"

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True

    def stopProducing(self) -> None:
        self.loseConnection()

    def abortConnection(self) -> None:
        if self.disconnected:
            return
        self.aborted = True
        self.stream = []
        self.disconnectReason = ConnectionAborted()
        if self.other is not None:
            self.other.disconnectReason = ConnectionLost()
        self.disconnecting = True

    def send_now(self, data: bytes) -> None:
        """Put ``data`` in the peer's buffer at once, as a write straight to
        the socket does: an abort that follows does not drop it."""
        if self.other is not None and not self.other.disconnected and not self.disconnecting:
            self.other.held.append(data)

    def bufferReceived(self, buf: Any) -> None:
        if self.disconnected or self.disconnecting:
            return  # closed, or closing (a closing transport reads no more)
        if isinstance(buf, bytes) and (self.held or not self.reading):
            self.held.append(buf)
            return
        super().bufferReceived(buf)

    def release(self) -> bool:
        """Hand what waited to the protocol (one read's worth), if it reads."""
        if not (self.held and self.reading) or self.disconnecting or self.disconnected:
            return False
        waiting = b"".join(self.held)
        data, rest = waiting[:READ_SIZE], waiting[READ_SIZE:]
        self.held = [rest] if rest else []
        self.protocol.dataReceived(data)
        return True

    def unread(self) -> int:
        """Bytes the peer sent that this end has not read yet."""
        waiting = sum(len(b) for b in self.held)
        if self.other is not None:
            waiting += sum(len(b) for b in self.other.stream)
        return waiting


class Link:
    """One in-memory TCP connection: two :class:`Pipe` ends, pumped by the
    :class:`Network` (iosim's IOPump, with reading paused and closes in
    order)."""

    def __init__(self, client: Pipe, server: Pipe | None = None) -> None:
        self.client = client
        self.server = server
        self.port: ListeningPort | None = None  # where it was accepted

    def attach(self, server: Pipe) -> None:
        self.server = server
        self.client.other, server.other = server, self.client

    def pump(self) -> bool:
        server = self.server
        if server is None:
            return False  # waiting in the backlog: the client's bytes wait too
        moved = False
        for src, dst in ((self.client, server), (server, self.client)):
            data = src.getOutBuffer()
            if isinstance(data, bytes):
                for start in range(0, len(data), READ_SIZE):
                    dst.bufferReceived(data[start:start + READ_SIZE])
                moved = moved or bool(data)
            elif data is not None:  # iosim's TLS negotiation
                dst.bufferReceived(data)
                moved = True
        moved = self.client.release() | server.release() | moved
        if moved:
            return True
        for end in (self.client, server):
            if end.disconnecting and not end.disconnected:
                # It closed (or aborted): it learns so now, its peer once it
                # has read what was sent before the close.
                end.disconnected = True
                end.other.fin = True  # type: ignore[union-attr]
                end.reportDisconnect()
                return True
        for end in (self.client, server):
            if end.fin and not end.disconnected and end.reading and not end.held:
                end.disconnecting = end.disconnected = True
                end.reportDisconnect()
                return True
        return False

    @property
    def done(self) -> bool:
        return self.server is not None and self.client.disconnected and self.server.disconnected


class ListeningPort:
    """A port listening on the network: an accept queue (the kernel's
    backlog), taken ``numberAccepts`` at a time while reading, as a Twisted
    TCP port does."""

    def __init__(self, net: "Network", factory: Any, host: str, port: int) -> None:
        self.net = net
        self.factory = factory
        self.address = IPv4Address("TCP", host, port)
        self.backlog: deque[tuple[Link, Protocol]] = deque()
        self.reading = True
        self.connected = True
        self.numberAccepts = 100
        self.accepted = 0

    def getHost(self) -> IPv4Address:
        return self.address

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True

    def stopListening(self) -> None:
        self.connected = False
        self.net.ports.pop((self.address.host, self.address.port), None)

    def accept(self) -> bool:
        """One read of the listening socket, as Twisted's ``Port.doRead``
        does it: a batch of up to ``numberAccepts``, each built by the
        factory (or closed at once when it builds none), whatever
        ``stopReading`` says during the batch."""
        if not (self.reading and self.backlog):
            return False
        taken = 0
        for _ in range(self.numberAccepts):
            if not self.backlog:
                break
            link, _ = self.backlog.popleft()
            link.port = self
            taken += 1
            self.accepted += 1
            peer = link.client.hostAddress
            protocol = self.factory.buildProtocol(peer)
            server = Pipe(protocol if protocol is not None else Protocol(), True,
                          self.address, peer, self.net.kernels)
            link.attach(server)
            if protocol is None:  # refused by the factory: closed at once
                server.disconnecting = True
            else:
                protocol.makeConnection(server)
        return taken > 0


EPOCH = 1_000_000.0
"""When a Network's clock starts. Not 0, which a real reactor's clock never
reads, and which code may take for "no time" (site.GatewayRequest.process
did: ``arrived or now``)."""


class Endpoint:
    """A server endpoint on a :class:`Network` (what a listener is given):
    ``listen(factory)`` listens on a new port of the network."""

    def __init__(self, net: "Network") -> None:
        self.net = net

    def listen(self, factory: Any) -> Deferred[ListeningPort]:
        return succeed(self.net.listen(factory))


class FakeReactor(MemoryReactorClock):
    """A MemoryReactorClock whose ``callLater`` inserts the new call in
    order instead of sorting every pending call again (Clock does): with a
    thousand timers pending, the sorting was most of a test's time."""

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> DelayedCall:
        call = DelayedCall(self.seconds() + delay, callable, args, kw, self.calls.remove,
                           lambda c: None, self.seconds)
        bisect.insort_right(self.calls, call)  # DelayedCall orders by time (Python 3.9: no key=)
        return call

    def pretend_running(self) -> None:
        """Running, and not stopped: what ``run`` would do, without
        returning at once (MemoryReactor's does; and Twisted 25.5's starts
        out with ``hasStopped`` already true)."""
        self.running = True
        self.hasStopped = False

    def callWhenRunning(self, callable: Any, *args: Any, **kw: Any) -> None:
        """At once when running, as a real reactor does (Twisted 25's
        MemoryReactor only records it)."""
        if self.running:
            callable(*args, **kw)
        else:
            super().callWhenRunning(callable, *args, **kw)


class Network:
    """A fake reactor (``clock``, starting at :data:`EPOCH`) and the
    in-memory connections on it; see the module's docstring."""

    def __init__(self) -> None:
        self.clock = FakeReactor()
        self.clock.advance(EPOCH)
        self.ports: dict[tuple[str, int], ListeningPort] = {}
        self.links: list[Link] = []  # open, or closing
        self.history: list[Link] = []  # every connection made
        self.kernels: list[tuple[socket.socket, socket.socket]] = []  # see Pipe.getHandle
        self._next_port = 20000
        self._servers_seen = 0  # of clock.tcpServers

    def _port_number(self) -> int:
        self._next_port += 1
        return self._next_port

    def listen(self, factory: Any, port: int | None = None,
               host: str = "127.0.0.1") -> ListeningPort:
        listening = ListeningPort(self, factory, host, port or self._port_number())
        self.ports[host, listening.address.port] = listening
        return listening

    def connect(self, address: tuple[str, int], protocol: Protocol) -> Link:
        """A client connection to ``address``: connected at once (the kernel
        completes the handshake), read by the server once it is accepted."""
        local = IPv4Address("TCP", "127.0.0.1", self._port_number())
        client = Pipe(protocol, False, local, IPv4Address("TCP", *address), self.kernels)
        link = Link(client)
        listening = self.ports.get(address)
        assert listening is not None, f"nothing listens on {address}"
        self.links.append(link)
        self.history.append(link)
        protocol.makeConnection(client)
        listening.backlog.append((link, protocol))
        return link

    def links_to(self, port: ListeningPort) -> list[Link]:
        """Every connection ``port`` accepted (closed ones too), in order."""
        return [link for link in self.history if link.port is port]

    def _dial(self) -> bool:
        """Ports the code under test listened on (``reactor.listenTCP``) and
        connections it asked the reactor for."""
        clock, moved = self.clock, False
        for number, factory, _, interface in clock.tcpServers[self._servers_seen:]:
            self.listen(factory, number, interface or "127.0.0.1")
            self._servers_seen += 1
        while clock.tcpClients:
            host, port, factory, _, _ = clock.tcpClients.pop(0)
            connector = clock.connectors.pop(0)
            moved = True
            if connector.stoppedConnecting:
                continue  # cancelled (a timed-out call) before it connected
            listening = self.ports.get((host, port))
            if listening is None:
                factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
                continue
            protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
            self.connect((host, port), protocol)
        return moved

    def close(self) -> None:
        """Close the socket pairs the pipes made (see Pipe.getHandle)."""
        for pair in self.kernels:
            for sock in pair:
                sock.close()
        self.kernels = []

    def _run_due(self) -> bool:
        """Run the timers due now, as a reactor's runUntilCurrent does: the
        ones due when it starts, in order; one they schedule for now waits
        for the next turn, after the I/O."""
        clock = self.clock
        now = clock.seconds()
        due = sorted((c for c in clock.calls if c.getTime() <= now), key=lambda c: c.getTime())
        for call in due:
            if call in clock.calls and call.getTime() <= now:  # not cancelled or moved
                clock.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)
        return bool(due)

    def run(self) -> None:
        """Turn by turn, run the timers due and move bytes, connections and
        closes, until nothing moves."""
        for _ in range(100000):
            moved = self._run_due()
            moved = self._dial() | moved
            for listening in list(self.ports.values()):
                moved = listening.accept() | moved
            for link in list(self.links):
                moved = link.pump() | moved
                if link.done:
                    self.links.remove(link)
            if not moved and not self._due():
                return
        raise AssertionError("the network never settled")

    def _due(self) -> bool:
        now = self.clock.seconds()
        return any(c.getTime() <= now for c in self.clock.getDelayedCalls())

    def _next_timer(self) -> float | None:
        times = [c.getTime() for c in self.clock.getDelayedCalls()]
        return min(times) if times else None

    def _jump(self, when: float) -> None:
        # Straight to the timer's own time (adding the difference can miss
        # it by a rounding), then run what is due there.
        self.clock.rightNow = max(self.clock.rightNow, when)
        self.run()

    def busy(self, seconds: float) -> None:
        """From a callback: the reactor is busy for ``seconds`` (time passes,
        nothing else runs until the callback returns)."""
        self.clock.rightNow += seconds

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, timer by timer, moving bytes in between."""
        end = self.clock.seconds() + seconds
        self.run()
        while True:
            when = self._next_timer()
            if when is None or when > end:
                break
            self._jump(when)
        self._jump(end)

    def until(self, condition: Callable[[], Any], limit: float = 120.0) -> float:
        """Run, timer by timer, until ``condition()`` holds; the (fake)
        seconds it took. Fails if it does not hold within ``limit``."""
        started = self.clock.seconds()
        self.run()
        while not condition():
            when = self._next_timer()
            assert when is not None and when - started <= limit, \
                "condition not reached (no timer left)" if when is None else \
                f"condition not reached in {limit} s"
            self._jump(when)
        return self.clock.seconds() - started

    def drip(self, client: "Client", data: bytes, every: float = 0.02,
             limit: float = 60.0) -> int:
        """Send ``data`` from ``client`` a byte every ``every`` seconds (the
        first at once) until its connection is closed; the bytes left unsent."""
        pending = list(data)
        started = self.clock.seconds()
        while pending and not client.closed:
            client.send(bytes([pending.pop(0)]))
            self.advance(every)
        self.until(lambda: client.closed, limit - (self.clock.seconds() - started))
        return len(pending)

    # -- what listens on it --

    def gateway(self, raw_config: dict[str, Any]) -> "FakeGateway":
        return FakeGateway(self, raw_config)

    def partner(self) -> PartnerServer:
        """A partners.PartnerServer listening on this network."""
        server = PartnerServer(clock=self.clock)
        server.port = self.listen(server)
        return server

    def raw_partner(self) -> RawPartner:
        """A rawpartners.RawPartner listening on this network."""
        server = RawPartner(clock=self.clock)
        server.port = self.listen(server)
        return server

    def refused_url(self, path: str = "/nothing") -> str:
        """A URL where nothing listens on this network."""
        return f"http://127.0.0.1:{self._port_number()}{path}"

    def endpoint(self) -> Endpoint:
        return Endpoint(self)

    def client(self, address: tuple[str, int], data: bytes = b"") -> "Client":
        """A client connected to ``address`` that has sent ``data`` (refused,
        and closed, if nothing listens there)."""
        client = Client(self.clock)
        if address not in self.ports:
            client.connectionLost(Failure(ConnectionRefusedError()))
            return client
        self.connect(address, client)
        if data:
            client.send(data)
        return client


class Client(Protocol):
    """A client connection: ``send`` bytes, ``received`` is what came back,
    ``closed`` once the connection is closed (``reason`` then says how,
    ``closed_at`` when)."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.received = b""
        self.closed = False
        self.closed_at: float | None = None
        self.reason: Failure | None = None

    def send(self, data: bytes) -> None:
        assert self.transport is not None, "never connected"
        self.transport.write(data)

    def close(self) -> None:
        self.transport.loseConnection()

    def abort(self) -> None:
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True
        self.closed_at = self.clock.seconds()
        self.reason = reason

    def take(self) -> bytes:
        """What came since the last ``take``."""
        data, self.received = self.received, b""
        return data

    def answers(self) -> list["FakeAnswer"]:
        """Every whole answer received so far (Content-Length bodies)."""
        out, rest = [], self.received
        while True:
            message = take_message(rest)
            if message is None:
                return out
            head, body, rest = message
            out.append(FakeAnswer.parse(head, body))


class FakeAnswer(Answer):
    """One answer, parsed from the bytes an in-memory client received."""

    @classmethod
    def parse(cls, head: bytes, body: bytes) -> "FakeAnswer":
        lines = head.split(b"\r\n")
        headers = Headers()
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.addRawHeader(name.strip(), value.strip())
        return cls(int(lines[0].split(b" ")[1]), headers, body)

    def results(self) -> dict[str, dict[str, Any]]:
        return {r["partner"]: r for r in self.json["results"]}


def fired(d: Any) -> Any:
    """What the Deferred ``d`` fired with (as SynchronousTestCase's
    successResultOf): fails the test if it has not fired, or failed."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    assert not isinstance(results[0], Failure), results[0]
    return results[0]


def http_request(path: str = "/bid", body: bytes = b"{}", method: str = "POST",
                 headers: dict[str, str] | None = None, close: bool = True) -> bytes:
    """A request as a client sends it (with Content-Length; with
    ``Connection: close`` unless told otherwise)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: gw\r\n".encode()
    for name, value in (headers or {}).items():
        head += name.encode() + b": " + value.encode("latin-1") + b"\r\n"
    if method != "GET" or body:
        head += b"Content-Length: %d\r\n" % len(body)
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


class FakeGateway:
    """A Gateway and its public site listening on a :class:`Network`."""

    def __init__(self, net: Network, raw_config: dict[str, Any]) -> None:
        self.net = net
        self.config = parse(raw_config)
        self.gateway = Gateway(net.clock, self.config)
        self.site = GatewaySite(self.gateway, reactor=net.clock, draw=no_jitter)
        self.port = net.listen(self.site)
        self.site.listening(self.port)

    @property
    def address(self) -> tuple[str, int]:
        return (self.port.address.host, self.port.address.port)

    def client(self, data: bytes = b"") -> Client:
        return self.net.client(self.address, data)

    def send(self, path: str = "/bid", body: bytes = b"{}", method: str = "POST",
             headers: dict[str, str] | None = None) -> Client:
        """Send one request on a connection of its own (answered and closed
        later: see ``answer``)."""
        return self.client(http_request(path, body, method, headers))

    def answer(self, client: Client, limit: float = 120.0) -> FakeAnswer:
        """Wait (fake time) until ``client``'s connection is closed; its one answer."""
        self.net.until(lambda: client.closed, limit)
        [only] = client.answers()
        return only

    def post(self, path: str = "/bid", body: bytes = b"{}", method: str = "POST",
             headers: dict[str, str] | None = None) -> FakeAnswer:
        """One request on a connection of its own, answered (in fake time)."""
        return self.answer(self.send(path, body, method, headers))

    def value(self, name: str, **labels: str) -> float | None:
        """A sample of the gateway's metrics (None when absent)."""
        return self.gateway.metrics.registry.get_sample_value(name, labels)
