"""The twistd plugin: options, errors, and the demo, in memory on a fake
clock (tests/fakes.py) and as a real process (slow)."""

from __future__ import annotations

import json
import select
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import IServiceCollection
from twisted.plugin import IPlugin, getPlugins
from twisted.python.usage import UsageError

import txfanout
from txfanout import about, demo, tap
from txfanout.gcpacer import GcPacer

from .daemon import Daemon, free_port
from .fakes import Network

CONFIG = """
[server]
listen = "tcp:18080"
deadline_ms = 400
max_inflight = 10

[partners.a]
url = "http://127.0.0.1:7001/bid"

[routes.bid]
partners = ["a"]
"""




def build_info(exposition: str) -> dict[str, object]:
    """The labels and value of txfanout_build_info in a /metrics text."""
    (family,) = [f for f in text_string_to_metric_families(exposition)
                 if f.name == "txfanout_build_info"]
    (sample,) = family.samples
    return {**sample.labels, "value": sample.value}


def options(*argv: str) -> tap.Options:
    o = tap.Options()
    o.parseOptions(list(argv))
    return o


def test_plugin_is_discoverable():
    makers = {p.tapname: p for p in getPlugins(IPlugin) if hasattr(p, "tapname")}
    assert makers["fanout"].module == "txfanout.tap"


def test_options_win_over_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    o = options("--config", str(path), "--deadline-ms", "250", "--max-inflight", "99",
                "--listen", "tcp:0", "--admin", "tcp:0:interface=127.0.0.1")
    server = o.config.server
    assert (server.deadline_ms, server.max_inflight, server.listen) == (250, 99, "tcp:0")
    o = options("--config", str(path))
    assert (o.config.server.deadline_ms, o.config.server.listen) == (400, "tcp:18080")


def test_bad_option_values_name_the_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    with pytest.raises(UsageError, match=r"server.deadline_ms \(--deadline-ms\): must be an "
                                         "integer from 10 to 60000"):
        options("--config", str(path), "--deadline-ms", "0")
    with pytest.raises(UsageError, match=r"server.listen \(--listen\): must be a Twisted "
                                         "endpoint"):
        options("--config", str(path), "--listen", "8080")
    with pytest.raises(UsageError, match="--deadline-ms takes a whole number, e.g. "
                                         "--deadline-ms 500 \\(not 'abc'\\)"):
        options("--config", str(path), "--deadline-ms", "abc")
    with pytest.raises(UsageError, match="cannot read"):
        options("--config", str(tmp_path / "missing.toml"))
    with pytest.raises(UsageError, match=r"give --config PATH \(txfanout init-config PATH "
                                         r"writes a starter\), or --demo"):
        options()


def test_make_service_builds_listeners_and_demo(tmp_path):
    o = options("--demo", "--demo-port", str(free_port()))
    top = tap.makeService(o)
    assert IServiceCollection.providedBy(top)
    # demo partners, pool closer, overdue watch, GC pacer, public, admin, lifecycle
    assert len(list(top)) == 7
    assert any(isinstance(s, tap.Running) and isinstance(s.thing, GcPacer) for s in top)
    assert set(o.config.routes) == {"bid"}


# The demo partners' delays in ms (a slow tail past the 300 ms timeout).
DEMO_DELAYS = {"demo-fast": (1, 3), "demo-normal": (20, 60), "demo-slow": (50, 400),
               "demo-flaky": (5, 30), "demo-eu": (10, 40)}


def test_the_demo_partners_answer_a_fanout_each_as_it_says(net: Network):
    demo.listen(net.clock, 30000, seed=7)
    gw = net.gateway(demo.demo_config("http://127.0.0.1:30000"))
    seen = []
    for n in range(100):
        answer = gw.post(headers={"X-Country": "DE" if n % 2 else "US"})
        assert answer.code == 200
        results = answer.results()
        assert set(results) == set(DEMO_DELAYS) - ({"demo-eu"} if n % 2 == 0 else set())
        for name, result in results.items():
            low, high = DEMO_DELAYS[name]
            assert low <= result["latency_ms"] <= min(high, 300), result
            seen.append((name, result["outcome"], result["status"]))
    assert {(name, outcome) for name, outcome, _ in seen} == {
        *((name, "ok") for name in DEMO_DELAYS),
        ("demo-slow", "timeout"),  # the slow tail
        ("demo-flaky", "http_error")}  # the failures
    assert {status for name, outcome, status in seen if outcome == "http_error"} == {500}


@pytest.mark.slow
def test_demo_daemon_answers_a_real_fanout():
    daemon = Daemon("--demo", "--demo-port", str(free_port()))
    try:
        daemon.wait_ready()
        request = urllib.request.Request(daemon.url("/bid"), data=b"{}", method="POST",
                                         headers={"X-Country": "DE"})
        with urllib.request.urlopen(request, timeout=5) as response:
            answer = json.load(response)
        partners = {r["partner"] for r in answer["results"]}
        assert partners == {"demo-fast", "demo-normal", "demo-slow", "demo-flaky", "demo-eu"}
        assert (answer["country"], answer["os"]) == ("DE", "other")
        fast = answer["results"][0]
        assert fast["outcome"] == "ok" and fast["json"]["partner"] == "fast"
        request = urllib.request.Request(daemon.url("/bid"), data=b"{}", method="POST",
                                         headers={"X-Country": "US", "X-OS": "iPadOS"})
        with urllib.request.urlopen(request, timeout=5) as response:
            answer = json.load(response)
        assert answer["os"] == "ios"  # an alias
        partners = {r["partner"] for r in answer["results"]}
        assert partners == {"demo-fast", "demo-normal", "demo-slow", "demo-flaky", "demo-mobile"}
        admin = f"http://127.0.0.1:{daemon.admin_port}"
        with urllib.request.urlopen(f"{admin}/healthz", timeout=5) as response:
            health = json.load(response)
        assert (health["status"], health["version"]) == ("ok", txfanout.__version__)
        with urllib.request.urlopen(f"{admin}/metrics", timeout=5) as response:
            info = build_info(response.read().decode())
        assert info == {**about.build_info(), "value": 1.0}
    finally:
        code = daemon.stop()
    # SIGTERM drains and exits 0 (twistd's own handler would re-raise it: -15).
    assert code == 0, "".join(daemon.log)
    assert "Traceback" not in "".join(daemon.log)


@pytest.mark.slow
@pytest.mark.runtime_neutral
def test_daemon_refuses_a_bad_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.replace("max_inflight = 10", "max_inflight = 0"))
    daemon = Daemon("--config", str(path))
    code = daemon.proc.wait(30)
    daemon.stop()
    # 1 on every Twisted: the plugin exits itself (twistd before 26.10 would
    # print the error and exit 0, twisted#12656).
    assert code == 1
    assert "server.max_inflight: must be an integer from 1 to 1000000" in "".join(daemon.log)
    # The error, not the manual: the journal gets a few lines, not the usage.
    assert len(daemon.log) <= 5, "".join(daemon.log)


def test_the_demo_partners_hold_a_burst_of_connections_until_they_accept():
    """A burst of 240 connections (60 requests to 4 partners, each on a
    new connection) waits in the kernel's backlog; none is dropped to a
    SYN retry a second later, past every partner timeout."""
    from twisted.internet import reactor

    port = demo.listen(reactor, 0)
    address = port.getHost()
    clients = [socket.socket() for _ in range(240)]
    try:
        for client in clients:
            client.setblocking(False)
            client.connect_ex((address.host, address.port))
        pending = list(clients)
        while pending:  # the handshakes complete in the kernel, unaccepted
            _, writable, _ = select.select([], pending, [], 0.5)
            assert writable, f"{len(pending)} of 240 connections not established"
            pending = [c for c in pending if c not in writable]
    finally:
        for client in clients:
            client.close()
        port.stopListening()
