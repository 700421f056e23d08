"""A warm-up of the request path before the daemon takes traffic (PyPy).

PyPy compiles what runs often. Until it has, a request costs several times
what it will, and a cold start under load runs the event loop 250-350 ms
late: the gateway refuses for lag, cuts its in-flight limit, and clients
that do not wait are held for seconds (bench/RESULTS.md, sixth sitting).
``--warmup N`` sends N requests through a gateway of its own first: the
same code on loopback, a throwaway instance whose partners (on loopback
too) answer at once. The daemon accepts on its public port and reports
ready only after that. The real gateway's metrics, limit, breakers and pool
never see it, and nothing of it is left: its ports and connections are
closed before the daemon is ready.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from .config import parse
from .gateway import Gateway
from .pool import PartnerPool
from .site import GatewaySite
from .upstream import BytesProducer

log = Logger()

CLIENTS = 16  # requests in flight at once
FANOUTS = (2, 8)  # its routes: a common fan-out and the largest
# Cold, a call on loopback took up to 750 ms (PyPy, a slow 2-core VM): past
# the default 300 ms timeout, whose breaker then opened and turned the rest
# of the warm-up into 503s. Its time bounds are generous and it has no
# breaker: how slow a cold start is must not decide what path gets warmed.
BUDGET_MS = 10000
ANSWER = b'{"bid": 0.5, "currency": "USD", "ad": "' + b"x" * 56 + b'"}'  # 100 bytes


class _Partner(Resource):
    """Answers every POST at once."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return ANSWER


class _QuietSite(Site):
    """The partners' site: no start-up or access line in the daemon's log."""

    noisy = False

    def log(self, request: http.Request) -> None:
        pass


class _Drain(Protocol):
    """Reads an answer's body; ``done`` fires at its end."""

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(None)


def _config(partner_url: str) -> Any:
    partners = {f"w{i}": {"url": f"{partner_url}/w{i}", "timeout_ms": BUDGET_MS,
                          "breaker_failures": 0}
                for i in range(max(FANOUTS))}
    return parse({"server": {"listen": "tcp:0:interface=127.0.0.1",
                             "deadline_ms": BUDGET_MS + 100},
                  "partners": partners,
                  "routes": {f"f{n}": {"partners": list(partners)[:n]} for n in FANOUTS}})


@inlineCallbacks
def warm_up(reactor: Any, requests: int) -> Any:
    """Send ``requests`` through a throwaway gateway on loopback; fires
    with the number answered 200, once its ports and connections are
    closed."""
    started = reactor.seconds()
    partners = _QuietSite(_Partner(), parsePOSTFormSubmission=False)
    partner = reactor.listenTCP(0, partners, interface="127.0.0.1")
    gateway = Gateway(reactor, _config(f"http://127.0.0.1:{partner.getHost().port}"))
    site = GatewaySite(gateway, reactor=reactor)
    site.noisy = False  # no "Starting factory" lines in the daemon's log
    public = reactor.listenTCP(0, site, interface="127.0.0.1")
    pool = PartnerPool(reactor)  # quiet: no line per connection
    pool.maxPersistentPerHost = CLIENTS
    agent = Agent(reactor, pool=pool)
    base = f"http://127.0.0.1:{public.getHost().port}/"
    left = [requests]
    answered = [0]

    @inlineCallbacks
    def client() -> Any:
        while left[0] > 0:
            left[0] -= 1
            route = f"f{FANOUTS[left[0] % len(FANOUTS)]}"
            response = yield agent.request(
                b"POST", (base + route).encode("ascii"),
                Headers(), BytesProducer(b"{}"))
            body = _Drain()
            response.deliverBody(body)
            yield body.done
            answered[0] += response.code == 200

    try:
        yield gatherResults([client() for _ in range(CLIENTS)], consumeErrors=True)
    finally:
        yield pool.closeCachedConnections()
        yield public.stopListening()
        yield gateway.close()
        yield partner.stopListening()
        yield deferLater(reactor, 0, lambda: None)  # a turn: the server ends see the closes
    log.info("warmed up: {answered} of {requests} requests answered in {s:.1f} s",
             answered=answered[0], requests=requests, s=reactor.seconds() - started)
    return answered[0]
