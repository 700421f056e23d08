"""``--workers N``: one parent, N real worker processes on one socket."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from .daemon import Daemon, NotifySocket, ThreadedPartner, config_text, served_while_stopped

# Real worker processes.
pytestmark = pytest.mark.slow


def wait_replaced(daemon: Daemon, index: int, since: int) -> int:
    """The pid of worker ``index``'s next process, once it is ready."""
    line = daemon.wait_for(f"worker {index} started: pid ", since=since)
    pid = int(line.rsplit(" ", 1)[1])
    daemon.wait_for(f"worker {index}: [txfanout.lifecycle#info] ready: pid {pid},", since=since)
    return pid


def test_two_workers_serve_one_port(tmp_path: Path, threaded_partner: ThreadedPartner) -> None:
    path = tmp_path / "txfanout.toml"
    path.write_text(config_text({"bid": "/ok"}, threaded_partner))
    notify = NotifySocket()
    daemon = Daemon("--config", str(path), "--workers", "2", admin_ports=2,
                    env={"NOTIFY_SOCKET": notify.name})
    try:
        ready = notify.wait_for("READY")
        assert ready["STATUS"] == "2/2 workers ready, 0 restarts"
        daemon.wait_for("workers: all 2 ready")
        # Each worker has its own admin face: admin port + index.
        pids = [daemon.healthz(0)["pid"], daemon.healthz(1)["pid"]]
        assert len(set(pids)) == 2 and daemon.proc.pid not in pids
        # Both accept on the shared socket: with one stopped, the other serves.
        assert served_while_stopped(daemon, pids[0]) == 200
        assert served_while_stopped(daemon, pids[1]) == 200

        # A worker that dies is started again, on the same admin port.
        mark = daemon.mark()
        os.kill(pids[1], signal.SIGKILL)
        daemon.wait_for("worker 1 exited (signal 9)", since=mark)
        replaced = wait_replaced(daemon, 1, mark)
        assert replaced not in pids
        assert daemon.healthz(1)["pid"] == replaced
        assert daemon.post("/bid")[0] == 200

        # SIGHUP is forwarded; the parent is READY again once both reloaded.
        path.write_text(config_text({"bid": "/ok", "more": "/ok"}, threaded_partner))
        since, mark = len(notify.messages), daemon.mark()
        daemon.signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING", since=since)
        assert notify.wait_for("READY", since=notify.messages.index(reloading) + 1)
        daemon.wait_for("workers: reload done", since=mark)
        assert daemon.wait_for("reloaded: 2 partners", since=mark, count=2)
        assert daemon.post("/more")[0] == 200

        # SIGTERM: forwarded, every worker drains and exits 0, then the parent.
        since, mark = len(notify.messages), daemon.mark()
        daemon.signal(signal.SIGTERM)
        assert notify.wait_for("STOPPING", since=since)
        code = daemon.wait(15)
    finally:
        code = daemon.stop()
        notify.close()
    log = "".join(daemon.log)
    assert code == 0, log
    assert log.count("exited (status 0)") == 2, log
    assert "Traceback" not in log


def test_a_worker_that_misses_its_watchdog_is_replaced(tmp_path: Path,
                                                      threaded_partner: ThreadedPartner) -> None:
    path = tmp_path / "txfanout.toml"
    path.write_text(config_text({"bid": "/ok"}, threaded_partner))
    notify = NotifySocket()
    daemon = Daemon("--config", str(path), "--workers", "2", admin_ports=2,
                    env={"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "800000"})
    try:
        notify.wait_for("READY")
        assert notify.wait_for("WATCHDOG")  # the parent's own pings
        wedged = daemon.healthz(0)["pid"]
        mark = daemon.mark()
        os.kill(wedged, signal.SIGSTOP)  # a worker whose reactor no longer runs
        line = daemon.wait_for("missed its watchdog", since=mark)
        assert f"worker 0 (pid {wedged})" in line
        replaced = wait_replaced(daemon, 0, mark)
        assert daemon.healthz(0)["pid"] == replaced
        assert daemon.post("/bid")[0] == 200
    finally:
        code = daemon.stop()
        notify.close()
    assert code == 0, "".join(daemon.log)


def test_workers_refuse_what_they_cannot_share(tmp_path: Path) -> None:
    path = tmp_path / "txfanout.toml"
    path.write_text('[partners.a]\nurl = "http://127.0.0.1:1/"\n[routes.bid]\npartners = ["a"]\n')
    daemon = Daemon("--config", str(path), "--workers", "2",
                    listen="unix:/tmp/txfanout-test.sock")
    code = daemon.wait(30)
    assert code == 1
    assert "--workers needs a tcp:, tcp6: or systemd: listen endpoint" in "".join(daemon.log)
