"""The public socket: HTTP/1.1 hygiene, limits, and refusals on the wire.

``GatewaySite`` serves the gateway's Klein app with ``GatewayChannel`` (one
client connection: a deadline for each request to arrive whole, small
limits on the request head, refusals before parsing under overload, one
send per answer) and ``GatewayRequest`` (one request: its body capped and
held in memory, its route matched once, its in-flight slot taken before the
handler runs and given back when it ends). The site knows the gateway only
through :class:`Front`.
"""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request

from . import _twisted, backlog
from ._compat import SLOTS
from ._twisted import ChunkedTransferDecoder
from .admission import SHED_DRAINING, SHED_MAX_INFLIGHT, Admission
from .answer import write_error
from .channel import BoundedChannel
from .chunked import BodyTooLarge, CountedChunkedDecoder
from .config import ServerConfig
from .conncap import CappedChannel, CappedSite
from .deadlines import Deadlines, Timeline
from .lag import ReactorLag
from .readsize import read_at_most
from .sendnow import flush, send
from .slotqueue import SlotQueue
from .wire import SHED_ANSWERS, SHED_HEADS, sole_request

if TYPE_CHECKING:
    from .fanout import Fanout
    from .metrics import ClientFace

log = Logger()

_HOST = re.compile(rb"^[\x21-\x7e]{0,255}$")

CLIENT_CLOSED = 499  # the status counted when the client left first (nginx's)



class Front(Protocol):
    """What the site needs of the gateway it serves."""

    clock: IReactorTime
    admission: Admission
    closing: bool  # draining, still serving: every answer closes its connection
    clients: ClientFace | None  # the site serving it, whose connections its metrics read

    @property
    def server(self) -> ServerConfig: ...

    def route(self, path: bytes) -> str | None:
        """The route a request path names; None: not a route."""

    def resource(self) -> IResource: ...

    def request_ended(self, request: "GatewayRequest", code: int) -> None:
        """Count (and maybe log) a request answered or abandoned."""

    def refused_on_arrival(self, path: bytes, reason: str) -> None:
        """Count a request refused with 503 before it was parsed."""

    def refused_on_wire(self, path: bytes | None, code: int, elapsed: float | None) -> None:
        """Count (and maybe log) a request refused on the wire (400, 408,
        413, 414, 431); ``path``: None when its request line was not read;
        ``elapsed``: since its first byte, when known."""

    def idle_closed(self) -> None:
        """Count a client connection closed for being idle."""

    def abandoned_in_backlog(self) -> None:
        """Count a connection its client closed before it was accepted."""


@dataclass(**SLOTS)
class Exchange:
    """One request's life in the gateway, once it is complete."""

    started: float  # its first byte: the deadline counts from here
    route: str | None  # the route its path names (matched once); None: none
    fanout: "Fanout | None" = None  # its fan-out, once the handler started it
    complete: bool | None = None  # whether its 200 is complete, once answered


class GatewayRequest(Request):
    """A request that is admitted (or refused with 503) before it is routed,
    and whose body is refused with 413 past ``max_body_bytes`` without being
    buffered."""

    channel: GatewayChannel
    site: GatewaySite
    _admitted = False
    _refused = False
    _body_size = 0
    arrived: float | None = None  # when its first byte came (set by the channel)
    exchange: Exchange | None = None  # set when it is complete (process)

    def __init__(self, channel: "GatewayChannel", *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        self.front: Front = channel.site.front

    def gotLength(self, length: int | None) -> None:
        limit = self.front.server.max_body_bytes
        if length is not None and length > limit:
            self.refuse_body(f"body over {limit} bytes")
            return
        # In memory whatever the length: bodies are capped at max_body_bytes
        # (Twisted would spool a body of unknown length to a temporary file).
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_size += len(data)
        limit = self.front.server.max_body_bytes
        if self._body_size > limit:
            self.refuse_body(f"body over {limit} bytes")
            return
        super().handleContentChunk(data)

    def refuse_body(self, message: str) -> None:
        """Answer 413 now and close: the rest of the body is never read."""
        self._refused = True
        self.content = None
        self.channel.refuse(413, message)

    def process(self) -> None:
        if self._refused:
            return
        self.site = self.channel.site
        front = self.front
        route = front.route(self.path)
        arrived = self.arrived
        self.exchange = Exchange(front.clock.seconds() if arrived is None else arrived, route)
        # Anything but a route never reaches Klein (which would log a
        # traceback for a path or Host that is not UTF-8), nor takes a slot.
        if route is None:
            write_error(self, 404, "no such route")
            return
        hosts = self.requestHeaders.getRawHeaders(b"Host")
        if hosts is None:
            if self.clientproto == b"HTTP/1.1":  # RFC 9112 3.2: Host is required
                write_error(self, 400, "missing Host header")
                return
        elif len(hosts) > 1 or not _HOST.match(hosts[0]):
            write_error(self, 400, "bad Host header")
            return
        refused = front.admission.admit()
        if refused is not None:
            self._shed(refused)
            return
        self._admitted = True
        if front.closing:  # a load balancer takes its next request elsewhere
            self.channel.persistent = False
            self.setHeader(b"Connection", b"close")
        super().process()

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if name == b"Server":
            return  # Twisted names itself and its version: nothing a client needs
        super().setHeader(name, value)

    def _shed(self, reason: str) -> None:
        """Answer 503 as cheaply as it can be done: refusing must cost far
        less than serving, or clients that retry at once (ignoring
        Retry-After) eat the capacity the refusals were meant to protect."""
        channel = self.channel
        keep = bool(channel.persistent) and reason != SHED_DRAINING
        if not keep:
            channel.persistent = False
        self.code = 503
        self.startedWriting = 1  # the whole answer goes out as one prepared write
        answers = SHED_HEADS if self.method == b"HEAD" else SHED_ANSWERS
        send(channel.transport, answers[reason, keep])
        self.finish()
        if keep:
            channel.refused_kept_alive()

    def _release(self) -> None:
        if self._admitted:
            self._admitted = False
            self.site.request_answered()
            self.front.admission.release()

    def finish(self) -> None:
        self._release()
        super().finish()
        self.front.request_ended(self, self.code)

    def connectionLost(self, reason: Failure) -> None:
        self._release()
        abandoned = self.exchange is not None and not self.finished
        super().connectionLost(reason)
        if abandoned:
            self.front.request_ended(self, CLIENT_CLOSED)

    def over(self) -> bool:
        """Answered, or its client gone: nothing more can be written."""
        return bool(self.finished) or _twisted.client_gone(self)

    def processingFailed(self, reason: Failure) -> None:
        if self.over():
            log.failure("error serving {path} after it ended", failure=reason,
                        path=self.path[:200])
            return
        log.failure("unhandled error serving {path}", failure=reason,
                    path=self.path[:200])
        write_error(self, 500, "internal error", close=True)


class GatewayChannel(CappedChannel, BoundedChannel):
    """A public connection: bounded in time and head size (channel.py),
    every refusal on the wire counted; requests refused before they are
    parsed under overload, one send per answer, pipelining bounded by unsent
    bytes; and it reports itself to the site for the connection cap. The
    idle keep-alive timeout is HTTPChannel's own ``timeOut``; its closes are
    counted, not logged."""

    site: GatewaySite
    _arrived: float | None
    _received: float | None  # when the kernel received its first bytes, if known
    _unheard: int | None  # the site's period it was accepted in, until it speaks

    def __init__(self) -> None:
        super().__init__()
        # Every attribute a connection ever sets, set here in one order (as
        # PyPy advises): instances that gained them later, in the orders a
        # storm's refusals, holds and first requests set them, each had a
        # map of its own, which the code compiled for the others guards
        # against (bench/RESULTS.md, fourteenth sitting).
        self._arrived = None
        self._received = None
        self._unheard = None
        self._host = None
        self._refused_at = None
        self._holds = 0
        self._answer = None
        self._waiting = b""
        self._head = None
        self._held = None
        self._queued_at = None
        self._requeued_at = None

    def connectionMade(self) -> None:
        super().connectionMade()
        info = backlog.tcp_info(self.transport)
        if backlog.abandoned(info):  # nothing to answer: gone at no cost (backlog.py)
            self.site.front.abandoned_in_backlog()
            self.transport.abortConnection()
            return
        read_at_most(self.transport)
        self._unheard = self.site.unheard_connection()
        waited = backlog.waited(info)
        if waited is not None:  # no earlier than the gateway listened (socket activation)
            self._received = max(self.site.front.clock.seconds() - waited, self.site.listened)

    _host: Any

    def getHost(self) -> Any:
        """The local address: asked of the socket once per connection
        (Twisted asks it anew for each request, a ``getsockname`` call)."""
        if self._host is None:
            self._host = self.transport.getHost()
        return self._host

    # Its timeouts are kept by the site (deadlines.py), not on the reactor's
    # heap: the idle timeout (HTTPChannel's, from TimeoutMixin: its
    # ``timeOut`` is the site's), the request's arrival, a stalled close's
    # drain, and a hold.

    def setTimeout(self, period: int | None) -> int | None:
        previous, self.timeOut = self.timeOut, period
        if period is None:
            self.site.idle.clear(self)
        else:
            self.site.idle.set(self)
        return previous

    def resetTimeout(self) -> None:
        if self.timeOut is not None:
            self.site.idle.set(self)

    def _arriving(self) -> bool:
        return self in self.site.arrivals

    def _start_arrival_timer(self) -> None:
        self.site.arrivals.set(self)

    def _stop_arrival_timer(self) -> None:
        self.site.arrivals.clear(self)

    def _heard(self) -> None:
        if self._unheard is not None:
            self.site.connection_heard(self._unheard)
            self._unheard = None

    # Pacing clients that do not wait (``server.pace_ms``). A 503 on a
    # kept-alive connection says Retry-After: 1. A request that comes back
    # on it sooner than the pace (0.9 s) is from a client that did not wait:
    # with a free slot it is served at once, like any request; refused
    # again, its 503 is held back for HOLD_FIRST_PACES paces, twice that the
    # next time, up to HOLD_MAX_PACES, nothing it sends meanwhile being
    # served. Reading goes on through a hold, so that a client that leaves
    # is let go at once rather than at the hold's end; what it sends waits
    # unparsed for the hold's end, a read's worth at most (then reading
    # stops), and so do pipelined requests behind the held one. A
    # client that waits is never slowed; one that does not costs a refusal
    # per hold, not one per round trip, and its 200s are as fast as anyone's.
    # A hold ends early when slots sat unused through a whole lag period
    # (GatewaySite._new_period): pacing saves the core's time for requests
    # it can serve, and must not leave it idle while the clients who would
    # use it are held.
    # Each hold ends in a refusal the client sends straight back: a first
    # hold of one pace, then two, cost 2,500 such clients two refusals each
    # in their first 2.7 s, a tenth of the core for those seconds, where
    # four paces costs one. A minute into a storm of 2,500 of them on PyPy,
    # held 16 paces at most they cost 237-304 refusals/s, 32 paces 129-209/s
    # (bench/RESULTS.md, twentieth sitting; whether that moves complete
    # answers/s, this VM does not resolve: twenty-first sitting). The idle
    # timeout counts from the held request: a hold ends a pace (or half
    # the idle timeout, if shorter) before it would close the connection.
    # Each hold is shortened by up to HOLD_JITTER of itself, drawn at random
    # (GatewaySite.draw): clients refused in the same second, held alike,
    # would otherwise all come back in the same second, again and again,
    # and each such wave is a lag spike that costs the 200s around it
    # (bench/RESULTS.md, sixteenth sitting).
    HOLD_FIRST_PACES = 4
    HOLD_MAX_PACES = 32
    HOLD_JITTER = 0.25
    _refused_at: float | None  # when its last 503 went out
    _holds: int  # 503s held back in a row

    _answer: bytes | None  # the 503 its hold ends with, if not sent yet
    _waiting: bytes  # what it sent during its hold, or its request waiting for a slot

    def refused_kept_alive(self) -> None:
        """A 503 went out on this kept-alive connection (parsed the long
        way): if it came back too soon, serve nothing more for the hold."""
        hold = self._hold_s()
        if hold:
            self._hold(hold)
        self._refused_at = self.site.front.clock.seconds()

    def _hold(self, hold_s: float, answer: bytes | None = None) -> None:
        """Serve nothing for ``hold_s``, then send ``answer`` (if any).
        Pipelined requests the parser has not reached yet wait too."""
        self.site.held.set(self, hold_s)
        self._answer = answer
        self._wait_with(self.clearLineBuffer())

    def _wait_with(self, data: bytes) -> None:
        """Keep ``data`` for the hold's end, and read nothing more."""
        if data:
            self._waiting += data
            self.transport.pauseProducing()

    def release_into_room(self) -> None:
        """End this connection's hold early for a slot that sat unused:
        until it speaks again, it counts as a connection accepted for that
        slot."""
        self._unheard = self.site.unheard_connection()
        self.release_hold()

    def release_hold(self) -> None:
        """End this connection's hold now: its time came, the gateway
        drains (a held 503 goes out, what came meanwhile is read), or the
        client waited its Retry-After."""
        self.site.held.clear(self)
        answer, self._answer = self._answer, None
        if answer is not None:
            send(self.transport, answer)
            self._refused_at = self.site.front.clock.seconds()
            self.resetTimeout()
        self._read_waiting()

    def _read_waiting(self) -> None:
        """Read on, beginning with what waited (a hold's, or a request's
        that waited for a slot)."""
        waiting, self._waiting = self._waiting, b""
        if waiting:
            self.transport.resumeProducing()
            self.dataReceived(waiting)

    def _back_too_soon(self) -> bool:
        """Whether the client is back within the pace of its last 503."""
        pace_s = self.site.front.server.pace_ms / 1000.0
        return (bool(pace_s) and self._refused_at is not None
                and self.site.front.clock.seconds() - self._refused_at < pace_s)

    def _hold_s(self) -> float:
        """How long to hold back this refusal: 0 unless the client came back
        within the pace of its last 503."""
        if not self._back_too_soon():
            self._holds = 0
            return 0.0
        server = self.site.front.server
        self._holds += 1
        paces = min(self.HOLD_FIRST_PACES << min(self._holds - 1, 8), self.HOLD_MAX_PACES)
        pace_s, idle_s = server.pace_ms / 1000.0, server.idle_timeout_ms / 1000.0
        hold = min(paces * pace_s, idle_s - min(pace_s, idle_s / 2))
        return hold * (1.0 - self.HOLD_JITTER * self.site.draw())

    def dataReceived(self, data: bytes) -> None:
        self._heard()
        if self._queued_at is not None:  # its request waits for a slot
            self._wait_with(data)
            return
        if self in self.site.held:
            if self._answer is not None or self._waiting or self._back_too_soon():
                self._wait_with(data)
                return
            # Its last 503 went out at once (parsed the long way), and it
            # waited: a client that honours Retry-After is never slowed.
            self.release_hold()
        super().dataReceived(data)

    def request_begins(self, data: bytes) -> bool:
        front = self.site.front
        now = front.clock.seconds()
        requeued, self._requeued_at = self._requeued_at, None
        if requeued is None:  # new, not back from the queue
            arrived, pace_from = now - self._backlog_wait(now, data), now
            reason = front.admission.shed_reason(now - arrived)
            if ((reason == SHED_MAX_INFLIGHT or reason is None and self.site.queue.ahead())
                    and self._queue(arrived, data)):
                return False
        else:
            arrived = pace_from = requeued
            reason = front.admission.shed_reason(now - arrived)
        if reason is not None and self._shed_unparsed(front, reason, data, pace_from):
            return False
        self._arrived = arrived
        return True

    # Waiting for a slot (slotqueue.py): a whole request that finds none
    # free, from a client not being paced, waits unparsed in the site's
    # queue; reading goes on (a client that leaves is let go at once) until
    # it sends more, which waits with it.
    _queued_at: float | None  # its waiting request's first byte, while it waits
    _requeued_at: float | None  # the same, as its request begins again

    def _queue(self, arrived: float, data: bytes) -> bool:
        """Queue the request ``data`` that arrived at ``arrived`` for a slot;
        False: it may not wait (a client being paced, not a sole whole
        request, the queue does not take it)."""
        queue = self.site.queue
        if (not queue.open() or self._back_too_soon() or self.transport.disconnecting
                or sole_request(data) is None or not queue.join(self, arrived)):
            return False
        self._queued_at = arrived
        self._waiting = data
        self.resetTimeout()
        self.site.sync_accepting()
        return True

    def leave_queue(self) -> None:
        """Its wait ended (a slot is free, its time is up, or the gateway
        drains): its request begins again, its deadline counted from its
        first byte."""
        self._requeued_at, self._queued_at = self._queued_at, None
        self._read_waiting()

    def _backlog_wait(self, now: float, data: bytes) -> float:
        """How long the request beginning with ``data`` waited in the
        listening socket's backlog, counted for a connection's first request
        when it keeps its connection: refused, it asks again on that
        connection, read at once. One that closes its connection would ask
        again through the same backlog, no fresher; under a storm of those
        (a new connection per request) every request would be refused: it
        is served, its deadline counted from now."""
        received, self._received = self._received, None
        if received is None:
            return 0.0
        request = sole_request(data)
        return now - received if request is not None and request.keep_alive else 0.0

    def _shed_unparsed(self, front: Front, reason: str, data: bytes, pace_from: float) -> bool:
        """Refuse a request that came whole in ``data`` without building a
        Request for it: under overload, clients that retry at once send
        these by the thousand, and a refusal must cost far less than an
        answer. False: not a sole whole request; parse it the long way.
        The pace counts from ``pace_from``: now, or the first byte of a
        request that waited for a slot (the gateway kept it waiting, not its
        client, whose next request a second after it is not too soon)."""
        request = sole_request(data)
        if request is None or self.transport.disconnecting:
            return False
        keep = request.keep_alive and reason != SHED_DRAINING
        self.resetTimeout()
        answer = (SHED_HEADS if request.head else SHED_ANSWERS)[reason, keep]
        front.admission.refused(reason)
        front.refused_on_arrival(request.path, reason)
        if not keep:
            send(self.transport, answer)
            self.persistent = False
            self.loseConnection()
            return True
        hold = self._hold_s()
        if hold:  # nothing else came with it: the answer itself waits
            self._hold(hold, answer)
        else:
            send(self.transport, answer)
            self._refused_at = pace_from
        return True

    # An answer's head waits for its first body bytes, so that the two leave
    # in one send (see sendnow); an answer without a body sends it when done.
    _head: list[bytes] | None

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        head = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                head.extend((name, b": ", value, b"\r\n"))
        head.append(b"\r\n")
        self._head = head

    def write(self, data: bytes) -> None:
        if self._head is not None:
            self._head.append(data)
            data = b"".join(self._head)
            self._head = None
        send(self.transport, data)

    def writeSequence(self, iovec: list[bytes]) -> None:
        self.write(b"".join(iovec))

    def requestDone(self, request: Request) -> None:
        if self._head is not None:
            self.write(b"")
        if self.persistent and _twisted.waiting_for_transport(self):
            # Twisted would go on to the next pipelined request, whatever
            # the client left unread: hold it, and read nothing more, until
            # the transport has sent everything (resumeProducing).
            self._held = request
            _twisted.pause_reading(self)
            return
        super().requestDone(request)

    # Back-pressure. The transport pauses its producer (this channel) when
    # more than its bufferSize (16 KiB: readsize.py) waits unsent, and
    # resumes it once all of it is sent. While paused, the next request is
    # neither parsed nor read (see requestDone), and unsent bytes that do not
    # drain within request_timeout get the connection aborted: a client that
    # does not read costs one answer and a bounded time.
    _held: Request | None  # answered; the next request waits for the client

    def pauseProducing(self) -> None:
        super().pauseProducing()
        self._start_drain_timer()

    def resumeProducing(self) -> None:
        self._stop_drain_timer()
        super().resumeProducing()
        held, self._held = self._held, None
        if held is not None:
            super().requestDone(held)

    def loseConnection(self) -> None:
        # A close waits for the unsent bytes: bounded like a pause.
        flush(self.transport)
        self._start_drain_timer()
        super().loseConnection()

    def _start_drain_timer(self) -> None:
        if self not in self.site.drains:  # counted from the first pause or close
            self.site.drains.set(self)

    def _stop_drain_timer(self) -> None:
        self.site.drains.clear(self)

    def not_drained(self) -> None:
        """Unsent bytes did not drain in time: abort."""
        self.transport.abortConnection()

    def allContentReceived(self) -> None:
        if self.requests:  # the deadline counts from the request's first byte
            self.requests[-1].arrived = self._arrived
        self._arrived = None
        super().allContentReceived()

    def refused(self, code: int) -> None:
        # Every refusal on the wire is counted here.
        arrived = self._arrived
        elapsed = None if arrived is None else self.site.front.clock.seconds() - arrived
        self.site.front.refused_on_wire(_twisted.request_path(self), code, elapsed)

    def allHeadersReceived(self) -> None:
        # RFC 9112 6.3: chunked must be the one and final coding, else the
        # body's length is ambiguous (Twisted takes the first header it
        # likes and ignores "identity"): 400 and close, never two requests.
        codings = self.requests[-1].requestHeaders.getRawHeaders(b"Transfer-Encoding")
        if codings is not None and (len(codings) > 1 or codings[0].lower() != b"chunked"):
            self.refuse(400, "Transfer-Encoding must be chunked alone")
            return
        super().allHeadersReceived()
        decoder = _twisted.transfer_decoder(self)
        if isinstance(decoder, ChunkedTransferDecoder):
            _twisted.set_transfer_decoder(self, CountedChunkedDecoder.replacing(
                decoder, self.site.front.server.max_body_bytes))

    def rawDataReceived(self, data: bytes) -> None:
        try:
            super().rawDataReceived(data)
        except BodyTooLarge as e:  # a chunked body, framing counted (chunked.py)
            self.requests[-1].refuse_body(str(e))

    def timeoutConnection(self) -> None:
        # Twisted's own, without its log line per connection (thousands of
        # idle keep-alive clients would flood the journal): counted instead.
        # A close that stalls is aborted by the drain timer (loseConnection).
        self.site.front.idle_closed()
        self.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.site.held.clear(self)
        self.site.queue.leave(self)
        self._stop_drain_timer()
        super().connectionLost(reason)
        self._heard()


# While every in-flight slot is taken, new connections are still accepted,
# to be refused at once (503), but only as fast as this budget refills: by
# half a refusal per request answered, and a few per lag period, up to a
# burst. Refusals then cost at most a small share of the loop (a refusal of
# a new connection costs about a tenth of serving a request on CPython);
# the rest wait in the listening socket's backlog, costing nothing.
REFUSAL_BURST = 128
REFUSALS_PER_ANSWER = 0.5
REFUSALS_PER_PERIOD = 10


class GatewaySite(CappedSite):
    """The public listener's site: serves the gateway's Klein app.

    It accepts new connections while it has room (see conncap): under
    ``server.max_connections`` open connections, and under the free
    in-flight slots less the connections accepted in the current lag
    period that have not sent anything yet (so that a batch of new
    connections is not accepted before the last one's requests are in);
    with no slot free, as many as its refusal budget allows (see above).
    ``draw`` (a float in [0, 1) per call) takes each pacing hold's share
    of its jitter: random, unless a test fixes it."""

    protocol = GatewayChannel
    requestFactory = GatewayRequest
    displayTracebacks = False

    def __init__(self, front: Front, draw: Callable[[], float] = random.random,
                 **kwargs: Any) -> None:
        server = front.server
        kwargs.setdefault("timeout", server.idle_timeout_ms / 1000.0)
        kwargs.setdefault("parsePOSTFormSubmission", False)  # bodies are JSON, not forms
        super().__init__(front.resource(), **kwargs)
        self.front = front
        self.draw = draw
        self.request_timeout = server.request_timeout_ms / 1000.0
        self._unheard = 0  # accepted for a slot in this period, not heard from yet
        self._period = 0
        self._refusals = float(REFUSAL_BURST)
        # Its connections' timeouts (deadlines.py, GatewayChannel): idle, a
        # request's arrival, a stalled close's drain; and the connections
        # whose 503 or next read waits (held), the longest held first.
        clock = self.reactor
        self.idle: Deadlines[GatewayChannel] = Deadlines(
            clock, self.timeOut or 0.0, GatewayChannel.timeoutConnection)
        self.arrivals: Deadlines[GatewayChannel] = Deadlines(
            clock, self.request_timeout, GatewayChannel.too_slow)
        self.drains: Deadlines[GatewayChannel] = Deadlines(
            clock, self.request_timeout, GatewayChannel.not_drained)
        self.held: Timeline[GatewayChannel] = Timeline(clock, GatewayChannel.release_hold)
        self.queue = SlotQueue(front.clock, front.admission)
        front.clients = self
        front.admission.watch(self.sync_accepting)
        front.admission.on_drain(self._release_held)
        front.admission.lag.watch(self._new_period)

    @property
    def max_connections(self) -> int:
        return self.front.server.max_connections

    listened = 0.0  # when its last port began to listen (``listening``)

    def listening(self, port: Any) -> None:
        # A socket handed over by systemd (or a restarted instance's) may
        # hold requests that arrived before the gateway ran: they did not
        # wait for the gateway's room, and count their deadline from here.
        self.listened = self.front.clock.seconds()
        super().listening(port)

    def _slots(self) -> int:
        return self.front.admission.room - self._unheard - len(self.queue)

    shut = False  # accepting nothing (``accept_after``)

    def accept_after(self, ready: Deferred[Any]) -> None:
        """Accept no connection until ``ready`` fires (the daemon warms up:
        warmup.py); connections wait in the listening socket's backlog."""
        self.shut = True
        self.sync_accepting()

        def open_(result: Any) -> Any:
            self.shut = False
            self.sync_accepting()
            return result

        ready.addBoth(open_)

    def room(self) -> int:
        if self.shut:
            return 0
        slots = self._slots()
        return min(super().room(), slots if slots > 0 else int(self._refusals))

    def unheard_connection(self) -> int | None:
        """Count a new connection: for a slot (its period returned, until it
        is heard from) or against the refusal budget (None)."""
        if self._slots() > 0:
            self._unheard += 1
            self.sync_accepting()
            return self._period
        self._refusals -= 1
        self.sync_accepting()
        return None

    def connection_heard(self, period: int) -> None:
        """A connection of ``period`` sent its first bytes, or closed."""
        if period == self._period:
            self._unheard -= 1
            self.sync_accepting()

    def request_answered(self) -> None:
        """A request was answered: the refusal budget grows."""
        self._refusals = min(REFUSAL_BURST, self._refusals + REFUSALS_PER_ANSWER)

    def _release_held(self) -> None:
        # Draining: no hold or wait outlasts the daemon; the client gets its
        # 503 now and, coming back, one that closes the connection.
        for channel in list(self.held):
            channel.release_hold()
        self.queue.release_all()

    def _new_period(self, lag: ReactorLag) -> None:
        # Connections that have not spoken by now stop holding the door shut.
        # (The admission followed this lag first: it watched it first.)
        self._period += 1
        self._unheard = 0
        self._refusals = min(REFUSAL_BURST, self._refusals + REFUSALS_PER_PERIOD)
        self._release_into_room()
        self.sync_accepting()

    def _release_into_room(self) -> None:
        """End the longest holds early, one per slot that no request took in
        the whole last lag period: with every client held, the gateway
        would otherwise idle until their holds end, and their next requests
        arrive all at once (a 2,500-client storm on PyPy had its limit cut
        to 8 and kept there, unused, for most of 15 s)."""
        spare = min(self.front.admission.unused, self._slots(), len(self.held))
        if spare <= 0:
            return
        for channel in list(islice(self.held, spare)):
            channel.release_into_room()

    def log(self, request: http.Request) -> None:
        """No per-request line in the daemon's log (see the access log)."""
