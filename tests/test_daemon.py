"""The daemon as a real process: reload on SIGHUP, drain on SIGTERM, and
what it tells a (fake) service manager through NOTIFY_SOCKET."""

from __future__ import annotations

import http.client
import json
import platform
import signal
import socket
import time
from pathlib import Path

import pytest

from .daemon import Daemon, NotifySocket, ThreadedPartner, config_text, free_port, http_call

# Real daemon processes.
pytestmark = pytest.mark.slow


def test_sighup_refuses_a_bad_file_and_serves_a_good_one(tmp_path: Path,
                                                         threaded_partner: ThreadedPartner) -> None:
    port, admin = free_port(), free_port()
    listen = f"tcp:{port}:interface=127.0.0.1"
    addresses = f'listen = "{listen}"\nadmin = "tcp:{admin}:interface=127.0.0.1"\n'
    path = tmp_path / "txfanout.toml"
    path.write_text(config_text({"bid": "/echo"}, threaded_partner, addresses))
    daemon = Daemon("--config", str(path), "--deadline-ms", "250", port=port, admin_port=admin,
                    endpoint_flags=False)
    try:
        daemon.wait_for("ready: pid")
        status, answer = daemon.post("/bid")
        assert status == 200 and answer["results"][0]["outcome"] == "ok"

        # A bad file: every error logged with its key; the old routes stay.
        path.write_text(config_text({"new": "/echo"}, threaded_partner,
                                    addresses + "max_inflight = 0",
                                    partner_extra="max_concurrency = 0"))
        mark = daemon.mark()
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("reload refused (", since=mark)
        refused = "".join(daemon.log[mark:])
        assert "reload refused: server.max_inflight: must be an integer from 1 to 1000000" \
            in refused
        assert "reload refused: partners.new.max_concurrency: must be an integer from 1 to " \
            "100000" in refused
        assert daemon.post("/bid")[0] == 200
        assert daemon.post("/new")[0] == 404

        # A good file: new routes at once; --deadline-ms still wins over the
        # file's deadline_ms; a new listen address needs a restart.
        moved = f"tcp:{free_port()}:interface=127.0.0.1"
        path.write_text(config_text({"new": "/echo"}, threaded_partner,
                                    addresses.replace(listen, moved) + "deadline_ms = 3000"))
        mark = daemon.mark()
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("reloaded: 1 partner, 1 route in ", since=mark)
        line = daemon.wait_for("server.listen changed", since=mark)
        assert "restart to apply" in line and listen in line
        status, answer = daemon.post("/new")
        assert status == 200, answer
        sent_budget = int(answer["results"][0]["json"]["x-fanout-deadline-ms"])
        assert 0 < sent_budget <= 250
        assert daemon.post("/bid")[0] == 404
    finally:
        code = daemon.stop()
    assert code == 0, "".join(daemon.log)
    assert "Traceback" not in "".join(daemon.log)


def test_sigterm_drains_requests_in_flight_and_exits_0(tmp_path: Path,
                                                      threaded_partner: ThreadedPartner) -> None:
    path = tmp_path / "txfanout.toml"
    path.write_text(config_text({"bid": "/hold", "fast": "/ok"}, threaded_partner,
                                "deadline_ms = 8000"))
    daemon = Daemon("--config", str(path))
    try:
        daemon.wait_for("ready: pid")
        # A kept-alive client connection, idle when the drain starts.
        idle = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
        idle.request("POST", "/fast", body=b"{}")
        assert idle.getresponse().read()
        # A request held by a slow partner.
        held = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
        held.request("POST", "/bid", body=b"{}")
        threaded_partner.arrived.get(timeout=10)

        mark = daemon.mark()
        term_sent = time.monotonic()
        daemon.signal(signal.SIGTERM)
        daemon.wait_for("draining: no longer accepting connections", since=mark)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", daemon.port), timeout=5).close()
        status, body = _get(daemon.admin_port, "/readyz")
        assert (status, json.loads(body)) == (503, {"status": "draining"})
        # A new request on the kept-alive connection: refused, and closed.
        idle.request("POST", "/fast", body=b"{}")
        refused = idle.getresponse()
        assert refused.status == 503 and refused.getheader("Connection") == "close"
        assert b"shutting down" in refused.read()
        assert daemon.proc.poll() is None  # still waiting for the held request

        threaded_partner.release()
        response = held.getresponse()
        assert response.status == 200
        assert b'"outcome": "ok"' in response.read()
        code = daemon.wait(10)
        drain_s = time.monotonic() - term_sent
    finally:
        code = daemon.stop()
    assert code == 0, "".join(daemon.log)
    log = "".join(daemon.log)
    assert "drained in" in log and "Traceback" not in log
    assert drain_s < 8.0 + 1.0 + 2.0  # deadline + margin, with room for a loaded machine


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_drain_is_bounded_by_the_deadline(tmp_path: Path,
                                          threaded_partner: ThreadedPartner) -> None:
    """A request the partner never answers does not hold the exit past its
    deadline (+ margin): it gets its answer (a timeout) and the daemon exits 0."""
    path = tmp_path / "txfanout.toml"
    path.write_text(config_text({"bid": "/hold"}, threaded_partner, "deadline_ms = 600")
                    .replace("timeout_ms = 5000", "timeout_ms = 60000"))
    daemon = Daemon("--config", str(path))
    try:
        daemon.wait_for("ready: pid")
        held = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
        held.request("POST", "/bid", body=b"{}")
        threaded_partner.arrived.get(timeout=10)
        daemon.signal(signal.SIGTERM)
        response = held.getresponse()
        assert response.status == 200
        assert b'"outcome": "timeout"' in response.read()
        code = daemon.wait(10)
    finally:
        code = daemon.stop()
    assert code == 0, "".join(daemon.log)


def test_notify_socket_gets_ready_watchdog_reload_and_stopping(
        tmp_path: Path, threaded_partner: ThreadedPartner) -> None:
    path = tmp_path / "txfanout.toml"
    path.write_text(config_text({"bid": "/ok"}, threaded_partner))
    notify = NotifySocket()  # abstract namespace: NOTIFY_SOCKET=@name
    daemon = Daemon("--config", str(path),
                    env={"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "200000"})
    try:
        ready = notify.wait_for("READY")
        assert ready["READY"] == "1"
        assert ready["STATUS"].startswith("serving: 0 in flight, ")
        # READY comes once both listeners are up: both answer now.
        assert daemon.post("/bid")[0] == 200
        assert _get(daemon.admin_port, "/readyz")[0] == 200
        # Watchdog pings every 0.1 s (half of WATCHDOG_USEC).
        first = notify.wait_for("WATCHDOG")
        notify.wait_for("WATCHDOG", since=notify.messages.index(first) + 1)

        since = len(notify.messages)
        daemon.signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING", since=since)
        assert int(reloading["MONOTONIC_USEC"]) > 0
        after = notify.messages.index(reloading) + 1
        assert notify.wait_for("READY", since=after)["READY"] == "1"

        since = len(notify.messages)
        daemon.signal(signal.SIGTERM)
        stopping = notify.wait_for("STOPPING", since=since)
        assert stopping["STATUS"].startswith("draining: ")
        code = daemon.wait(10)
    finally:
        code = daemon.stop()
        notify.close()
    assert code == 0, "".join(daemon.log)


def test_no_watchdog_pings_for_another_process(tmp_path: Path,
                                               threaded_partner: ThreadedPartner) -> None:
    path = tmp_path / "txfanout.toml"
    path.write_text(config_text({"bid": "/ok"}, threaded_partner))
    notify = NotifySocket(str(tmp_path / "notify.sock"))  # a path this time
    daemon = Daemon("--config", str(path), env={
        "NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"})
    try:
        notify.wait_for("READY")
        since = len(notify.messages)
        daemon.signal(signal.SIGTERM)
        notify.wait_for("STOPPING", since=since)
        assert daemon.wait(10) == 0
    finally:
        daemon.stop()
        notify.close()
    # With a watchdog, the first ping goes out with READY: none came.
    assert not [m for m in notify.messages if "WATCHDOG" in m]


@pytest.mark.runtime_neutral
def test_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "txfanout.toml"
    path.write_text('[partners.a]\nurl = "http://127.0.0.1:1/"\n[routes.bid]\npartners = ["a"]\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = Daemon("--config", str(path), port=port)
        code = daemon.wait(30)
    log = "".join(daemon.log)
    assert code == 1
    assert (f"txfanout: cannot listen on tcp:{port}:interface=127.0.0.1 (public): Address "
            "already in use; choose another with --listen (or server.listen)") in log
    assert "Traceback" not in log


def test_what_start_up_built_is_frozen_out_of_the_collectors_way(
        tmp_path: Path, threaded_partner: ThreadedPartner) -> None:
    path = tmp_path / "txfanout.toml"
    path.write_text(config_text({"bid": "/ok"}, threaded_partner))
    daemon = Daemon("--config", str(path))
    try:
        daemon.wait_for("ready: pid")
        status, view = http_call(daemon.admin_port, "/debug/memory?types=1", method="GET")
        assert status == 200, view
        frozen = view["gc"]["frozen"]
        if platform.python_implementation() == "CPython":
            assert frozen > 10000, frozen  # modules, Twisted, Klein, the app
        else:
            assert frozen is None  # PyPy's collector has no generations
    finally:
        daemon.stop()
