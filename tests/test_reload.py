"""Swapping the configuration of a running gateway (what SIGHUP does), in
process: a request in flight in memory on a fake clock (tests/fakes.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.logger import capturedLogs, formatEvent

from txfanout import config as configuration
from txfanout.config import parse
from txfanout.lifecycle import Lifecycle
from txfanout.listeners import Listener
from txfanout.sdnotify import Notifier

from .configs import route_config
from .daemon import NotifySocket
from .fakes import Network


def test_reconfigure_keeps_the_state_of_unchanged_partners(net: Network) -> None:
    gw = net.gateway(route_config({"a": {"url": "http://127.0.0.1:1/a"},
                                   "b": {"url": "http://127.0.0.1:1/b"}}))
    gateway = gw.gateway
    before = gateway.snapshot
    before.partners["a"].slots.inflight = 2  # calls in flight when the reload comes
    before.partners["b"].slots.inflight = 3
    gateway.reconfigure(parse(route_config({
        "a": {"url": "http://127.0.0.1:1/a"},
        "b": {"url": "http://127.0.0.1:1/b", "max_concurrency": 5},
        "c": {"url": "http://127.0.0.1:1/c"}})))
    after = gateway.snapshot
    assert after is not before
    assert after.partners["a"] is before.partners["a"] and after.partners["a"].slots.inflight == 2
    assert after.partners["b"] is not before.partners["b"]
    assert after.partners["b"].config.max_concurrency == 5
    # Changed settings, same partner: calls started before still count against its cap.
    assert after.partners["b"].slots is before.partners["b"].slots
    assert after.partners["b"].slots.inflight == 3
    assert after.partners["c"].slots.inflight == 0
    assert set(after.partners) == {"a", "b", "c"}
    # The pool keeps as many idle connections per host as the caps allow.
    assert gateway.upstream.pool.maxPersistentPerHost == 256 + 5 + 256


def test_a_request_in_flight_finishes_on_the_config_it_started_with(net: Network):
    partner = net.partner()
    gw = net.gateway(route_config({"slow": {"url": partner.url("/delay/200"),
                                            "timeout_ms": 480}}, deadline_ms=1000))
    in_flight = gw.send("/bid")
    net.run()
    assert partner.seen == 1
    gw.gateway.reconfigure(parse({
        "server": {"max_inflight": 1},
        "partners": {"other": {"url": partner.url("/ok")}},
        "routes": {"new": {"partners": ["other"]}}}))
    # New requests see the new config at once: its admission limit, which
    # the held request fills...
    assert gw.post("/new").code == 503
    # ...while the held request ends on its own snapshot: partner and route.
    answer = gw.answer(in_flight)
    assert answer.code == 200
    assert answer.outcomes() == {"slow": "ok"}
    assert answer.results()["slow"]["latency_ms"] == 200.0
    assert gw.post("/bid").code == 404
    assert gw.post("/new").outcomes() == {"other": "ok"}


def lifecycle(gateway: Any, reload_config: Any, notifier: Notifier) -> Lifecycle:
    idle = serverFromString(reactor, "tcp:0")  # never listened on here
    return Lifecycle(reactor, gateway, Listener("public", idle, None),
                     Listener("admin", idle, None), reload_config, notifier, {})


def test_reload_refuses_a_bad_file_naming_each_key(tmp_path: Path, net: Network,
                                                   no_logged_errors: list) -> None:
    gw = net.gateway(route_config({"a": {"url": "http://127.0.0.1:1/a"}}))
    before = gw.gateway.snapshot
    path = tmp_path / "txfanout.toml"
    path.write_text('[server]\ndeadline_ms = 5\n[partners.a]\nurl = "ftp://x"\n'
                    '[routes.bid]\npartners = ["a", "zz"]\n')
    manager = NotifySocket(str(tmp_path / "notify"))
    life = lifecycle(gw.gateway, lambda: configuration.load(str(path)), Notifier(manager.name))
    with capturedLogs() as events:
        assert life.reload() is False
    lines = [formatEvent(e) for e in events]
    assert lines == [
        "reload refused: server.deadline_ms: must be an integer from 10 to 60000",
        "reload refused: partners.a.url: must be an http:// or https:// URL",
        "reload refused: routes.bid.partners: unknown partner 'zz'",
        "reload refused (3 errors); still serving the previous configuration"]
    assert gw.gateway.snapshot is before
    assert [formatEvent(e) for e in no_logged_errors] == lines
    no_logged_errors.clear()  # expected: they are the point of this test
    assert manager.wait_for("RELOADING")
    assert manager.wait_for("READY")["STATUS"].startswith("reload refused (3 errors); serving")
    manager.close()


def test_reload_keeps_options_and_bound_addresses(tmp_path: Path, net: Network) -> None:
    gw = net.gateway(route_config({"a": {"url": "http://127.0.0.1:1/a"}}, deadline_ms=250))
    path = tmp_path / "txfanout.toml"
    path.write_text('[server]\nlisten = "tcp:8082"\nadmin = "tcp:9091:interface=127.0.0.1"\ndeadline_ms = 900\n'
                    'max_inflight = 7\n[partners.a]\nurl = "http://127.0.0.1:1/a"\n'
                    '[routes.bid]\npartners = ["a"]\n[routes.two]\npartners = ["a"]\n')
    overrides = {"deadline_ms": 250}
    life = lifecycle(gw.gateway, lambda: configuration.load(str(path), overrides),
                     Notifier(None))
    with capturedLogs() as events:
        assert life.reload() is True
    server = gw.gateway.snapshot.config.server
    assert server.deadline_ms == 250  # the option still wins
    assert server.max_inflight == 7  # the file's new value
    assert (server.listen, server.admin) == ("tcp:8080:backlog=4096",
                                             "tcp:8081:interface=127.0.0.1")
    assert gw.gateway.snapshot.selector.has_route("two")
    lines = [formatEvent(e) for e in events]
    assert "reload: server.listen changed from tcp:8080:backlog=4096 to tcp:8082; restart to " \
           "apply it (still on tcp:8080:backlog=4096)" in lines
    assert any(line.startswith("reload: server.admin changed") for line in lines)
    assert lines[-1].startswith("reloaded: 1 partner, 2 routes in ")


def test_no_reload_without_a_file(net: Network) -> None:
    gw = net.gateway(route_config({"a": {"url": "http://127.0.0.1:1/a"}}))
    with capturedLogs() as events:
        assert lifecycle(gw.gateway, None, Notifier(None)).reload() is False
    assert [formatEvent(e) for e in events] == ["reload ignored: no --config file to re-read"]
