"""sd_notify messages, and when the lifecycle sends them (on a task.Clock)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from txfanout.config import parse
from txfanout.gateway import Gateway
from txfanout.lifecycle import STATUS_INTERVAL_S, WARMUP_TIMEOUT_S, Lifecycle
from txfanout.listeners import Listener
from txfanout.site import GatewaySite
from txfanout.sdnotify import Notifier, socket_address, watchdog_interval

from .configs import route_config
from .daemon import NotifySocket


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[NotifySocket]:
    m = NotifySocket(str(tmp_path / "notify"))
    yield m
    m.close()


def test_socket_address_abstract_or_path() -> None:
    assert socket_address("@sd-notify") == b"\0sd-notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"


@pytest.mark.parametrize("environ, expected", [
    ({"WATCHDOG_USEC": "10000000"}, 5.0),
    ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "4242"}, 5.0),
    ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval_is_half_of_usec_and_ours_only(environ: dict[str, str],
                                                          expected: float | None) -> None:
    assert watchdog_interval(environ, 4242) == expected


def test_messages_reach_the_socket(manager: NotifySocket) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": manager.name})
    assert notifier.enabled
    assert notifier.ready("serving\nnow")
    assert manager.wait_for("READY") == {"READY": "1", "STATUS": "serving now"}
    assert notifier.reloading()
    assert int(manager.wait_for("RELOADING")["MONOTONIC_USEC"]) > 0
    assert notifier.watchdog() and manager.wait_for("WATCHDOG") == {"WATCHDOG": "1"}
    assert notifier.stopping("draining")
    assert manager.wait_for("STOPPING") == {"STOPPING": "1", "STATUS": "draining"}
    notifier.close()


def test_abstract_namespace_socket() -> None:
    manager = NotifySocket()  # @name
    try:
        assert Notifier(manager.name).send("READY=1")
        assert manager.wait_for("READY") == {"READY": "1"}
    finally:
        manager.close()


def test_without_a_manager_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.ready("serving")


def test_a_missing_socket_is_logged_once(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    with capturedLogs() as events:
        assert not notifier.watchdog()
        assert not notifier.watchdog()
    assert [formatEvent(e) for e in events] == [
        f"cannot notify the service manager at {tmp_path / 'gone'}: No such file or directory"]


def lifecycle_on(clock: Clock, notifier: Notifier, environ: dict[str, str]) -> Lifecycle:
    config = parse({"partners": {"a": {"url": "http://127.0.0.1:1/"}},
                    "routes": {"bid": {"partners": ["a"]}}})
    gateway = Gateway(reactor, config)
    idle = serverFromString(reactor, "tcp:0")  # never listened on here
    return Lifecycle(clock, gateway, Listener("public", idle, None), Listener("admin", idle, None),
                     None, notifier, environ)


def test_status_and_watchdog_run_on_the_reactor_clock(manager: NotifySocket) -> None:
    clock = Clock()
    notifier = Notifier(manager.name)
    life = lifecycle_on(clock, notifier, {"WATCHDOG_USEC": "2000000"})
    life._ready(None)
    assert manager.wait_for("READY")["STATUS"] == "serving: 0 in flight, 0.0 req/s"
    manager.wait_for("WATCHDOG")  # the first ping goes with READY
    count = len(manager.messages)
    clock.advance(1.0)  # half of WATCHDOG_USEC
    assert manager.wait_for("WATCHDOG", since=count)

    life.gateway.admission.admitted = 3
    life.gateway.admission.admitted_total += 50
    clock.advance(STATUS_INTERVAL_S - 1.0)
    status = manager.wait_for("STATUS", since=count + 1)
    assert status == {"STATUS": "serving: 3 in flight, 10.0 req/s"}
    life.stopService()
    assert clock.getDelayedCalls() == []  # both loops stopped


def test_a_warm_up_asks_systemd_to_wait_past_timeout_start_sec_and_ends_first(
        manager: NotifySocket) -> None:
    # TimeoutStartSec= is 30 s in the units; a warm-up on a slow or busy
    # host may take longer, and systemd would kill the daemon for it.
    clock = Clock()
    config = parse(route_config({"a": {"url": "http://127.0.0.1:1/"}}))
    gateway = Gateway(reactor, config)
    idle = serverFromString(reactor, "tcp:0")  # never listened on here
    life = Lifecycle(clock, gateway, Listener("public", idle, GatewaySite(gateway)),
                     Listener("admin", idle, None), None, Notifier(manager.name), {},
                     warm_up=Deferred)  # a warm-up that never ends by itself
    life.public.ready.callback(None)
    life.admin.ready.callback(None)
    gateway.lag.start()  # as GatewayService starts it
    life._start()
    extend = manager.wait_for("EXTEND_TIMEOUT_USEC")
    assert extend["STATUS"] == "warming up before serving"
    assert int(extend["EXTEND_TIMEOUT_USEC"]) > WARMUP_TIMEOUT_S * 1e6
    manager.drain()
    assert not [message for message in manager.messages if "READY" in message]
    clock.advance(WARMUP_TIMEOUT_S)  # the daemon gives up its warm-up first
    assert manager.wait_for("READY")["STATUS"].startswith("serving")
    gateway.lag.stop()
    life.stopService()


def test_no_loops_without_a_manager() -> None:
    clock = Clock()
    life = lifecycle_on(clock, Notifier(None), {"WATCHDOG_USEC": "2000000"})
    life._ready(None)
    assert clock.getDelayedCalls() == []
