"""Built-in demo partners on loopback, and a config that uses them.

``twistd -n fanout --demo`` starts them so that a newcomer sees a real
fan-out with no partner of their own: a fast one, a normal one, one with a
slow tail that sometimes passes 300 ms, one that fails about 5% of the time
with a 500, and one that only bids for European countries.
"""

from __future__ import annotations

import json
import random
from typing import Any

from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

# name -> (delay in seconds, chance of a 500)
BEHAVIOURS: dict[str, tuple[Any, float]] = {
    "fast": (lambda rnd: rnd.uniform(0.001, 0.003), 0.0),
    "normal": (lambda rnd: rnd.uniform(0.020, 0.060), 0.0),
    "slow": (lambda rnd: rnd.uniform(0.250, 0.400) if rnd.random() < 0.1
             else rnd.uniform(0.050, 0.150), 0.0),
    "flaky": (lambda rnd: rnd.uniform(0.005, 0.030), 0.05),
    "eu": (lambda rnd: rnd.uniform(0.010, 0.040), 0.0),
}


class DemoPartner(Resource):
    """Answers any POST after a delay drawn from its behaviour."""

    isLeaf = True

    def __init__(self, reactor: Any, name: str, rnd: random.Random) -> None:
        super().__init__()
        self._reactor = reactor
        self._name = name
        self._delay, self._fail = BEHAVIOURS[name]
        self._rnd = rnd

    def render_POST(self, request: Request) -> Any:
        failed = self._rnd.random() < self._fail
        bid = round(self._rnd.uniform(0.1, 3.0), 2)

        def answer() -> None:
            if failed:
                request.setResponseCode(500)
                body = {"partner": self._name, "error": "demo failure"}
            else:
                body = {"partner": self._name, "bid": bid}
            request.setHeader(b"Content-Type", b"application/json")
            request.write(json.dumps(body).encode("utf-8"))
            request.finish()

        timer = self._reactor.callLater(self._delay(self._rnd), answer)
        request.notifyFinish().addErrback(lambda _: timer.active() and timer.cancel())
        return NOT_DONE_YET


def listen(reactor: Any, port: int, seed: int | None = None) -> IListeningPort:
    """Serve the demo partners on 127.0.0.1:``port`` (``/fast``, ``/slow``...)."""
    root = Resource()
    rnd = random.Random(seed)
    for name in BEHAVIOURS:
        root.putChild(name.encode("ascii"), DemoPartner(reactor, name, rnd))
    site = Site(root)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    return reactor.listenTCP(port, site, interface="127.0.0.1")  # type: ignore[no-any-return]


def demo_config(base_url: str) -> dict[str, Any]:
    """A raw (unvalidated) config document calling the demo partners."""
    eu = ["DE", "FR", "GB", "ES", "IT", "NL", "PL", "SE"]
    return {
        "partners": {
            "demo-fast": {"url": f"{base_url}/fast", "timeout_ms": 300},
            "demo-normal": {"url": f"{base_url}/normal", "timeout_ms": 300},
            "demo-slow": {"url": f"{base_url}/slow", "timeout_ms": 300},
            "demo-flaky": {"url": f"{base_url}/flaky", "timeout_ms": 300},
            "demo-eu": {"url": f"{base_url}/eu", "timeout_ms": 300, "countries": eu},
        },
        "routes": {
            "bid": {"partners": ["demo-fast", "demo-normal", "demo-slow", "demo-flaky",
                                 "demo-eu"]},
        },
    }
