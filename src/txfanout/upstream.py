"""Partner calls: one treq client over one persistent connection pool.

Each call has a hard timeout, reads the body with a size cap, and aborts its
connection when it is cancelled, timed out or overflows, so that nothing
keeps streaming after the gateway has stopped caring. Every call ends in a
:class:`~txfanout.outcomes.CallResult`; it never errbacks.
"""

from __future__ import annotations

from typing import Any

from treq.client import HTTPClient
from twisted.internet import error as net_error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web import _newclient
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import (
    UNKNOWN_LENGTH,
    IAgentEndpointFactory,
    IBodyProducer,
    IPolicyForHTTPS,
    IResponse,
)
from zope.interface import implementer

from . import outcomes
from .config import PartnerConfig
from .outcomes import CallResult
from .plainhttp import NoCookies, PlainAgent
from .pool import PartnerPool, PartnerProtocolError


@implementer(IAgentEndpointFactory)
class PartnerEndpoints:
    """Connects to partners: IP literals directly (no resolver thread, no
    happy-eyeballs delay before a refusal is reported), host names through
    ``HostnameEndpoint``; ``https`` wrapped with the TLS policy."""

    def __init__(self, reactor: Any, tls_policy: IPolicyForHTTPS | None = None) -> None:
        self._reactor = reactor
        self._tls = tls_policy or BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: Any) -> Any:
        host, port = uri.host.decode("ascii"), uri.port
        if isIPAddress(host):
            endpoint: Any = TCP4ClientEndpoint(self._reactor, host, port)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self._reactor, host, port)
        else:
            endpoint = HostnameEndpoint(self._reactor, host, port)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, port), endpoint)
        return endpoint


class BodyTooLarge(Exception):
    """A response body passed the partner's max_response_bytes."""


@implementer(IBodyProducer)
class BytesProducer:
    """Writes a bytes body in one go: no cooperator, no file object."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _abort(transport: Any) -> None:
    """Abort the TCP (or TLS) connection under a response body.

    The body protocol sees a ``TransportProxyProducer`` whose only way down
    is ``stopProducing`` (a graceful close that a TLS peer can stall); the
    connection it wraps can be aborted outright, so we do that when we can.
    """
    connection = getattr(transport, "_producer", None)
    abort = getattr(connection, "abortConnection", None)
    if abort is not None:
        abort()
    elif transport is not None:
        transport.stopProducing()


class CappedBody(Protocol):
    """Collects a response body of at most ``limit`` bytes.

    ``finished`` fires with the bytes, or fails with :class:`BodyTooLarge`
    (connection aborted) or the connection's failure; cancelling it aborts
    the connection.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._chunks: list[bytes] = []
        self.finished: Deferred[bytes] = Deferred(self._cancel)

    def _cancel(self, d: Deferred[bytes]) -> None:
        self._chunks = []
        _abort(self.transport)

    def overflow(self) -> None:
        """Give up on the body: fail with BodyTooLarge, abort the connection."""
        self._chunks = []
        self.finished.errback(BodyTooLarge())
        _abort(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self.overflow()
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self._chunks))
        else:
            self.finished.errback(reason)
        self._chunks = []


def _read_capped(response: IResponse, limit: int) -> Deferred[tuple[int, bytes]]:
    code = response.code
    reader = CappedBody(limit)
    response.deliverBody(reader)
    if response.length is not UNKNOWN_LENGTH and response.length > limit:
        reader.overflow()  # announced too large: do not read a byte of it
    return reader.finished.addCallback(lambda body: (code, body))


def describe_failure(failure: Failure) -> str:
    """A short, fixed-vocabulary reason for a failed call (never exception
    text, paths or URLs: this reaches clients)."""
    exc = failure.value
    if isinstance(exc, PartnerProtocolError):
        return exc.description
    reasons = getattr(exc, "reasons", None)
    if reasons:
        inner = describe_failure(reasons[0])
        if inner not in ("error", "connection closed"):
            return inner
    if isinstance(exc, _newclient.ResponseNeverReceived):
        return "connection closed before any answer"
    if isinstance(exc, (_newclient.ResponseFailed, PotentialDataLoss)):
        return "connection closed before the answer was complete"
    if isinstance(exc, (_newclient.RequestTransmissionFailed, _newclient.RequestNotSent)):
        return "request could not be sent"
    if isinstance(exc, net_error.DNSLookupError):
        return "DNS lookup failed"
    if isinstance(exc, net_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (net_error.ConnectingCancelledError, net_error.TCPTimedOutError,
                        net_error.TimeoutError)):
        return "connect timed out"
    if isinstance(exc, net_error.ConnectError):
        return "connect failed"
    if isinstance(exc, net_error.ConnectionLost):
        return "connection reset"
    if isinstance(exc, net_error.ConnectionDone):
        return "connection closed"
    if isinstance(exc, _newclient.ParseError):
        return "malformed HTTP response"
    if type(exc).__module__.startswith("OpenSSL"):
        return "TLS handshake failed"
    return "error"


class Upstream:
    """The shared pool and client, and the one way to call a partner."""

    def __init__(self, reactor: Any, per_host: int, idle_timeout_s: float) -> None:
        self.clock: IReactorTime = reactor
        self.pool = PartnerPool(reactor)
        self.resize(per_host, idle_timeout_s)
        agent = Agent.usingEndpointFactory(reactor, PartnerEndpoints(reactor), pool=self.pool)
        self.client = HTTPClient(PlainAgent(agent), cookiejar=NoCookies(),
                                 data_to_body_producer=BytesProducer)

    def resize(self, per_host: int, idle_timeout_s: float) -> None:
        """Keep up to ``per_host`` idle connections per host, each for at
        most ``idle_timeout_s`` seconds."""
        self.pool.maxPersistentPerHost = per_host
        self.pool.cachedConnectionTimeout = idle_timeout_s

    def call(self, partner: PartnerConfig, headers: Headers, body: bytes,
             timeout_s: float) -> Deferred[CallResult]:
        """POST ``body`` to ``partner``; the Deferred always fires with a
        CallResult. Cancelling it aborts the call (outcome ``cancelled``)."""
        clock = self.clock
        started = clock.seconds()
        why_stopped: list[str] = []

        d = self.client.request("POST", partner.url, headers=headers, data=body,
                                allow_redirects=False, unbuffered=True)
        d.addCallback(_read_capped, partner.max_response_bytes)

        def on_timeout() -> None:
            why_stopped.append(outcomes.TIMEOUT)
            d.cancel()

        timer = clock.callLater(timeout_s, on_timeout)

        def done(result: tuple[int, bytes] | Failure) -> CallResult:
            if timer.active():
                timer.cancel()
            latency = round((clock.seconds() - started) * 1000.0, 1)
            name = partner.name
            if not isinstance(result, Failure):
                code, payload = result
                return CallResult(name, outcomes.OK if 200 <= code < 300 else outcomes.HTTP_ERROR,
                                  code, latency, payload.decode("utf-8", "replace"))
            if why_stopped:
                return CallResult(name, why_stopped[0], None, latency, None,
                                  f"no answer in {round(timeout_s * 1000)} ms"
                                  if why_stopped[0] == outcomes.TIMEOUT else "cancelled")
            if result.check(BodyTooLarge):
                return CallResult(name, outcomes.TOO_LARGE, None, latency, None,
                                  f"body over {partner.max_response_bytes} bytes")
            if result.check(CancelledError):
                return CallResult(name, outcomes.CANCELLED, None, latency, None, "cancelled")
            return CallResult(name, outcomes.ERROR, None, latency, None, describe_failure(result))

        def deliver(result: CallResult) -> None:
            if not out.called:
                out.callback(result)

        def cancel(_: Deferred[CallResult]) -> None:
            if not why_stopped:
                why_stopped.append(outcomes.CANCELLED)
            d.cancel()  # fires d, hence out, at once in every path we know
            if not out.called:
                out.callback(CallResult(partner.name, outcomes.CANCELLED, error="cancelled"))

        out: Deferred[CallResult] = Deferred(cancel)
        d.addBoth(done).addCallback(deliver)
        return out

    def close(self) -> Deferred[None]:
        """Close every pooled connection."""
        return self.pool.closeCachedConnections()

