"""``--warmup N``: the request path warmed on a throwaway gateway before the
daemon accepts or reports ready (warmup.py). The warm-up itself over real
loopback sockets; the accept gate and the lifecycle on fakes; the daemon
(slow) once, end to end."""

from __future__ import annotations

import http.client
import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs, formatEvent

from twisted.internet.endpoints import serverFromString
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from txfanout.config import parse
from txfanout.gateway import Gateway
from txfanout.lifecycle import Lifecycle
from txfanout.listeners import Listener
from txfanout.sdnotify import Notifier
from txfanout.site import GatewaySite
from txfanout import warmup
from txfanout.warmup import ANSWER, warm_up

from .configs import route_config
from .daemon import Daemon, ThreadedPartner, config_text
from .fakes import FakePort


def gateway() -> Gateway:
    return Gateway(reactor, parse(route_config({"p": {"url": "http://127.0.0.1:9/"}})))


@pytest_twisted.ensureDeferred
async def test_a_warm_up_answers_every_request_and_leaves_no_socket_open() -> None:
    readers, writers = set(reactor.getReaders()), set(reactor.getWriters())
    with capturedLogs() as events:
        answered = await warm_up(reactor, 40)
    assert answered == 40
    # Nothing it opened is still open (what earlier tests left may close
    # meanwhile: that is not this test's).
    assert (set(reactor.getReaders()) - readers, set(reactor.getWriters()) - writers) == \
        (set(), set())
    # In the daemon's log, its line and Twisted's for its two ports; none
    # per request or per connection.
    said = [formatEvent(e) for e in events
            if not re.fullmatch(r".* starting on \d+|\(TCP Port \d+ Closed\)", formatEvent(e))]
    assert len(said) == 1 and re.fullmatch(r"warmed up: 40 of 40 requests answered in "
                                           r"\d+\.\d s", said[0]), said


@pytest_twisted.ensureDeferred
async def test_a_cold_start_slower_than_the_partners_timeout_still_warms_the_whole_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A cold PyPy took up to 750 ms a call; with the default 300 ms timeout
    # the first wave timed out, the breakers opened and the rest were 503s.
    def slow(self: Resource, request: Request) -> int:
        reactor.callLater(0.4, lambda: (request.write(ANSWER), request.finish()))
        return NOT_DONE_YET
    monkeypatch.setattr(warmup._Partner, "render_POST", slow)
    made: list[Gateway] = []

    def gateway(*args: Any) -> Gateway:
        made.append(Gateway(*args))
        return made[-1]
    monkeypatch.setattr(warmup, "Gateway", gateway)
    assert await warm_up(reactor, 2 * warmup.CLIENTS) == 2 * warmup.CLIENTS
    # Every call answered: none timed out, none refused by an open breaker.
    calls = re.findall(r'txfanout_partner_calls_total\{outcome="(\w+)",partner="w\d"\} (\S+)',
                       made[0].metrics.exposition().decode())
    assert {outcome for outcome, count in calls if float(count)} == {"ok"}


def test_the_public_port_accepts_nothing_until_the_warm_up_is_over() -> None:
    serving = gateway()
    site = GatewaySite(serving, reactor=reactor)
    warmed: Deferred[int] = Deferred()
    site.accept_after(warmed)
    port = FakePort()
    site.listening(port)
    assert not port.reading
    serving.admission.admit()
    serving.admission.release()  # the room changed: still shut
    assert not port.reading
    warmed.callback(40)
    assert port.reading and warmed.result == 40


@pytest.mark.parametrize("outcome", ["answered", "failed"])
def test_ready_waits_for_the_warm_up_and_a_failed_one_is_served_without(outcome: str) -> None:
    serving = gateway()
    site = GatewaySite(serving, reactor=reactor)
    idle = serverFromString(reactor, "tcp:0")  # never listened on here
    warmed: Deferred[int] = Deferred()
    life = Lifecycle(Clock(), serving, Listener("public", idle, site),
                     Listener("admin", idle, None), None, Notifier(None), {},
                     warm_up=lambda: warmed)
    life.public.ready.callback(None)
    life.admin.ready.callback(None)
    serving.lag.start()  # as GatewayService starts it
    with capturedLogs() as events:
        life._start()
        # Shut, and the warm-up's lag is not the gateway's (it steers the limit).
        assert not serving.ready and site.shut and not serving.lag.running
        if outcome == "answered":
            warmed.callback(40)
        else:
            warmed.errback(RuntimeError("no loopback"))
    assert serving.ready and not site.shut and serving.lag.running
    serving.lag.stop()
    said = [formatEvent(e) for e in events]
    assert ("warm-up failed, serving without it: no loopback" in said) == (outcome == "failed")


@pytest.mark.slow
def test_the_daemon_warms_up_before_it_is_ready_and_counts_none_of_it(
        tmp_path: Path, threaded_partner: ThreadedPartner) -> None:
    path = tmp_path / "txfanout.toml"
    path.write_text(config_text({"bid": "/ok"}, threaded_partner))
    daemon = Daemon("--config", str(path), "--warmup", "200")
    try:
        ready = daemon.wait_for("ready: pid")
        warmed = daemon.wait_for("warmed up:")
        assert "200 of 200 requests answered" in warmed
        assert daemon.log.index(warmed) < daemon.log.index(ready)
        assert daemon.post("/bid")[0] == 200
        conn = http.client.HTTPConnection("127.0.0.1", daemon.admin_port, timeout=10)
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
        conn.close()
        # The one request above, and no trace of the warm-up's 200.
        assert 'txfanout_requests_total{code="200",route="bid"} 1.0' in metrics
        assert 'partner="w0"' not in metrics and 'route="f2"' not in metrics
    finally:
        assert daemon.stop() == 0, "".join(daemon.log)
