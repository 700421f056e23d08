"""The partner connection pool, hardened against partners that misbehave on
the wire.

``PartnerPool`` is Twisted's ``HTTPConnectionPool`` with these changes:

* no automatic retry (Twisted only retries idempotent methods anyway; a POST
  that may have reached a partner is never sent twice);
* its connections are :class:`PartnerProtocol` (its one factory,
  :class:`PartnerClientFactory`): guarded (below), aware of their TLS
  handshake (tls.py), counted on their upstream (poolstats.py);
* before an idle connection is reused, its socket is peeked: one the partner
  has closed (FIN or RST received, not yet seen by the reactor) is dropped
  and another one is used, so a stale connection does not cost a call.
  Twisted itself already skips connections whose close the reactor saw;
* the guard, :class:`GuardedClientProtocol`: the response head
  is bounded, a body framed two ways is refused, a chunked body's framing
  counts against the call's ``max_response_bytes`` (chunked.py), any parse
  failure has one name, and a connection on which the partner sent more
  than the response is never reused (the extra bytes would be read as the
  next call's answer);
* idle connections are capped per key (``idle_caps``: each upstream's own
  partners' concurrency), not only by the one ``maxPersistentPerHost``, and
  a lower cap (a reload) closes the surplus at once.
"""

from __future__ import annotations

import select
import socket
from typing import Any, Callable, Hashable, Mapping, Protocol, Union, cast

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from . import _twisted
from ._twisted import ChunkedTransferDecoder, HTTP11ClientProtocol, HTTPClientParser
from .chunked import BodyTooLarge, CountedChunkedDecoder
from .readsize import read_at_most
from .sendnow import send
from .tls import HandshakeAwareProtocol

UpstreamKey = tuple[bytes, bytes, int]
"""(scheme, host, port) of a partner URL as Twisted's Agent parses it (host
as written, without IPv6 brackets): what connections are counted under."""
PoolKey = Union[UpstreamKey, tuple[bytes, bytes, int, bytes]]
"""A key of the pool: the upstream's, plus its TLS profile's key for https."""

MAX_RESPONSE_HEAD_BYTES = 16384
"""Status line plus headers (1xx heads included) a partner may send for one
call; nginx's default proxy buffer for them is 4-8 KiB."""

_PEEK_FLAGS = socket.MSG_PEEK | socket.MSG_DONTWAIT
_CLOSED_EVENTS = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR


class PartnerProtocolError(Exception):
    """A partner broke HTTP; ``description`` is the fixed text for clients."""

    description = "malformed HTTP response"


class ResponseHeadTooLarge(PartnerProtocolError):
    description = f"response headers over {MAX_RESPONSE_HEAD_BYTES} bytes"


class GuardedParser(HTTPClientParser):
    """Twisted's response parser with a bound on the whole head (Twisted
    bounds each line, not their number nor a stream of ``100 Continue``
    heads), status codes of three digits from 100 to 599 only (Twisted takes
    whatever ``int()`` takes: ``-200``, ``2_00``, twenty digits), and no
    tolerance for a body framed by both Transfer-Encoding and Content-Length
    (RFC 9112 6.3: a smuggling attempt; Twisted would pick one). Installed on
    each request's parser by :class:`GuardedClientProtocol`.
    """

    MAX_LENGTH = MAX_RESPONSE_HEAD_BYTES
    _head_bytes = 0
    body_limit: int | None = None  # the call's max_response_bytes (GuardedClientProtocol)

    def statusReceived(self, status: bytes) -> None:
        parts = status.split(b" ", 2)
        code = parts[1] if len(parts) > 1 else b""
        if not (len(code) == 3 and code.isdigit() and b"100" <= code <= b"599"):
            raise PartnerProtocolError()
        super().statusReceived(status)

    def lineReceived(self, line: bytes) -> None:
        self._head_bytes += len(line) + 1
        if self._head_bytes > MAX_RESPONSE_HEAD_BYTES:
            raise ResponseHeadTooLarge()
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        raise ResponseHeadTooLarge()

    def allHeadersReceived(self) -> None:
        conn = self.connHeaders
        if conn.hasHeader(b"transfer-encoding") and conn.hasHeader(b"content-length"):
            raise PartnerProtocolError()
        super().allHeadersReceived()

    def switchToBodyMode(self, decoder: Any) -> None:
        if self.body_limit is not None and type(decoder) is ChunkedTransferDecoder:
            decoder = CountedChunkedDecoder.replacing(decoder, self.body_limit)
        super().switchToBodyMode(decoder)


class GuardedClientProtocol(HTTP11ClientProtocol):
    """``HTTP11ClientProtocol`` with a :class:`GuardedParser` per request and
    every parse failure reported as a :class:`PartnerProtocolError` (a
    chunked body over its cap as :class:`BodyTooLarge`). A request's body
    producer may name the response's cap (``response_limit``)."""

    transport: Any  # TCP or TLS (or, while a request is written, a CallTransport)

    def request(self, request: Any) -> Deferred[Any]:
        producer = request.bodyProducer
        if getattr(producer, "connection", False) is None:
            producer.connection = self.transport  # which connection carries it
        # Twisted writes the head and the body separately, each queued for
        # the reactor's next turn: gather them and send them at once.
        transport = self.transport
        call = self.transport = self._call_transport = CallTransport(transport)
        try:
            d = super().request(request)
        finally:
            self.transport = transport
            call.flush()
        parser = _twisted.response_parser(self)
        if parser is not None and type(parser) is HTTPClientParser:
            # Twisted builds the parser inside request() from a module global;
            # the subclass only adds methods and class-level defaults.
            parser.__class__ = GuardedParser
            cast(GuardedParser, parser).body_limit = getattr(producer, "response_limit", None)
        return d

    _call_transport: "CallTransport | None" = None

    def dataReceived(self, data: bytes) -> None:
        parser = _twisted.response_parser(self)
        try:
            if parser is None:  # bytes while idle: nobody asked for them
                raise PartnerProtocolError()
            parser.dataReceived(data)
            if self._call_transport is not None:
                self._call_transport.settle()
        except (PartnerProtocolError, BodyTooLarge):
            _twisted.give_up(self, Failure())
        except Exception:  # ParseError, ValueError (Content-Length), KeyError
            # (unknown Transfer-Encoding), chunked decoding: all the same to us.
            _twisted.give_up(self, Failure(PartnerProtocolError()))

    def _finishResponse_WAITING(self, rest: bytes) -> None:
        parser = _twisted.response_parser(self)
        if rest and parser is not None:
            # Bytes past the end of the response: keep the answer, drop the
            # connection (Twisted closes it when it sees Connection: close).
            parser.connHeaders.addRawHeader(b"connection", b"close")
        super()._finishResponse_WAITING(rest)

    _finishResponse_TRANSMITTING = _finishResponse_WAITING


class CallTransport:
    """The transport as one call's request and response see it.

    While Twisted writes the request, its writes are gathered until
    ``flush`` sends them in one (see sendnow); after that they go straight
    through. Twisted's parser pauses the transport when a response's head is
    in, until the body is asked for, which we do at once: a pause undone
    before the chunk of data that caused it is handled costs nothing (each
    real one is two epoll_ctl calls); ``settle``, after each chunk, makes a
    pause still wanted real. Anything else is the transport's."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._chunks: list[bytes] | None = []
        self._pause_wanted = False

    def pauseProducing(self) -> None:
        self._pause_wanted = True

    def resumeProducing(self) -> None:
        if self._pause_wanted:
            self._pause_wanted = False
        else:
            self._transport.resumeProducing()

    def settle(self) -> None:
        if self._pause_wanted:
            self._pause_wanted = False
            self._transport.pauseProducing()

    def write(self, data: bytes) -> None:
        if self._chunks is None:
            self._transport.write(data)
        else:
            self._chunks.append(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def flush(self) -> None:
        chunks, self._chunks = self._chunks, None
        if chunks:
            send(self._transport, b"".join(chunks))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OpenCount(Protocol):
    """Where a connection counts itself (poolstats.UpstreamConnections)."""

    opened: int
    closed: int


class PartnerProtocol(GuardedClientProtocol, HandshakeAwareProtocol):
    """What the pool's connections speak: the guarded HTTP/1.1 client,
    aware of its TLS handshake, counted opened and closed on ``upstream``
    (set by poolstats.CountingEndpoints when it connects)."""

    upstream: OpenCount | None = None
    _counted = False

    def connectionMade(self) -> None:
        super().connectionMade()
        read_at_most(self.transport)
        if self.upstream is not None:
            self._counted = True
            self.upstream.opened += 1

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._counted and self.upstream is not None:
            self._counted = False
            self.upstream.closed += 1
        super().connectionLost(reason)


class PartnerClientFactory(Factory):
    """The pool's per-connection factory: :class:`PartnerProtocol`, counted
    on ``upstream``, and no log line per connection. The pool builds one per
    new connection with its quiescent callback (which hands the connection
    back to the pool) and the endpoint's repr (unused)."""

    noisy = False
    upstream: OpenCount | None = None

    def __init__(self, quiescent: Callable[[Any], None], metadata: str) -> None:
        self._quiescent = quiescent

    def buildProtocol(self, addr: Any) -> PartnerProtocol:
        protocol = PartnerProtocol(self._quiescent)
        protocol.upstream = self.upstream
        return protocol


def _socket_of(transport: Any) -> socket.socket | None:
    """The socket under a (possibly TLS-wrapped) transport."""
    while transport is not None:
        handle = getattr(transport, "getHandle", None)
        sock = handle() if handle is not None else None
        if isinstance(sock, socket.socket):
            return sock
        transport = getattr(transport, "transport", None)
    return None


def peer_closed(connection: Any) -> bool:
    """True when an idle pooled connection can no longer carry a request: it
    is closing, or its socket already holds the partner's FIN or RST (one
    zero-timeout poll; waiting bytes alone, e.g. TLS records, do not count)."""
    transport = connection.transport
    if transport is None or getattr(transport, "disconnecting", False):
        return True
    sock = _socket_of(transport)
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN | _CLOSED_EVENTS)
    ready = poller.poll(0)
    if not ready:
        return False  # the usual case, and no exception raised for it
    if ready[0][1] & _CLOSED_EVENTS:
        return True
    try:  # bytes wait; without POLLRDHUP, a FIN behind them shows only here
        return sock.recv(1, _PEEK_FLAGS) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def unread_bytes(transport: Any) -> bool:
    """True when bytes the reactor has not read yet wait in the socket under
    ``transport`` (one non-blocking peek; a FIN alone does not count)."""
    sock = _socket_of(transport)
    if sock is None:
        return False
    try:
        return sock.recv(1, _PEEK_FLAGS) != b""
    except OSError:
        return False


class PartnerPool(HTTPConnectionPool):
    """The one shared pool of partner connections (see the module doc)."""

    # Twisted types it as its own (private) factory class; the pool only
    # calls it with (quiescentCallback, metadata).
    _factory = PartnerClientFactory  # type: ignore[assignment]
    retryAutomatically = False
    idle_caps: Mapping[PoolKey, int] = {}
    """Idle connections kept per pool key; a key not in it keeps up to
    ``maxPersistentPerHost``."""

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor, persistent=True)

    def getConnection(self, key: Hashable, endpoint: Any) -> Deferred[Any]:
        connections = _twisted.idle_connections(self).get(key)
        while connections:
            first = connections[0]
            alive = first.state == "QUIESCENT"
            if alive and not peer_closed(first):
                break
            _twisted.pop_idle(self, key)
            if alive:
                first.transport.abortConnection()
        return super().getConnection(key, endpoint)

    def idle_connections(self) -> Mapping[PoolKey, list[Any]]:
        """The idle connections kept, by pool key."""
        return _twisted.idle_connections(self)

    def set_idle_caps(self, caps: Mapping[PoolKey, int], fallback: int) -> None:
        """Keep up to ``caps[key]`` idle connections under each key (else
        ``fallback``); idle connections past the new caps are closed now."""
        self.idle_caps = caps
        self.maxPersistentPerHost = fallback
        for key in _twisted.idle_connections(self):
            self._trim(key, caps.get(key, fallback))

    def _trim(self, key: Any, keep: int) -> None:
        """Close the oldest idle connections under ``key`` until ``keep``
        are left."""
        connections = _twisted.idle_connections(self).get(key, [])
        while connections and len(connections) > keep:
            _twisted.pop_idle(self, key).transport.loseConnection()

    def _putConnection(self, key: PoolKey, connection: Any) -> None:
        # Twisted's own, with the key's cap; and "at the cap", not "equal to
        # it" (Twisted's test), so a list over a lowered cap cannot grow.
        if connection.state != "QUIESCENT":
            super()._putConnection(key, connection)  # logs the bug, keeps nothing
            return
        self._trim(key, self.idle_caps.get(key, self.maxPersistentPerHost) - 1)
        _twisted.push_idle(self, key, connection)
