"""A loopback partner that misbehaves byte for byte, one behaviour per path.

Each connection reads requests (head plus Content-Length body) and answers
each by the path's behaviour; a behaviour that answers in full leaves the
connection open for the next request (keep-alive) unless it says otherwise.

``/ok``                    200, ``Content-Length: 2``, keep-alive
``/silent``                reads the request, never answers
``/stall-after-headers``   200 announcing 100 bytes, then nothing
``/drip``                  200 announcing 1000 bytes, one byte every 20 ms
``/close-mid-body``        announces 100 bytes, sends 10, closes (FIN)
``/reset-mid-body``        announces 100 bytes, sends 10, resets (RST)
``/garbage-status``        ``HTTP/1.1 two-hundred OK``
``/garbage-line``          a status line that is not HTTP at all
``/status-negative``       status ``-200`` (``int()`` takes it)
``/status-999``            status ``999``, out of HTTP's range
``/status-huge``           status ``99999999999999999999``
``/status-underscore``     status ``2_00`` (``int()`` reads 200)
``/bad-chunked``           chunked body with a chunk size that is not hex
``/conflicting-length``    two different Content-Length values
``/length-and-chunked``    Content-Length and Transfer-Encoding: chunked
``/unknown-encoding``      Transfer-Encoding: gzip (not a framing we know)
``/huge-length``           announces 100 MiB, sends a few bytes, stalls
``/huge-close-delimited``  no length, no chunking: 2 MiB then close
``/huge-chunked``          2 MiB in 64 KiB chunks
``/tiny-chunks``           200, chunked: 20 bytes in 1-byte chunks
``/long-chunk-extensions`` 200, chunked: 2 bytes, each chunk with a 900-byte
                           extension
``/huge-trailers``         200, chunked: 2 bytes, then 2 KiB of trailers
``/fitting-chunks``        200, chunked: 600 bytes in two 300-byte chunks
``/continue-stall``        ``100 Continue``, then nothing
``/continue-flood``        ``100 Continue`` a thousand times
``/huge-headers``          200 with 2,000 header lines (about 150 KiB)
``/huge-header-line``      200 with one 20 KiB header line
``/close-after-one``       200 (keep-alive announced), then closes
``/trailing-bytes``        200 plus a forged second response on the same write
``/close-on-second``       200 keep-alive; a second request on the connection
                           is read and the connection closed, unanswered
``/set-cookie``            200 with a new ``Set-Cookie`` each time, keep-alive
``/gzip-bomb``             200, ``Content-Encoding: gzip``: 64 MiB of zeros
                           compressed to about 64 KiB
"""

from __future__ import annotations

import functools
import gzip
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall

from .partners import take_message

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\nok"


def _send_now(proto: "RawPartnerProtocol", data: bytes) -> None:
    """Write straight to the socket (not Twisted's buffer), so that what
    follows (a reset) cannot overtake it. The gateway may have hung up
    already (its 30 ms timeout can pass first on a slow round): then there
    is no one to answer. In memory, the same (fakes.Pipe.send_now)."""
    send_now = getattr(proto.transport, "send_now", None)
    if send_now is not None:
        send_now(data)
        return
    try:
        proto.transport.getHandle().sendall(data)
    except (ConnectionResetError, BrokenPipeError):
        pass


def _ok(p: "RawPartnerProtocol") -> None:
    p.transport.write(OK)
    p.answered()


def _silent(p: "RawPartnerProtocol") -> None:
    pass


def _stall_after_headers(p: "RawPartnerProtocol") -> None:
    p.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")


def _drip(p: "RawPartnerProtocol") -> None:
    p.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    loop = LoopingCall(lambda: p.transport.write(b"x"))
    loop.clock = p.server.clock
    p.on_lost.append(loop.stop)
    loop.start(0.02)


def _close_mid_body(p: "RawPartnerProtocol") -> None:
    p.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    p.transport.loseConnection()


def _reset_mid_body(p: "RawPartnerProtocol") -> None:
    _send_now(p, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    p.transport.abortConnection()  # SO_LINGER 0: RST


def _fixed(data: bytes) -> Callable[["RawPartnerProtocol"], None]:
    def behaviour(p: "RawPartnerProtocol") -> None:
        p.transport.write(data)
    return behaviour


def _huge_close_delimited(p: "RawPartnerProtocol") -> None:
    p.transport.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * (2 << 20))
    p.transport.loseConnection()


def _huge_chunked(p: "RawPartnerProtocol") -> None:
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    p.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 32
                      + b"0\r\n\r\n")


CHUNKED_200 = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def _chunked(body: bytes) -> Callable[["RawPartnerProtocol"], None]:
    """Answer 200 with the chunked ``body`` (its framing as given), keep-alive."""
    def behaviour(p: "RawPartnerProtocol") -> None:
        p.transport.write(CHUNKED_200 + body)
        p.answered()
    return behaviour


def _huge_headers(p: "RawPartnerProtocol") -> None:
    lines = b"".join(b"X-Junk-%04d: %s\r\n" % (i, b"j" * 60) for i in range(2000))
    p.transport.write(b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 2\r\n\r\nok")


def _close_after_one(p: "RawPartnerProtocol") -> None:
    p.transport.write(OK)
    p.transport.loseConnection()


def _close_on_second(p: "RawPartnerProtocol") -> None:
    if p.requests == 1:
        _ok(p)
    else:
        p.transport.loseConnection()


def _set_cookie(p: "RawPartnerProtocol") -> None:
    p.transport.write(b"HTTP/1.1 200 OK\r\nSet-Cookie: s%d=%s; Path=/\r\nContent-Length: 2\r\n"
                      b"\r\nok" % (p.server.connections * 100 + p.requests, b"v" * 100))
    p.answered()


@functools.lru_cache(maxsize=None)
def gzip_bomb() -> bytes:
    """64 MiB of zeros, gzipped (about 64 KiB): made when first asked for,
    as it takes a second of CPU."""
    return gzip.compress(b"\0" * (64 << 20), compresslevel=9)


def _gzip_bomb(p: "RawPartnerProtocol") -> None:
    bomb = gzip_bomb()
    p.transport.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n"
                      b"\r\n%s" % (len(bomb), bomb))
    p.answered()


BEHAVIOURS: dict[bytes, Callable[["RawPartnerProtocol"], None]] = {
    b"/ok": _ok,
    b"/silent": _silent,
    b"/stall-after-headers": _stall_after_headers,
    b"/drip": _drip,
    b"/close-mid-body": _close_mid_body,
    b"/reset-mid-body": _reset_mid_body,
    b"/garbage-status": _fixed(b"HTTP/1.1 two-hundred OK\r\nContent-Length: 2\r\n\r\nok"),
    b"/garbage-line": _fixed(b"\x16\x03\x01garbage-that-is-not-http\r\n\r\n"),
    b"/status-negative": _fixed(b"HTTP/1.1 -200 OK\r\nContent-Length: 2\r\n\r\nok"),
    b"/status-999": _fixed(b"HTTP/1.1 999 OK\r\nContent-Length: 2\r\n\r\nok"),
    b"/status-huge": _fixed(b"HTTP/1.1 99999999999999999999 OK\r\nContent-Length: 2\r\n\r\nok"),
    b"/status-underscore": _fixed(b"HTTP/1.1 2_00 OK\r\nContent-Length: 2\r\n\r\nok"),
    b"/bad-chunked": _fixed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"zz\r\nhello\r\n0\r\n\r\n"),
    b"/conflicting-length": _fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                   b"Content-Length: 5\r\n\r\nhello"),
    b"/length-and-chunked": _fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n"
                                   b"2\r\nok\r\n0\r\n\r\n"),
    b"/unknown-encoding": _fixed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok"),
    b"/huge-length": _fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\nxxxx"),
    b"/huge-close-delimited": _huge_close_delimited,
    b"/huge-chunked": _huge_chunked,
    b"/tiny-chunks": _chunked(b"1\r\nx\r\n" * 20 + b"0\r\n\r\n"),
    b"/long-chunk-extensions": _chunked((b"1;e=" + b"e" * 900 + b"\r\nx\r\n") * 2
                                        + b"0\r\n\r\n"),
    b"/huge-trailers": _chunked(b"2\r\nok\r\n0\r\n"
                                + b"X-Trailer: " + b"t" * 2048 + b"\r\n\r\n"),
    b"/fitting-chunks": _chunked((b"12c\r\n" + b"x" * 300 + b"\r\n") * 2 + b"0\r\n\r\n"),
    b"/continue-stall": _fixed(b"HTTP/1.1 100 Continue\r\n\r\n"),
    b"/continue-flood": _fixed(b"HTTP/1.1 100 Continue\r\n\r\n" * 1000),
    b"/huge-headers": _huge_headers,
    b"/huge-header-line": _fixed(b"HTTP/1.1 200 OK\r\nX-Long: " + b"l" * 20480
                                 + b"\r\nContent-Length: 2\r\n\r\nok"),
    b"/close-after-one": _close_after_one,
    b"/trailing-bytes": _fixed(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfake"),
    b"/close-on-second": _close_on_second,
    b"/set-cookie": _set_cookie,
    b"/gzip-bomb": _gzip_bomb,
}


class RawPartnerProtocol(Protocol):
    """One partner connection: reads requests, runs behaviours."""

    def __init__(self, server: "RawPartner") -> None:
        self.server = server
        self.buffer = b""
        self.requests = 0
        self.on_lost: list[Callable[[], Any]] = []
        self._busy = False

    def connectionMade(self) -> None:
        self.server.connections += 1
        self.server.open.add(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        self._next()

    def _next(self) -> None:
        message = None if self._busy else take_message(self.buffer)
        if message is None:
            return
        head, _, self.buffer = message
        path = head.split(b" ", 2)[1]
        self.requests += 1
        self.server.requests.append(path)
        self.server.heads.append(head)
        self._busy = True
        BEHAVIOURS[path](self)

    def answered(self) -> None:
        """The behaviour answered in full: read the next request."""
        self._busy = False
        self._next()

    def connectionLost(self, reason: Any) -> None:
        for stop in self.on_lost:
            stop()
        self.server.open.discard(self)
        self.server.lost()


class RawPartner(Factory):
    """The listener; counts connections and requests; ``idle()`` fires once
    no connection is open."""

    noisy = False

    def __init__(self, clock: Any = None) -> None:
        self.clock = reactor if clock is None else clock  # or a fake one (fakes.Network)
        self.connections = 0
        self.open: set[RawPartnerProtocol] = set()
        self.requests: list[bytes] = []  # paths, in arrival order
        self.heads: list[bytes] = []  # request line and headers of each
        self._idle_waiters: list[Deferred[None]] = []
        self.port: Any = None

    def buildProtocol(self, addr: Any) -> RawPartnerProtocol:
        return RawPartnerProtocol(self)

    def lost(self) -> None:
        if not self.open:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def idle(self) -> Deferred[None]:
        """Fires when no connection to this partner is open (at once if none)."""
        d: Deferred[None] = Deferred()
        if self.open:
            self._idle_waiters.append(d)
        else:
            d.callback(None)
        return d

    def start(self) -> "RawPartner":
        self.port = reactor.listenTCP(0, self, interface="127.0.0.1")
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}{path}"

    def stop(self) -> Deferred[None]:
        for proto in list(self.open):
            proto.transport.abortConnection()
        return self.port.stopListening()
