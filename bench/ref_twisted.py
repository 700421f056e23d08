"""bare-twisted: the floor of what a Twisted fan-out costs.

A minimal twisted.web Resource + Agent on one tuned HTTPConnectionPool, no
features: POST /anything fans the body out to N partner URLs, each call
bounded by ``min(timeout, deadline)``; stragglers are cancelled (their
connection aborted); the answer is the same JSON shape as txfanout's.
``GET /healthz`` answers 200; ``GET /stats`` answers JSON counters of the 200 answers given
since start and of the complete ones (every partner ok, as its
X-Fanout-Complete says).

    python bench/ref_twisted.py --port 8081 --fanout 2 \\
        --partner-url 'http://127.0.0.1:8000/bid{i}' --timeout-ms 300 --deadline-ms 500
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IConsumer
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer


class QuietFactory(_HTTP11ClientFactory):
    """No log line per upstream connection."""

    noisy = False


@implementer(IBodyProducer)
class Body:
    """A bytes body written in one go."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class Fanout(Resource):
    """POST fans out; GET /healthz is the readiness probe."""

    isLeaf = True

    def __init__(self, agent: Agent, urls: list[bytes], timeout_s: float) -> None:
        super().__init__()
        self.agent = agent
        self.urls = urls
        self.timeout_s = timeout_s
        self.headers = Headers({b"Content-Type": [b"application/json"]})
        self.counter = 0
        self.prefix = os.urandom(4).hex()
        self.answers = 0  # 200 answers written to a client still there
        self.complete = 0  # of which every partner was ok
        self.started = time.monotonic()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        if request.path == b"/stats":
            return json.dumps({"answers": self.answers, "complete": self.complete,
                               "uptime_s": round(time.monotonic() - self.started, 3)}).encode()
        return b'{"status":"ok"}'

    def call(self, index: int, url: bytes, body: bytes) -> defer.Deferred[dict[str, Any]]:
        started = reactor.seconds()
        timed_out: list[bool] = []

        def on_timeout() -> None:
            timed_out.append(True)
            d.cancel()

        def ok(result: tuple[int, bytes]) -> dict[str, Any]:
            code, data = result
            return {"partner": f"p{index + 1}",
                    "outcome": "ok" if 200 <= code < 300 else "http_error", "status": code,
                    "latency_ms": round((reactor.seconds() - started) * 1000, 1),
                    "body": data.decode("utf-8", "replace")}

        def failed(f: Any) -> dict[str, Any]:
            return {"partner": f"p{index + 1}", "outcome": "timeout" if timed_out else "error",
                    "status": None, "latency_ms": round((reactor.seconds() - started) * 1000, 1),
                    "body": None}

        def read(response: Any) -> defer.Deferred[tuple[int, bytes]]:
            return readBody(response).addCallback(lambda data: (response.code, data))

        d = self.agent.request(b"POST", url, self.headers.copy(), Body(body))
        d.addCallback(read)
        timer = reactor.callLater(self.timeout_s, on_timeout)

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(stop_timer)
        return d.addCallbacks(ok, failed)

    def render_POST(self, request: Request) -> Any:
        started = reactor.seconds()
        body = request.content.read()
        calls = [self.call(i, url, body) for i, url in enumerate(self.urls)]
        self.counter += 1
        request_id = f"{self.prefix}-{self.counter:x}"

        def answer(results: list[tuple[bool, dict[str, Any]]]) -> None:
            if request.finished or request._disconnected:
                return
            entries = [r for _, r in results]
            complete = all(e["outcome"] == "ok" for e in entries)
            data = json.dumps({"request_id": request_id, "route": "bid", "complete": complete,
                               "elapsed_ms": round((reactor.seconds() - started) * 1000, 1),
                               "results": entries}).encode()
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"X-Fanout-Complete", b"true" if complete else b"false")
            request.setHeader(b"Content-Length", b"%d" % len(data))
            request.write(data)
            request.finish()
            self.answers += 1
            self.complete += complete

        def gone(_: Any) -> None:
            for c in calls:
                c.cancel()

        request.notifyFinish().addErrback(gone)
        defer.DeferredList(calls, consumeErrors=True).addCallback(answer)
        return NOT_DONE_YET


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--fanout", type=int, required=True)
    p.add_argument("--partner-url", required=True,
                   help="partner URL; '{i}' is replaced by 1..fanout")
    p.add_argument("--timeout-ms", type=int, default=300)
    p.add_argument("--deadline-ms", type=int, default=500)
    p.add_argument("--pool-size", type=int, default=0,
                   help="maxPersistentPerHost (default 256 x fanout)")
    a = p.parse_args()
    urls = [a.partner_url.replace("{i}", str(i + 1)).encode() for i in range(a.fanout)]
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = a.pool_size or 256 * a.fanout
    pool.cachedConnectionTimeout = 60
    pool.retryAutomatically = False
    pool._factory = QuietFactory
    agent = Agent(reactor, pool=pool)
    site = Site(Fanout(agent, urls, min(a.timeout_ms, a.deadline_ms) / 1000.0))
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    reactor.listenTCP(a.port, site, backlog=4096, interface="127.0.0.1")
    print(f"bare-twisted listening on 127.0.0.1:{a.port}, fan-out {a.fanout}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
