"""Partner calls: one Agent over one persistent connection pool.

Each call has a hard timeout, reads the body with a size cap, and aborts its
connection when it is cancelled, timed out or overflows, so that nothing
keeps streaming after the gateway has stopped caring. Every call ends in a
:class:`~txfanout.outcomes.CallResult`; it never errbacks.

The calls go straight to Twisted's ``Agent`` (the layer treq's
``HTTPClient`` is built on): ``HTTPClient.request`` wraps every call in a
``CookieAgent`` and a ``ContentDecoderAgent`` and re-parses the URL with
hyperlink, whatever it is configured with, which cost a third of the
gateway's CPU at fan-out 2 for features a partner POST never uses.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from twisted.internet import error as net_error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import (
    UNKNOWN_LENGTH,
    IAgentEndpointFactory,
    IBodyProducer,
    IResponse,
)
from zope.interface import implementer

from . import _twisted, outcomes, tls
from ._twisted import RequestNotSent
from .chunked import BodyTooLarge
from .config import PartnerConfig
from .outcomes import CallResult
from .phases import READING, SENT, CallPhase
from .pool import PartnerPool, PartnerProtocolError, PoolKey, unread_bytes
from .poolstats import ConnectionStats, CountingEndpoints, upstream_key
from .tail import Sample, Slots, TailSampler
from .tls import HandshakeCancelled, HandshakeEndpoint, PartnerTLS

# Agents kept for TLS profiles; past this many the cache starts afresh (an
# agent holds no connections: they stay in the pool under the profile's key).
MAX_TLS_AGENTS = 1024
# Call targets kept (a parsed URL, its pool key and endpoint); a reload
# starts afresh, and so does a cache past this size.
MAX_TARGETS = 4096


def host_header(url: bytes) -> bytes:
    """The Host header Twisted's Agent would send for ``url`` (set it in
    advance and the Agent does not copy the headers to add it)."""
    uri = URI.fromBytes(url)
    host: bytes = b"[" + uri.host + b"]" if isIPv6Address(uri.host.decode("ascii")) else uri.host
    if (uri.scheme, uri.port) in ((b"http", 80), (b"https", 443)):
        return host
    return b"%b:%d" % (host, uri.port)


class _Target:
    """Where calls to one URL go, worked out once: what ``Agent.request``
    does for every call (parse the URL, build an endpoint) before it asks
    the pool for a connection."""

    __slots__ = ("agent", "key", "endpoint", "uri", "path")

    def __init__(self, agent: Agent, uri: URI) -> None:
        self.agent = agent
        self.key = (uri.scheme, uri.host, uri.port)  # as Agent.request keys the pool
        self.endpoint = _twisted.endpoint_for(agent, uri)  # may raise SchemeNotSupported
        self.uri = uri
        self.path = uri.originForm


@implementer(IAgentEndpointFactory)
class PartnerEndpoints:
    """Connects to partners: IP literals directly (no resolver thread, no
    happy-eyeballs delay before a refusal is reported), host names through
    ``HostnameEndpoint``; ``https`` only with a partner's TLS settings, its
    connections ready once their handshake is done."""

    def __init__(self, reactor: Any, partner_tls: PartnerTLS | None = None) -> None:
        self._reactor = reactor
        self._tls = partner_tls

    def endpointForURI(self, uri: Any) -> Any:
        host, port = uri.host.decode("ascii"), uri.port
        if isIPAddress(host):
            endpoint: Any = TCP4ClientEndpoint(self._reactor, host, port)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self._reactor, host, port)
        else:
            endpoint = HostnameEndpoint(self._reactor, host, port)
        if uri.scheme == b"https":
            if self._tls is None:
                raise SchemeNotSupported("https without the partner's TLS settings")
            endpoint = HandshakeEndpoint(self._tls, endpoint)
        return endpoint


class _TLSProfileAgent(Agent):
    """An Agent whose pool key also carries a TLS profile's key, so that
    connections made with different TLS settings are never shared."""

    _profile = b""

    def _requestWithEndpoint(self, key: Any, *rest: Any) -> Any:
        return super()._requestWithEndpoint(key + (self._profile,), *rest)


def pool_key(partner: PartnerConfig) -> PoolKey:
    """The key the pool keeps ``partner``'s connections under: its upstream,
    plus its TLS profile's key if any."""
    key = upstream_key(partner.url)
    return key if partner.tls is None else key + (partner.tls.key,)


def idle_caps(partners: Iterable[PartnerConfig]) -> dict[PoolKey, int]:
    """Idle connections worth keeping per pool key: the sum of the
    ``max_concurrency`` of the partners whose connections it holds."""
    caps: dict[PoolKey, int] = {}
    for p in partners:
        key = pool_key(p)
        caps[key] = caps.get(key, 0) + p.max_concurrency
    return caps


@implementer(IBodyProducer)
class BytesProducer:
    """Writes a bytes body in one go: no cooperator, no file object. Its
    call's phase (if any) is ``sent`` once the request is written;
    ``response_limit`` is the answer's cap, for the connection's parser
    (pool.py: a chunked answer's framing counts against it)."""

    connection: Any = None  # the transport that carries it, once it has one (pool.py)

    def __init__(self, body: bytes, phase: CallPhase | None = None,
                 response_limit: int | None = None) -> None:
        self._body = body
        self._phase = phase
        self.length = len(body)
        self.response_limit = response_limit

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._body)
        if self._phase is not None:
            self._phase.state = SENT
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class CappedBody(Protocol):
    """Collects a response body of at most ``limit`` bytes.

    ``finished`` fires with the bytes, or fails with :class:`BodyTooLarge`
    (connection aborted) or the connection's failure (:func:`too_large`
    tells one whose chunk framing passed the cap); cancelling it aborts the
    connection. ``connection`` is the TCP (or TLS) transport the response
    came on: aborted outright (the body's own transport can only stop
    producing, a graceful close that a TLS peer can stall).
    """

    def __init__(self, limit: int, connection: Any) -> None:
        self._limit = limit
        self._connection = connection
        self._size = 0
        self._chunks: list[bytes] = []
        self.finished: Deferred[bytes] = Deferred(self._cancel)

    def _cancel(self, d: Deferred[bytes]) -> None:
        self._chunks = []
        self._connection.abortConnection()

    def overflow(self) -> None:
        """Give up on the body: fail with BodyTooLarge, abort the connection."""
        self._chunks = []
        self.finished.errback(BodyTooLarge(f"body over {self._limit} bytes"))
        self._connection.abortConnection()

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


def _read_capped(response: IResponse, limit: int, producer: BytesProducer,
                 phase: CallPhase | None = None) -> Deferred[tuple[int, bytes, bytes | None]]:
    if phase is not None:
        phase.state = READING
    code = response.code
    content_type = response.headers.getRawHeaders(b"content-type", [None])[-1]
    reader = CappedBody(limit, producer.connection)
    response.deliverBody(reader)
    if response.length is not UNKNOWN_LENGTH and response.length > limit:
        reader.overflow()  # announced too large: do not read a byte of it
    return reader.finished.addCallback(lambda body: (code, body, content_type))


def too_large(failure: Failure) -> BodyTooLarge | None:
    """The :class:`BodyTooLarge` that ended a call, if one did: raised by its
    CappedBody, or by its parser's chunked decoder (then it is the first
    reason of the ResponseFailed the body saw)."""
    exc = failure.value
    reasons = getattr(exc, "reasons", None)
    if reasons:
        exc = reasons[0].value
    return exc if isinstance(exc, BodyTooLarge) else None


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
    if isinstance(exc, ResponseNeverReceived):
        return "connection closed before any answer"
    if isinstance(exc, (ResponseFailed, PotentialDataLoss)):
        return "connection closed before the answer was complete"
    if isinstance(exc, (RequestTransmissionFailed, RequestNotSent)):
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
    return tls.describe(exc) or "error"


class Upstream:
    """The shared pool and client, and the one way to call a partner."""

    def __init__(self, reactor: Any, idle_timeout_s: float,
                 per_key: Mapping[PoolKey, int] = {}) -> None:
        self.clock: IReactorTime = reactor
        self._reactor = reactor
        self.pool = PartnerPool(reactor)
        self.connections = ConnectionStats()
        self.tails = TailSampler()
        self.resize(idle_timeout_s, per_key)
        self.agent = Agent.usingEndpointFactory(
            reactor, CountingEndpoints(PartnerEndpoints(reactor), self.connections),
            pool=self.pool)
        self._tls_agents: dict[bytes, Agent] = {}

    def _tls_agent(self, partner_tls: PartnerTLS) -> Agent:
        """The agent for one TLS profile, on the shared pool."""
        agent = self._tls_agents.get(partner_tls.key)
        if agent is None:
            if len(self._tls_agents) >= MAX_TLS_AGENTS:
                self._tls_agents.clear()
            endpoints = CountingEndpoints(PartnerEndpoints(self._reactor, partner_tls),
                                          self.connections)
            profiled = _TLSProfileAgent.usingEndpointFactory(self._reactor, endpoints,
                                                             pool=self.pool)
            profiled._profile = partner_tls.key
            agent = self._tls_agents[partner_tls.key] = profiled
        return agent

    def resize(self, idle_timeout_s: float, per_key: Mapping[PoolKey, int] = {}) -> None:
        """Keep up to ``per_key[key]`` idle connections under each pool key
        (see :func:`idle_caps`), and under any other (an upstream a reload
        dropped) the largest of those, each for at most ``idle_timeout_s``
        seconds."""
        self.pool.set_idle_caps(per_key, max(per_key.values(), default=2))
        # Twisted infers int from its default (240); it is seconds for callLater.
        self.pool.cachedConnectionTimeout = idle_timeout_s  # type: ignore[assignment]
        self._targets: dict[tuple[bytes, bytes | None], _Target] = {}

    def _post(self, partner: PartnerConfig, url: bytes, headers: Headers,
              producer: BytesProducer) -> Deferred[Any]:
        """``agent.request(b"POST", url, headers, producer)``, less the work
        that is the same for every call to ``url`` (see _Target)."""
        tls_key = partner.tls.key if partner.tls is not None else None
        target = self._targets.get((url, tls_key))
        if target is None:
            agent = self.agent if partner.tls is None else self._tls_agent(partner.tls)
            try:
                target = _Target(agent, URI.fromBytes(url))
            except SchemeNotSupported:
                return fail()
            if len(self._targets) >= MAX_TARGETS:
                self._targets.clear()
            self._targets[url, tls_key] = target
        return _twisted.request_with_endpoint(target.agent, target.key, target.endpoint,
                                              b"POST", target.uri, headers, producer,
                                              target.path)

    def call(self, partner: PartnerConfig, url: bytes, headers: Headers, body: bytes,
             timeout_s: float, phase: CallPhase | None = None,
             tail: Slots | None = None) -> Deferred[CallResult]:
        """POST ``body`` to ``partner``; the Deferred always fires with a
        CallResult. Cancelling it aborts the call (outcome ``cancelled``).
        ``phase``, when given, follows the call (see :mod:`txfanout.phases`).
        ``tail``, when given (the partner's slots; the call has its whole
        timeout_ms), lets a timeout be tail-sampled (see :mod:`txfanout.tail`)."""
        producer = BytesProducer(body, phase, partner.max_response_bytes)
        posted = self._post(partner, url, headers, producer)
        posted.addCallback(_read_capped, partner.max_response_bytes, producer, phase)
        return _Call(self, partner, producer, posted, timeout_s, tail).result

    def close(self) -> Deferred[None]:
        """Abort the tail samples running; close every pooled connection."""
        self.tails.close()
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed


class _Call:
    """One call under way (Upstream.call): its timeout, and its result.

    An object rather than closures: a call's closures took some 25 objects
    for the collector to track, and one that names itself is a reference
    cycle. Nothing here is in a cycle once the call has ended: Twisted drops
    a cancelled timer's function and a fired Deferred's canceller, and the
    timer that ran is dropped first."""

    __slots__ = ("_upstream", "_partner", "_producer", "_posted", "_tail", "_timeout_s",
                 "_started", "_stopped", "_sample", "_timer", "result")

    def __init__(self, upstream: Upstream, partner: PartnerConfig, producer: BytesProducer,
                 posted: Deferred[Any], timeout_s: float, tail: Slots | None) -> None:
        self._upstream = upstream
        self._partner = partner
        self._producer = producer
        self._posted = posted
        self._tail = tail
        self._timeout_s = timeout_s
        clock = upstream.clock
        self._started = clock.seconds()
        self._stopped: str | None = None  # why the call was stopped, if it was
        self._sample: Sample | None = None
        self.result: Deferred[CallResult] = Deferred(self._cancel)
        self._timer: IDelayedCall | None = clock.callLater(timeout_s, self._on_timeout)
        posted.addBoth(self._done)

    def _on_timeout(self) -> None:
        self._timer = None
        connection = self._producer.connection
        if connection is not None and unread_bytes(connection):
            # Bytes wait that the reactor has not read yet (it was busy):
            # judge the call after the next poll has read them, not before.
            self._timer = self._upstream.clock.callLater(0, self._time_out)
            return
        self._time_out()

    def _time_out(self) -> None:
        self._timer = None
        upstream, partner = self._upstream, self._partner
        if self._stopped is None:
            self._stopped = outcomes.TIMEOUT
        if self._tail is not None and self._producer.connection is not None:
            self._sample = upstream.tails.sample(partner.name, partner.tail_sample, self._tail,
                                                 self._posted, self._started, self._timeout_s,
                                                 upstream.clock)
            if self._sample is not None:  # the request has its timeout; the call runs on
                self._deliver(self._timed_out(None))
                return
        self._posted.cancel()

    def _latency_ms(self) -> float:
        return round((self._upstream.clock.seconds() - self._started) * 1000.0, 1)

    def _timed_out(self, result: Failure | None) -> CallResult:
        what = ("TLS handshake not finished"
                if result is not None and result.check(HandshakeCancelled) else "no answer")
        return CallResult(self._partner.name, outcomes.TIMEOUT, None, self._latency_ms(), None,
                          f"{what} in {round(self._timeout_s * 1000)} ms")

    def _done(self, result: tuple[int, bytes, bytes | None] | Failure) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            if timer.active():
                timer.cancel()
        if self._sample is not None:  # its request had its timeout already
            self._sample.ended(not isinstance(result, Failure), self._upstream.clock.seconds())
            return
        self._deliver(self._judge(result))

    def _judge(self, result: tuple[int, bytes, bytes | None] | Failure) -> CallResult:
        latency = self._latency_ms()
        name = self._partner.name
        if not isinstance(result, Failure):
            code, payload, content_type = result
            return outcomes.answered(name, code, latency, payload, content_type)
        if self._stopped is not None:
            if self._stopped != outcomes.TIMEOUT:
                return CallResult(name, self._stopped, None, latency, None, "cancelled")
            return self._timed_out(result)
        overflow = too_large(result)
        if overflow is not None:
            return CallResult(name, outcomes.TOO_LARGE, None, latency, None, str(overflow))
        if result.check(CancelledError):
            return CallResult(name, outcomes.CANCELLED, None, latency, None, "cancelled")
        return CallResult(name, outcomes.ERROR, None, latency, None, describe_failure(result))

    def _deliver(self, result: CallResult) -> None:
        if not self.result.called:
            self.result.callback(result)

    def _cancel(self, result: Deferred[CallResult]) -> None:
        if self._stopped is None:
            self._stopped = outcomes.CANCELLED
        self._posted.cancel()  # fires posted, hence result, at once in every path we know
        if not result.called:
            result.callback(CallResult(self._partner.name, outcomes.CANCELLED,
                                       error="cancelled"))
