"""The ``--workers`` parent (workers.WorkerPool) on a fake reactor: its
workers are fake processes, so that starting, readiness, output, crashes
and their back-off, the watchdog, reloads and stops are driven by hand and
seen exactly. The real parent with real worker processes is test_workers
(slow). What the pool tells its service manager goes to a real datagram
socket (daemon.NotifySocket), as it does in production."""

from __future__ import annotations

import os
import signal
import socket
from typing import Any, Iterator

import pytest
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from txfanout import workers
from txfanout.sdnotify import Notifier
from txfanout.workers import (BACKOFF_BASE_S, LISTEN_FD, MAX_LINE, MIN_UPTIME_S, STOP_GRACE_S,
                              TWISTD, WorkerPool)

from .daemon import NotifySocket
from .fakes import FakeReactor

STOP_BUDGET_S = 2.0


class FakeProcess:
    """A worker process as the pool sees it: a pid, the signals it was sent."""

    def __init__(self, protocol: Any, pid: int, args: list[str], env: dict[str, str],
                 fds: dict[int, Any]) -> None:
        self.protocol = protocol
        self.pid = pid
        self.args, self.env, self.fds = args, env, fds
        self.signals: list[int] = []
        self.exited = False

    def signalProcess(self, signum: int) -> None:
        if self.exited:
            raise ProcessExitedAlready()
        self.signals.append(signum)

    def say(self, data: bytes, fd: int = 1) -> None:
        self.protocol.childDataReceived(fd, data)

    def exit(self, code: int | None = 0, by: int | None = None) -> None:
        self.exited = True
        reason = ProcessDone(0) if code == 0 and by is None else ProcessTerminated(code, by)
        self.protocol.processEnded(Failure(reason))


class Spawning(FakeReactor):
    """A fake reactor that starts fake processes; the first one gets this
    process's pid, so that a real notification from here is from it."""

    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: Any = None,
                     path: Any = None, uid: Any = None, gid: Any = None, usePTY: Any = False,
                     childFDs: Any = None) -> FakeProcess:
        pid = os.getpid() if not self.processes else 40000 + len(self.processes)
        process = FakeProcess(protocol, pid, args, env, childFDs)
        protocol.makeConnection(process)
        self.processes.append(process)
        return process


class Parent:
    """A pool of ``count`` workers on a running fake reactor; its signal
    handlers are recorded, not installed."""

    def __init__(self, monkeypatch: Any, count: int = 2,
                 environ: dict[str, str] | None = None) -> None:
        self.handlers: list[Any] = []
        monkeypatch.setattr(workers, "take_signals",
                            lambda reactor, handler: self.handlers.append(handler))
        self.reactor = Spawning()
        self.reactor.pretend_running()
        self.manager = NotifySocket()
        self.listening = socket.socket()
        self.listening.bind(("127.0.0.1", 0))
        self.pool = WorkerPool(self.reactor, count, self.listening,
                               lambda index: ["fanout", "--worker-index", str(index)],
                               Notifier(self.manager.name), STOP_BUDGET_S,
                               environ={"PATH": "/bin", "NOTIFY_SOCKET": "@theirs",
                                        **(environ or {})})
        self.pool.startService()

    def process(self, index: int) -> FakeProcess:
        """Worker ``index``'s current process."""
        return next(p for p in reversed(self.reactor.processes)
                    if p is self.pool.slots[index].process)

    def ready(self, index: int) -> None:
        self.pool.notified(self.pool.slots[index].pid, {"READY": "1"})

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)

    def close(self) -> None:
        self.pool.stopService()
        self.manager.close()
        self.listening.close()


@pytest.fixture
def parent(monkeypatch: Any) -> Iterator[Parent]:
    made = Parent(monkeypatch)
    yield made
    made.close()


def lines(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events]


def test_workers_start_on_the_shared_socket_with_their_own_notify_socket(parent: Parent):
    assert parent.handlers == [parent.pool.handle_signal]
    first, second = parent.reactor.processes
    assert first.args[:3] == [first.args[0], "-c", TWISTD]
    assert first.args[-2:] == ["--worker-index", "0"] and second.args[-1] == "1"
    assert first.fds[LISTEN_FD] == parent.listening.fileno()
    assert first.env["NOTIFY_SOCKET"] == parent.pool._receiver.name != "@theirs"
    assert "WATCHDOG_USEC" not in first.env and first.env["PATH"] == "/bin"


def test_ready_once_every_worker_is_ready_as_each_tells_its_own_notify_socket(parent: Parent):
    # Worker 0 has this process's pid: a real notification from here is its.
    sender = Notifier(parent.pool._receiver.name)
    sender.send("READY=1")
    sender.close()
    parent.pool._receiver.doRead()  # as the reactor would, the socket being readable
    assert parent.pool.slots[0].ready and not parent.pool.slots[1].ready
    assert parent.manager.drain() == [{"STATUS": "1/2 workers ready, 0 restarts"}]
    with capturedLogs() as events:
        parent.ready(1)
    assert parent.manager.drain() == [{"READY": "1", "STATUS": "2/2 workers ready, 0 restarts"}]
    assert lines(events) == ["workers: all 2 ready"]
    parent.pool.notified(99999, {"READY": "1"})  # no worker of ours: ignored
    assert parent.manager.drain() == []


def test_a_workers_output_is_relayed_line_by_line(parent: Parent):
    worker = parent.process(0)
    with capturedLogs() as events:
        worker.say(b"2026-01-01T00:00:00+0000 [txfanout#info] one\npart")
        worker.say(b"other\n\n", fd=2)  # another stream: its own lines
        worker.say(b"ial\n")
        worker.say(b"x" * (MAX_LINE + 10))  # a line that does not end: cut
        worker.say(b"unfinished")  # a last line without its newline
        worker.exit(0)
    assert lines(events)[:5] == ["worker 0: [txfanout#info] one", "worker 0: other",
                                 "worker 0: partial", "worker 0: " + "x" * MAX_LINE + "...",
                                 "worker 0: unfinished"]


def test_a_worker_that_exits_is_restarted_after_a_delay_that_doubles_while_it_dies_young(
        parent: Parent):
    with capturedLogs() as events:
        parent.advance(1.0)
        parent.process(1).exit(1)  # after 1 s: young
        assert parent.pool.slots[1].process is None
        parent.advance(2 * BACKOFF_BASE_S - 0.01)
        assert len(parent.reactor.processes) == 2
        parent.advance(0.01)
        assert len(parent.reactor.processes) == 3 and parent.pool.slots[1].pid == 40002
        parent.process(1).exit(None, by=signal.SIGSEGV)  # at once: younger still
        parent.advance(4 * BACKOFF_BASE_S)
        assert len(parent.reactor.processes) == 4
        parent.advance(MIN_UPTIME_S)
        parent.process(1).exit(0)  # after a long life: the delay starts over
        parent.advance(BACKOFF_BASE_S)
        assert len(parent.reactor.processes) == 5
    warnings = [line for line in lines(events) if "exited" in line]
    assert warnings == [
        "worker 1 exited (status 1) after 1.0 s; restarting in 0.50 s",
        "worker 1 exited (signal 11) after 0.0 s; restarting in 1.00 s",
        "worker 1 exited (status 0) after 10.0 s; restarting in 0.25 s"]
    assert parent.pool.restarts == 3
    assert parent.manager.drain()[-1] == {"STATUS": "0/2 workers ready, 3 restarts"}


def test_a_ready_worker_that_stops_pinging_its_watchdog_is_killed(monkeypatch: Any):
    parent = Parent(monkeypatch, environ={"WATCHDOG_USEC": "200000",
                                          "WATCHDOG_PID": str(os.getpid())})
    try:
        assert parent.reactor.processes[0].env["WATCHDOG_USEC"] == "200000"
        parent.ready(0)
        parent.ready(1)
        for _ in range(3):  # worker 0 pings every 100 ms, worker 1 never again
            parent.advance(0.1)
            parent.pool.notified(parent.pool.slots[0].pid, {"WATCHDOG": "1"})
        assert parent.process(1).signals == [signal.SIGKILL] and not parent.pool.slots[1].ready
        assert parent.process(0).signals == []
        assert {"WATCHDOG": "1"} in parent.manager.drain()  # the parent's own pings
    finally:
        parent.close()


def test_sighup_is_forwarded_to_ready_workers_and_to_a_starting_one_once_ready(parent: Parent):
    parent.ready(0)
    parent.manager.drain()
    with capturedLogs() as events:
        parent.handlers[0](signal.SIGHUP)
        assert parent.process(0).signals == [signal.SIGHUP]
        assert parent.process(1).signals == []  # still starting
        parent.ready(1)  # ready: now it gets the reload
        assert parent.process(1).signals == [signal.SIGHUP]
        parent.ready(0)
        assert not any(line == "workers: reload done" for line in lines(events))
        parent.ready(1)
    assert lines(events)[-1] == "workers: reload done"
    messages = parent.manager.drain()
    assert "RELOADING" in messages[0]
    assert messages[-1] == {"READY": "1", "STATUS": "2/2 workers ready, 0 restarts"}


def test_a_stop_is_forwarded_and_the_parent_stops_once_every_worker_has_exited(
        parent: Parent):
    parent.process(1).exit(1)  # one is waiting to be restarted when the stop comes
    worker = parent.process(0)
    with capturedLogs() as events:
        parent.handlers[0](signal.SIGTERM)
        assert worker.signals == [signal.SIGTERM]
        parent.advance(STOP_BUDGET_S)  # past worker 1's restart delay
        assert len(parent.reactor.processes) == 2  # no restart while stopping
        assert not parent.reactor.hasStopped
        worker.exit(0)
    assert parent.reactor.hasStopped
    assert lines(events)[-2:] == ["worker 0 exited (status 0)", "workers: all exited"]
    assert {"STOPPING": "1", "STATUS": "stopping 1 workers"} in parent.manager.drain()
    parent.handlers[0](signal.SIGHUP)  # no reload while stopping
    assert worker.signals == [signal.SIGTERM]


def test_workers_still_running_after_the_drain_budget_are_killed(parent: Parent):
    first, second = parent.process(0), parent.process(1)
    with capturedLogs() as events:
        parent.handlers[0](signal.SIGINT)
        parent.advance(STOP_BUDGET_S + STOP_GRACE_S - 0.01)
        assert first.signals == [signal.SIGINT]
        parent.advance(0.01)
        assert first.signals == [signal.SIGINT, signal.SIGKILL]
        first.exit(None, by=signal.SIGKILL)
        parent.handlers[0](signal.SIGTERM)  # a second stop signal: kill at once
        assert second.signals == [signal.SIGINT, signal.SIGKILL, signal.SIGKILL]
        second.exit(None, by=signal.SIGKILL)
    assert "worker 1 (pid 40001) still running; killing it" in lines(events)
    assert "workers: second stop signal; killing workers" in lines(events)
    assert parent.reactor.hasStopped


def test_the_service_stopping_for_another_reason_stops_the_workers(parent: Parent):
    parent.pool.stopService()
    assert [p.signals for p in parent.reactor.processes] == [[signal.SIGTERM]] * 2
    parent.pool.stopService()  # again (the fixture's teardown): nothing new
    assert [p.signals for p in parent.reactor.processes] == [[signal.SIGTERM]] * 2
