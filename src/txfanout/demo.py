"""Built-in demo partners on loopback, and a config that uses them.

``twistd -n fanout --demo`` starts them so that a newcomer sees a real
fan-out with no partner of their own: a fast one, a normal one, one with a
slow tail that sometimes passes its 300 ms timeout, one that fails about 5%
of the time with a 500, one that only bids for European countries and one
that only bids for phones (Android and iOS). ``txfanout init-config PATH``
writes the same configuration as a commented file of one's own
(:func:`starter_config`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from . import __version__
from .config import ServerConfig, TargetingConfig

DEMO_PORT = 7100
EU = ("DE", "FR", "GB", "ES", "IT", "NL", "PL", "SE")


@dataclass(frozen=True)
class Behaviour:
    """One demo partner: how it answers, and who it is called for."""

    delay: Callable[[random.Random], float]  # seconds before it answers
    failure: float                           # chance of a 500
    says: str                                # what it does, in the starter config
    only: dict[str, list[str]] = field(default_factory=dict)  # countries / os


BEHAVIOURS: dict[str, Behaviour] = {
    "fast": Behaviour(lambda rnd: rnd.uniform(0.001, 0.003), 0.0, "answers in 1-3 ms"),
    "normal": Behaviour(lambda rnd: rnd.uniform(0.020, 0.060), 0.0, "answers in 20-60 ms"),
    "slow": Behaviour(lambda rnd: rnd.uniform(0.250, 0.400) if rnd.random() < 0.1
                      else rnd.uniform(0.050, 0.150), 0.0,
                      "50-150 ms, and 1 call in 10 takes 250-400 ms: a timeout past 300"),
    "flaky": Behaviour(lambda rnd: rnd.uniform(0.005, 0.030), 0.05,
                       "answers 500 about 1 call in 20 (outcome http_error)"),
    "eu": Behaviour(lambda rnd: rnd.uniform(0.010, 0.040), 0.0,
                    "bids for European countries only", {"countries": list(EU)}),
    "mobile": Behaviour(lambda rnd: rnd.uniform(0.010, 0.040), 0.0,
                        "bids for phones only", {"os": ["android", "ios"]}),
}
TIMEOUT_MS = 300


class DemoPartner(Resource):
    """Answers any POST after a delay drawn from its behaviour."""

    isLeaf = True

    def __init__(self, reactor: Any, name: str, rnd: random.Random) -> None:
        super().__init__()
        self._reactor = reactor
        self._name = name
        self._behaviour = BEHAVIOURS[name]
        self._rnd = rnd

    def render_POST(self, request: Request) -> Any:
        failed = self._rnd.random() < self._behaviour.failure
        bid = round(self._rnd.uniform(0.1, 3.0), 2)

        def answer() -> None:
            body: dict[str, object]
            if failed:
                request.setResponseCode(500)
                body = {"partner": self._name, "error": "demo failure"}
            else:
                body = {"partner": self._name, "bid": bid}
            request.setHeader(b"Content-Type", b"application/json")
            request.write(json.dumps(body).encode("utf-8"))
            request.finish()

        timer = self._reactor.callLater(self._behaviour.delay(self._rnd), answer)
        request.notifyFinish().addErrback(lambda _: timer.active() and timer.cancel())
        return NOT_DONE_YET


BACKLOG = 1024  # connections the kernel holds for the demo partners until accepted


def listen(reactor: Any, port: int, seed: int | None = None) -> IListeningPort:
    """Serve the demo partners on 127.0.0.1:``port`` (``/fast``, ``/slow``...)."""
    root = Resource()
    rnd = random.Random(seed)
    for name in BEHAVIOURS:
        root.putChild(name.encode("ascii"), DemoPartner(reactor, name, rnd))
    site = Site(root)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    # The gateway opens up to max_concurrency connections per partner at once
    # (a burst of 60 requests: 240): with Twisted's backlog of 50 the kernel
    # dropped the rest, their SYNs retried after 1 s, past every timeout.
    return reactor.listenTCP(port, site, backlog=BACKLOG,  # type: ignore[no-any-return]
                             interface="127.0.0.1")


def base_url(port: int = DEMO_PORT) -> str:
    return f"http://127.0.0.1:{port}"


def demo_config(base: str) -> dict[str, Any]:
    """A raw (unvalidated) config document calling the demo partners."""
    partners = {f"demo-{name}": {"url": f"{base}/{name}", "timeout_ms": TIMEOUT_MS,
                                 **behaviour.only}
                for name, behaviour in BEHAVIOURS.items()}
    return {"partners": partners, "routes": {"bid": {"partners": list(partners)}}}


def _toml(value: Any) -> str:
    return json.dumps(value)  # strings and lists of strings: the same in TOML


def starter_config(port: int = DEMO_PORT) -> str:
    """The demo configuration as a commented TOML file to make one's own
    (``txfanout init-config``); it parses to :func:`demo_config`."""
    server, targeting = ServerConfig(), TargetingConfig()
    lines = [
        f"# txfanout configuration, written by txfanout init-config (txfanout {__version__}).",
        "#",
        "# It calls the demo partners that --demo starts, so it runs as it is:",
        "#   twistd -n --pidfile= fanout --demo --config THIS-FILE",
        "#   curl -s -X POST localhost:8080/bid -H 'X-Country: DE' -H 'X-OS: android' -d '{}'",
        "#",
        "# To make it yours: give each partner your partner's URL (and headers,",
        "# e.g. an API key), name your routes, then run it without --demo. Check",
        "# it with: txfanout check-config THIS-FILE. Every key and its default:",
        "# docs/configuration.rst in txfanout's sources. SIGHUP re-reads the file.",
        "",
        "[server]",
        f"{'# listen = ' + _toml(server.listen):<40} # the public endpoint",
        f"{'# admin = ' + _toml(server.admin):<40} # /metrics, /healthz, /readyz, /debug/",
        f"{'# deadline_ms = ' + str(server.deadline_ms):<40} # budget per request, from arrival",
        "",
        "[targeting]  # where a request says its country and its OS",
        f"# country_header = {_toml(targeting.country_header)}",
        f"# country_field = {_toml(targeting.country_field)}  # a field of the JSON body",
        f"# os_header = {_toml(targeting.os_header)}",
        f"# os_field = {_toml(targeting.os_field)}  # without either: from the User-Agent",
        "",
        "# One table per partner: a URL that takes a POST of the client's JSON body.",
    ]
    document = demo_config(base_url(port))
    for name, partner in document["partners"].items():
        lines += ["", f"[partners.{name}]   # {BEHAVIOURS[name[5:]].says}"]
        lines += [f"{key} = {_toml(value)}" for key, value in partner.items()]
    lines += ["", "# One table per route: POST /bid calls the partners that match the",
              "# request's country and OS, in this order (at most max_partners of them).",
              "[routes.bid]"]
    lines += [f"{key} = {_toml(value)}" for key, value in document["routes"]["bid"].items()]
    return "\n".join(lines) + "\n"
