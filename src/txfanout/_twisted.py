"""Every private Twisted name txfanout leans on, and why.

Twisted may change a private name (an underscore, or a public name of a
class in a private module) in any release, without a deprecation. So they
are imported here, read and written only through the small functions here,
and each one has an entry in :data:`REGISTER`: why we need it, since which
Twisted release it is as we use it, and what breaks without it. A private
method we override stays in its subclass, but is listed here too. Entries
with a ``security`` text carry a security property: read it before
touching that code or moving Twisted's floor.

tests/test_twisted_internals.py checks every entry against the installed
Twisted, and the behaviour we assume of the riskiest ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import _parse as parse_endpoint
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.web._newclient import HTTP11ClientProtocol, HTTPClientParser, RequestNotSent
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.http import HTTPChannel, Request
from twisted.web.http import _ChunkedTransferDecoder as ChunkedTransferDecoder
from twisted.web.http_headers import Headers, _nameEncoder
from twisted.web.iweb import IBodyProducer, IResponse

__all__ = [
    "REGISTER", "Private", "ChunkedTransferDecoder", "HTTP11ClientProtocol",
    "HTTPClientParser", "RequestNotSent", "parse_endpoint",
]


@dataclass(frozen=True)
class Private:
    """One private name: ``name`` is its dotted path, ``kind`` what it is
    (``object``: a module's; ``method``: a class's, which we call or
    override; ``attribute``: a class's or its instances', which we read or
    write)."""

    name: str
    kind: str
    since: str
    why: str
    without: str
    security: str = ""


_NEWCLIENT = "twisted.web._newclient."
_PROTOCOL = _NEWCLIENT + "HTTP11ClientProtocol."
_PARSER = _NEWCLIENT + "HTTPClientParser."
_POOL = "twisted.web.client.HTTPConnectionPool."
_CHANNEL = "twisted.web.http.HTTPChannel."
_DECODER = "twisted.web.http._ChunkedTransferDecoder."
_FD = "twisted.internet.abstract.FileDescriptor."

_HEAD_GUARD = ("the partner head-size bound, the status-code check and the refusal "
               "of a body framed by both Content-Length and Transfer-Encoding "
               "(pool.GuardedParser)")

REGISTER: tuple[Private, ...] = (
    # -- partner connections: pool.py, tls.py --
    Private(_NEWCLIENT + "HTTP11ClientProtocol", "object", "12.1",
            "the pool's connection protocol: base of pool.GuardedClientProtocol and "
            "tls.HandshakeAwareProtocol (12.1: the quiescent callback that pools it)",
            "no partner connection at all", _HEAD_GUARD + " live in its subclass"),
    Private(_NEWCLIENT + "HTTPClientParser", "object", "9.0",
            "the response parser that pool.GuardedParser extends",
            "no guarded parser", _HEAD_GUARD + " live in its subclass"),
    Private(_PROTOCOL + "request", "method", "9.0",
            "overridden by GuardedClientProtocol: gathers the request's writes into one "
            "send, then swaps the class of the parser this call just built",
            "requests leave in several sends; no guard",
            "depends on the order of statements inside request(): the parser is built "
            "there (from the module's HTTPClientParser, stored in _parser) and fed nothing "
            "before request() returns, so the class swap comes before a byte of the "
            "answer; if Twisted built it elsewhere or fed it sooner, " + _HEAD_GUARD
            + " would silently not apply"),
    Private(_PROTOCOL + "_parser", "attribute", "9.0",
            "read after request() to install GuardedParser, and by dataReceived to feed it "
            "(response_parser)",
            "AttributeError on every call", _HEAD_GUARD + " are installed through it"),
    Private(_PROTOCOL + "_giveUp", "method", "9.0",
            "called when the parser raises: fails the call and drops the connection "
            "(give_up)",
            "a parse failure is an unhandled exception and the call hangs until its timeout",
            "a partner's malformed answer must end the connection, never be re-read"),
    Private(_PROTOCOL + "_finishResponse_WAITING", "method", "12.1",
            "overridden by GuardedClientProtocol: bytes past the end of an answer mark the "
            "connection Connection: close",
            "the override is never called: the connection is pooled with the extra bytes",
            "response splitting: bytes a partner sends past its answer would be read as the "
            "next call's answer"),
    Private(_PROTOCOL + "_finishResponse_TRANSMITTING", "method", "12.1",
            "overridden with _finishResponse_WAITING: an answer that ends while its "
            "request is still being written", "see _finishResponse_WAITING",
            "response splitting (see _finishResponse_WAITING)"),
    Private(_PARSER + "statusReceived", "method", "9.0",
            "overridden by GuardedParser: a status code is three digits, 100 to 599",
            "any int() is a status code (-200, 2_00)", _HEAD_GUARD),
    Private(_PARSER + "lineReceived", "method", "9.0",
            "overridden by GuardedParser: counts every head line against "
            "MAX_RESPONSE_HEAD_BYTES", "the head is unbounded (Twisted bounds each line, "
            "not their number, nor a stream of 100 Continue heads)", _HEAD_GUARD),
    Private(_PARSER + "allHeadersReceived", "method", "9.0",
            "overridden by GuardedParser: refuses Content-Length with Transfer-Encoding",
            "Twisted picks one of the two framings", _HEAD_GUARD),
    Private(_PARSER + "connHeaders", "attribute", "9.0",
            "the framing headers, read for the CL+TE check and given Connection: close "
            "when a partner sent past its answer", "AttributeError on every answer",
            _HEAD_GUARD),
    Private(_PARSER + "switchToBodyMode", "method", "9.0",
            "overridden by GuardedParser: a chunked answer's framing counts against the "
            "call's max_response_bytes (chunked.py)",
            "a partner's chunk framing costs CPU without bound (770 ms for 2 MB)",
            "bounds the CPU a partner's chunked answer costs"),
    Private(_NEWCLIENT + "RequestNotSent", "object", "9.0",
            "describe_failure names it: the connection could not take the request",
            "ImportError at start (and such a call's error would read 'error')"),
    Private(_POOL + "_factory", "attribute", "12.1",
            "overridden by PartnerPool: the pool calls _factory(quiescentCallback, "
            "repr(endpoint)) for each new connection",
            "connections speak Twisted's plain protocol: no counting, no TLS handshake wait",
            "every guard of pool.PartnerProtocol (" + _HEAD_GUARD + ") comes through it"),
    Private(_POOL + "_connections", "attribute", "12.1",
            "the idle connections by key: peeked for stale ones, trimmed to each key's cap, "
            "shown in /debug/pool (idle_connections, pop_idle, push_idle)",
            "stale connections cost calls; no per-key idle cap; no pool view"),
    Private(_POOL + "_timeouts", "attribute", "12.1",
            "each idle connection's expiry, kept in step with _connections (Twisted's "
            "getConnection cancels it by connection) (pop_idle, push_idle)",
            "KeyError in getConnection, or idle connections never expire"),
    Private(_POOL + "_reactor", "attribute", "12.1",
            "the clock an idle connection's expiry is set on (push_idle)",
            "AttributeError when a connection goes idle"),
    Private(_POOL + "_removeConnection", "method", "12.1",
            "an idle connection's expiry: Twisted's own (push_idle)",
            "AttributeError when a connection goes idle"),
    Private(_POOL + "_putConnection", "method", "12.1",
            "overridden by PartnerPool: a quiescent connection comes back under its key's "
            "idle cap", "the override is never called: one cap for every key"),
    # -- the agent: upstream.py --
    Private("twisted.web.client.Agent._getEndpoint", "method", "15.0",
            "an endpoint made once per partner URL, not per call (endpoint_for)",
            "AttributeError for every new partner URL"),
    Private("twisted.web.client._AgentBase._requestWithEndpoint", "method", "12.1",
            "called with the parse of a URL done once (request_with_endpoint), and "
            "overridden by _TLSProfileAgent to add a TLS profile to the pool key",
            "every call fails; or connections of different TLS settings are shared",
            "a connection made with one partner's TLS settings (CA, client certificate) "
            "must never carry another's calls"),
    Private("twisted.web.http_headers.Headers._rawHeaders", "attribute", "24.7",
            "a call's headers are the partner's prepared ones plus two, copied as a dict "
            "(headers_with): Headers.copy() checks and encodes every name and value again",
            "AttributeError on every call"),
    Private("twisted.web.http_headers._nameEncoder", "object", "24.7",
            "the canonical form of a header name, the key _rawHeaders is kept under "
            "(canonical_name)", "ImportError at start"),
    # -- chunked bodies: chunked.py --
    Private("twisted.web.http._ChunkedTransferDecoder", "object", "21.7",
            "subclassed by CountedChunkedDecoder on both faces (21.7: its bytearray buffer "
            "and _dataReceived_* steps returning whether to go on)",
            "ImportError", "chunk framing counted against body caps (CPU per chunk)"),
    Private(_DECODER + "_dataReceived_CHUNK_LENGTH", "method", "21.7",
            "overridden: counts a chunk's size line, data and CRLF when its size is read",
            "chunk framing is not counted: 65,000 one-byte chunks cost 160 ms of CPU",
            "bounds the CPU a chunked body costs (413 / too_large)"),
    Private(_DECODER + "_dataReceived_TRAILER", "method", "21.7",
            "overridden: counts each trailer line", "trailers are not counted",
            "bounds the CPU a chunked body costs"),
    Private(_DECODER + "_buffer", "attribute", "21.7",
            "its length before and after a step is what the step read (buffered)",
            "AttributeError in every chunked body"),
    Private(_DECODER + "length", "attribute", "9.0",
            "the chunk's data length, read after its size line",
            "AttributeError in every chunked body"),
    Private(_DECODER + "dataCallback", "attribute", "9.0",
            "read to build a counting decoder in the place of a fresh one",
            "AttributeError in every chunked body"),
    Private(_DECODER + "finishCallback", "attribute", "9.0",
            "read to build a counting decoder in the place of a fresh one",
            "AttributeError in every chunked body"),
    # -- client connections: channel.py, site.py --
    Private(_CHANNEL + "_handlingRequest", "attribute", "16.3",
            "tells a new request's first bytes (arrival deadline, refusals before parsing) "
            "from the rest (handling_request)",
            "AttributeError on every read", "the arrival deadline (slowloris: 408)"),
    Private(_CHANNEL + "_receivedHeaderCount", "attribute", "8.2",
            "tells 431 (too many headers) from 400 in _respondToBadRequestAndDisconnect "
            "(header_count)", "AttributeError on a refused request"),
    Private(_CHANNEL + "_receivedHeaderSize", "attribute", "15.2",
            "tells 431 (head too large) from 400 (header_bytes)",
            "AttributeError on a refused request"),
    Private(_CHANNEL + "_respondToBadRequestAndDisconnect", "method", "15.2",
            "overridden: every request Twisted's parser refuses gets a JSON 400/431 and "
            "is counted", "a bare 400, not counted"),
    Private(_CHANNEL + "_send100Continue", "method", "16.2",
            "overridden: no 100 Continue once the request was refused (401, 413)",
            "a refused client is invited to send the body",
            "the admin face reads no body before authorization"),
    Private(_CHANNEL + "_transferDecoder", "attribute", "8.2",
            "replaced by a CountedChunkedDecoder once the head is in (transfer_decoder, "
            "set_transfer_decoder)", "client chunk framing is not counted",
            "bounds the CPU a client's chunked body costs (413)"),
    Private(_CHANNEL + "_waitingForTransport", "attribute", "17.1",
            "an answered request holds the next pipelined one while its answer is unsent "
            "(waiting_for_transport)",
            "pipelined requests are served whatever the client leaves unread",
            "bounds the memory a client that does not read can take"),
    Private(_CHANNEL + "_networkProducer", "attribute", "17.1",
            "paused to read nothing more while the answer is unsent (pause_reading)",
            "AttributeError when a client does not read",
            "bounds the memory a client that does not read can take"),
    Private(_CHANNEL + "_path", "attribute", "8.0",
            "the path of a request refused on the wire, for its route's count "
            "(request_path: None before the request line and after the request)",
            "refusals are counted under route 'unknown'"),
    Private("twisted.web.http.Request._disconnected", "attribute", "9.0",
            "no 500 is written to a client that is gone (client_gone)",
            "AttributeError in processingFailed"),
    # -- sockets: sendnow.py, conncap.py, adminauth.py, readsize.py --
    Private(_FD + "_tempDataBuffer", "attribute", "8.0",
            "empty (with offset == len(dataBuffer)) when nothing waits unsent "
            "(nothing_queued)", "sendnow cannot tell it is safe: never sends at once",
            "byte order on the wire: an answer sent past bytes still queued would be "
            "spliced into them"),
    Private(_FD + "_tempDataLen", "attribute", "8.0",
            "the length of _tempDataBuffer, kept with it when gathered bytes go ahead of "
            "what Twisted queued behind them (queue_first)", "byte order on the wire",
            "byte order on the wire"),
    Private(_FD + "offset", "attribute", "8.0", "see _tempDataBuffer (nothing_queued)",
            "see _tempDataBuffer", "byte order on the wire"),
    Private(_FD + "dataBuffer", "attribute", "8.0", "see _tempDataBuffer (nothing_queued)",
            "see _tempDataBuffer", "byte order on the wire"),
    Private("twisted.internet.tcp.Connection.writeSomeData", "method", "8.0",
            "sends on a plain TCP socket now, in the turn that made the bytes (write_some)",
            "every write waits for the reactor's next turn (two epoll_ctl each)"),
    Private("twisted.internet.tcp.Port.numberAccepts", "attribute", "8.0",
            "how many connections a port accepts per wake-up: set to the room the site has "
            "(set_accept_batch), or to one on a socket several processes share "
            "(accept_one_per_wake); Twisted reads it at each wake-up and adapts it after",
            "a flood of connections is accepted in one long turn, past the cap",
            "bounds the connections taken per turn under a connection flood"),
    Private("twisted.internet.tcp.Connection.doRead", "method", "14.0",
            "replaced on each client and partner connection on PyPy by readsize.read_into_buffer, "
            "which reads into one shared buffer (on PyPy recv(n) allocates n bytes)",
            "every read allocates its whole size: minor collections 10-17% more "
            "often at fan-out 2 (bench/RESULTS.md, eighth sitting)"),
    Private("twisted.internet.tcp.Connection._dataReceived", "method", "14.0",
            "what doRead does with the bytes read: EOF, or the protocol's dataReceived "
            "(deliver_read)", "AttributeError at the first read of every connection"),
    Private("twisted.internet.endpoints._parse", "object", "10.2",
            "splits an endpoint string as serverFromString does, to tell whether the admin "
            "face listens on loopback only (parse_endpoint)",
            "ImportError; a parse that fails counts as not loopback",
            "the admin face serves without a token only on loopback"),
)


# -- partner connections (pool.py) --

def response_parser(protocol: HTTP11ClientProtocol) -> HTTPClientParser | None:
    """The parser of the answer ``protocol`` reads now (None when idle)."""
    parser: HTTPClientParser | None = getattr(protocol, "_parser", None)
    return parser


def give_up(protocol: HTTP11ClientProtocol, reason: Failure) -> None:
    """Fail the call on ``protocol`` with ``reason`` and drop the connection."""
    protocol._giveUp(reason)


# The pool's keys and connections are whatever its agents and its protocol
# factory make (Any): a tuple key, an HTTP11ClientProtocol (sub)class.

def idle_connections(pool: HTTPConnectionPool) -> dict[Any, list[Any]]:
    """The pool's idle connections by key, oldest first (the live dict)."""
    connections: dict[Any, list[Any]] = pool._connections
    return connections


def pop_idle(pool: HTTPConnectionPool, key: Hashable) -> Any:
    """Take the oldest idle connection under ``key`` out of the pool, and
    cancel its expiry."""
    connection = pool._connections[key].pop(0)
    expiry: IDelayedCall = pool._timeouts.pop(connection)
    expiry.cancel()
    return connection


def push_idle(pool: HTTPConnectionPool, key: Hashable, connection: Any) -> None:
    """Keep ``connection`` idle under ``key``, newest, closed after the
    pool's ``cachedConnectionTimeout`` (as Twisted's ``_putConnection``)."""
    pool._connections.setdefault(key, []).append(connection)
    pool._timeouts[connection] = pool._reactor.callLater(
        pool.cachedConnectionTimeout, pool._removeConnection, key, connection)


# -- the agent (upstream.py) --

def endpoint_for(agent: Agent, uri: URI) -> IStreamClientEndpoint:
    """The endpoint ``agent`` connects to for ``uri``."""
    endpoint: IStreamClientEndpoint = agent._getEndpoint(uri)
    return endpoint


def request_with_endpoint(agent: Agent, key: Any, endpoint: IStreamClientEndpoint,
                          method: bytes, uri: URI, headers: Headers,
                          producer: IBodyProducer, path: bytes) -> Deferred[IResponse]:
    """``agent.request`` with the URL's parse (``key``, ``endpoint``,
    ``uri``, ``path``) done beforehand."""
    return agent._requestWithEndpoint(key, endpoint, method, uri, headers, producer, path)


def canonical_name(name: bytes) -> bytes:
    """A header name as ``Headers`` keys it (``x-request-id``: ``X-Request-Id``);
    InvalidHeaderName when it is not a token."""
    canonical: bytes = _nameEncoder.encode(name)
    return canonical


def headers_with(prepared: Headers, extra: dict[bytes, list[bytes]]) -> Headers:
    """A copy of ``prepared`` with ``extra`` set. Nothing is checked again:
    ``extra``'s names are canonical (canonical_name) and its values hold no
    line break."""
    headers = Headers()
    headers._rawHeaders = {**prepared._rawHeaders, **extra}
    return headers


# -- client connections (channel.py, site.py, chunked.py) --

def handling_request(channel: HTTPChannel) -> bool:
    """Whether ``channel`` is past a request's head and not done answering it."""
    return bool(channel._handlingRequest)


def header_count(channel: HTTPChannel) -> int:
    """Header lines of the request being read."""
    return int(channel._receivedHeaderCount)


def header_bytes(channel: HTTPChannel) -> int:
    """Bytes of header lines of the request being read."""
    return int(channel._receivedHeaderSize)


def request_path(channel: HTTPChannel) -> bytes | None:
    """The path of the request being read, once its request line is."""
    path: bytes | None = getattr(channel, "_path", None)
    return path


def transfer_decoder(channel: HTTPChannel) -> object:
    """The decoder of the request body being read (None: no body)."""
    return channel._transferDecoder


def set_transfer_decoder(channel: HTTPChannel, decoder: object) -> None:
    """Decode the rest of the request body with ``decoder``."""
    channel._transferDecoder = decoder


def waiting_for_transport(channel: HTTPChannel) -> bool:
    """Whether the transport has paused ``channel``: answers wait unsent."""
    return bool(channel._waitingForTransport)


def pause_reading(channel: HTTPChannel) -> None:
    """Read nothing more from the client until ``resumeProducing``."""
    channel._networkProducer.pauseProducing()


def client_gone(request: Request) -> bool:
    """Whether the connection of ``request`` is lost."""
    return bool(request._disconnected)


def buffered(decoder: ChunkedTransferDecoder) -> int:
    """Bytes ``decoder`` holds, not yet decoded."""
    return len(decoder._buffer)


# -- sockets (sendnow.py, conncap.py, readsize.py) --

def nothing_queued(transport: Any) -> bool:
    """Whether a plain TCP ``transport`` has no bytes waiting unsent."""
    return not transport._tempDataBuffer and transport.offset == len(transport.dataBuffer)


def queue_first(transport: Any, data: bytes) -> None:
    """Queue ``data`` on a plain TCP ``transport`` ahead of every byte it
    queued since nothing was (``nothing_queued``): those came after it."""
    unsent = transport.dataBuffer[transport.offset:]
    transport.dataBuffer, transport.offset = b"", 0
    transport._tempDataBuffer[:0] = [data, unsent] if unsent else [data]
    transport._tempDataLen += len(data) + len(unsent)
    transport.startWriting()


def deliver_read(connection: Any, data: bytes) -> Any:
    """Hand what a TCP ``connection``'s read returned to it as its own
    ``doRead`` would (empty: the peer closed)."""
    return connection._dataReceived(data)


def write_some(transport: Any, data: bytes) -> int | BaseException:
    """Send what the socket of a plain TCP ``transport`` takes of ``data``
    now: the count sent, or the exception that says the connection is lost."""
    sent: int | BaseException = transport.writeSomeData(data)
    return sent


def set_accept_batch(port: Any, count: int) -> None:
    """Accept at most ``count`` connections at the next wake-up of ``port``."""
    port.numberAccepts = count


def accept_one_per_wake(port: Any) -> None:
    """Make ``port`` accept at most one connection each time it wakes up,
    whatever Twisted adapted ``numberAccepts`` to after the last wake-up."""
    read = port.doRead

    def doRead() -> None:
        port.numberAccepts = 1
        read()

    port.doRead = doRead
