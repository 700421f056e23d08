"""Real loopback partners for the tests, one behaviour per path.

``/ok``            200 with a small JSON body
``/status/N``      status N with a body
``/delay/MS``      200 after MS milliseconds
``/hang``          never answers (records when its connection is lost)
``/midbody``       announces 100 bytes, sends 10, closes
``/reset``         resets the connection (RST) on request
``/big/N``         200 with N bytes and a Content-Length
``/bigchunked/N``  200 with N bytes, chunked (no Content-Length)
``/ff/N``          200 with N bytes of 0xff (not UTF-8)
``/drip/N``        headers, then one byte every 50 ms, N bytes in all
``/echo``          200 with the request's method, URI, headers and body as JSON
``/typed/TYPE``    200 with the request's body, as Content-Type TYPE (``~`` for ``/``)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site


class Behaviours(Resource):
    isLeaf = True

    def __init__(self, server: "PartnerServer") -> None:
        super().__init__()
        self.server = server

    def render(self, request: Request) -> Any:
        server = self.server
        server.seen += 1
        server.open_requests.add(request)
        request.notifyFinish().addBoth(lambda _: server.open_requests.discard(request))
        waiters, server._request_waiters = server._request_waiters, []
        for d in waiters:
            d.callback(request)
        parts = request.path.decode().strip("/").split("/")
        kind, arg = parts[0], (parts[1] if len(parts) > 1 else "")
        body = request.content.read()
        if kind == "ok":
            return b'{"bid": 1}'
        if kind == "status":
            request.setResponseCode(int(arg))
            return b'{"error": "partner says no"}'
        if kind == "echo":
            headers = {k.decode(): [v.decode() for v in vs]
                       for k, vs in request.requestHeaders.getAllRawHeaders()}
            return json.dumps({"headers": headers, "body": body.decode(),
                               "method": request.method.decode(),
                               "uri": request.uri.decode()}).encode()
        if kind == "typed":
            request.setHeader(b"Content-Type", arg.replace("~", "/").encode())
            return body
        if kind == "big":
            return b"x" * int(arg)
        if kind == "ff":
            return b"\xff" * int(arg)
        if kind == "bigchunked":
            request.write(b"x" * int(arg))  # no Content-Length: chunked
            request.finish()
            return NOT_DONE_YET
        if kind == "midbody":
            request.setHeader(b"Content-Length", b"100")
            request.write(b"x" * 10)
            request.channel.transport.loseConnection()
            return NOT_DONE_YET
        if kind == "reset":
            request.channel.transport.abortConnection()
            return NOT_DONE_YET
        if kind == "delay":
            call = server.clock.callLater(int(arg) / 1000.0, self._finish, request, b'{"bid": 2}')
            request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
            return NOT_DONE_YET
        if kind == "drip":
            return self._drip(request, int(arg))
        if kind == "hang":
            request.notifyFinish().addErrback(lambda _: server.hang_lost())
            return NOT_DONE_YET
        request.setResponseCode(404)
        return b"unknown behaviour"

    @staticmethod
    def _finish(request: Request, body: bytes) -> None:
        request.write(body)
        request.finish()

    def _drip(self, request: Request, count: int) -> Any:
        request.setHeader(b"Content-Length", b"%d" % count)
        sent = [0]

        def one() -> None:
            request.write(b"x")
            sent[0] += 1
            if sent[0] >= count:
                loop.stop()
                request.finish()

        loop = LoopingCall(one)
        loop.clock = self.server.clock
        loop.start(0.05)
        request.notifyFinish().addErrback(
            lambda _: (loop.running and loop.stop(), self.server.hang_lost()))
        return NOT_DONE_YET


class PartnerServer(Site):
    """A partner on 127.0.0.1 that counts its connections; its timers run on
    ``clock`` (the global reactor, or a fake one: see fakes.Network)."""

    def __init__(self, clock: Any = None) -> None:
        self.clock = reactor if clock is None else clock
        super().__init__(Behaviours(self), reactor=self.clock)
        self.noisy = False
        self.connections = 0
        self.open_connections = 0
        self.seen = 0  # requests received
        self.open_requests: set[Request] = set()  # not yet answered or lost
        self._lost_waiters: list[Deferred[None]] = []
        self._request_waiters: list[Deferred[Request]] = []
        self.lost_count = 0
        self.port: Any = None

    def log(self, request: Request) -> None:
        pass

    def buildProtocol(self, addr: Any) -> Protocol:
        proto = super().buildProtocol(addr)
        self.connections += 1
        self.open_connections += 1
        lost = proto.connectionLost

        def connection_lost(reason: Any) -> None:
            self.connection_closed()
            lost(reason)

        proto.connectionLost = connection_lost  # type: ignore[method-assign]
        return proto

    def connection_closed(self) -> None:
        self.open_connections -= 1

    def hang_lost(self) -> None:
        self.lost_count += 1
        waiters, self._lost_waiters = self._lost_waiters, []
        for d in waiters:
            d.callback(None)

    def wait_hang_lost(self) -> Deferred[None]:
        """Fires when a hanging request's connection is next lost."""
        d: Deferred[None] = Deferred()
        self._lost_waiters.append(d)
        return d

    def wait_request(self) -> Deferred[Request]:
        """Fires when the next request reaches this partner."""
        d: Deferred[Request] = Deferred()
        self._request_waiters.append(d)
        return d

    def start(self) -> "PartnerServer":
        self.port = reactor.listenTCP(0, self, interface="127.0.0.1")
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}{path}"

    def stop(self) -> Deferred[None]:
        for request in list(self.open_requests):
            request.channel.transport.abortConnection()
        return self.port.stopListening()


def server_options(pair: Any, client_ca: Path | None = None,
                   **extra: Any) -> ssl.CertificateOptions:
    """Server TLS options for ``pair`` (a certs.KeyPair); with ``client_ca``
    (a PEM file), a client certificate from that CA is required."""
    if client_ca is not None:
        ca = ssl.Certificate.loadPEM(client_ca.read_text())
        extra.update(verify=True, caCerts=[ca.original], requireCertificate=True)
    return ssl.CertificateOptions(
        privateKey=serialization.load_pem_private_key(pair.key.read_bytes(), None),
        certificate=x509.load_pem_x509_certificate(pair.cert.read_bytes()), **extra)


class TLSPartner(PartnerServer):
    """A PartnerServer behind TLS; records the SNI name of each handshake."""

    def __init__(self, pair: Any, client_ca: Path | None = None, **extra: Any) -> None:
        super().__init__()
        self.server_names: list[bytes | None] = []
        self.options = server_options(pair, client_ca, **extra)
        # pyOpenSSL's hook rather than Twisted 26's contextForServerName=, which
        # the Twisted pinned for PyPy (25.5) lacks; getContext() is cached.
        self.options.getContext().set_tlsext_servername_callback(self._saw_server_name)

    def _saw_server_name(self, connection: SSL.Connection) -> None:
        self.server_names.append(connection.get_servername())

    def start(self) -> "TLSPartner":
        self.port = reactor.listenSSL(0, self, self.options, interface="127.0.0.1")
        return self

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port.getHost().port}{path}"


def refused_url() -> str:
    """A loopback URL where nothing listens."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/nothing"


def take_message(buffer: bytes) -> tuple[bytes, bytes, bytes] | None:
    """Split one whole HTTP message (head, Content-Length body) off the front
    of ``buffer``: (head, body, rest), or None while it is incomplete."""
    if b"\r\n\r\n" not in buffer:
        return None
    head, rest = buffer.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if len(rest) < length:
        return None
    return head, rest[:length], rest[length:]
