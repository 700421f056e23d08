"""``--workers N``: several processes serving one port, without systemd.

The parent binds the public socket (or takes the one systemd passed it) and
never accepts on it; it starts N ``twistd fanout`` workers that adopt the
socket (fd 3, ``--inherit-fd``), so the kernel spreads connections across
them. Worker I serves its admin face on the admin port + I.

The parent is the only process the service manager sees: workers notify
*it* (their own ``NOTIFY_SOCKET``, read with the sender's pid), and it sends
``READY=1`` once every worker is ready, ``RELOADING=1``/``READY=1`` around a
reload it forwards, ``STOPPING=1``, ``STATUS=`` and its own watchdog pings.
With a watchdog, workers get the same ``WATCHDOG_USEC`` and one that stops
pinging is killed. A worker that exits is started again, after a delay that
doubles while workers keep dying young. SIGHUP is forwarded to ready
workers; SIGTERM/SIGINT are forwarded to all, and the parent exits 0 when
they have drained and exited.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.application import service
from twisted.internet import error as net_error
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from .lifecycle import take_signals
from .sdnotify import Notifier, watchdog_interval
from .timers import Loops, cancel
from .words import plural

log = Logger()

TWISTD = "from twisted.scripts.twistd import run; run()"
LISTEN_FD = 3
BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 30.0
MIN_UPTIME_S = 10.0
STOP_GRACE_S = 3.0
MAX_LINE = 8192
MAX_DATAGRAM = 4096
_UCRED = struct.Struct("3i")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\S+ ")
# Linux values; PyPy's socket module does not name them.
_SO_PASSCRED = getattr(socket, "SO_PASSCRED", 16)
_SCM_CREDENTIALS = getattr(socket, "SCM_CREDENTIALS", 2)
_CHILD_ENV_DROP = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID",
                   "LISTEN_FDS", "LISTEN_FDNAMES")


def worker_count(requested: int) -> int:
    """``--workers``: 0 means one per CPU this process may run on."""
    if requested > 0:
        return requested
    affinity = getattr(os, "sched_getaffinity", None)  # not on PyPy 3.9
    return len(affinity(0)) if affinity else os.cpu_count() or 1


@dataclass
class Slot:
    """Worker I: its current process, if any, and how it is doing."""

    index: int
    process: Any = None
    pid: int | None = None
    started: float = 0.0
    ready: bool = False
    reloading: bool = False
    reload_when_ready: bool = False
    last_ping: float = 0.0
    failures: int = 0
    respawn: IDelayedCall | None = None
    lines: dict[int, bytes] = field(default_factory=dict)


class WorkerProtocol(ProcessProtocol):
    """Relays a worker's output to the parent's log, line by line."""

    def __init__(self, pool: "WorkerPool", slot: Slot) -> None:
        self.pool = pool
        self.slot = slot

    def childDataReceived(self, fd: int, data: bytes) -> None:
        buffered = self.slot.lines.get(fd, b"") + data
        *lines, rest = buffered.split(b"\n")
        if len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE] + b"...")
            rest = b""
        self.slot.lines[fd] = rest
        for line in lines:
            self.pool.relay(self.slot, line)

    def processEnded(self, reason: Failure) -> None:
        for rest in self.slot.lines.values():
            if rest:
                self.pool.relay(self.slot, rest)
        self.slot.lines = {}
        self.pool.ended(self.slot, reason)


class NotifyReceiver:
    """The workers' ``NOTIFY_SOCKET``: an abstract AF_UNIX datagram socket
    that learns each sender's pid (SO_PASSCRED)."""

    def __init__(self, reactor: Any, deliver: Callable[[int, dict[str, str]], None]) -> None:
        self._reactor = reactor
        self._deliver = deliver
        self.name = f"@txfanout-workers-{os.getpid()}-{os.urandom(6).hex()}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.socket.setsockopt(socket.SOL_SOCKET, _SO_PASSCRED, 1)
        self.socket.bind(b"\0" + self.name[1:].encode("ascii"))
        self.socket.setblocking(False)
        reactor.addReader(self)

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return "workers-notify"

    def doRead(self) -> None:
        for _ in range(64):  # bounded per wake-up; the reactor calls again
            try:
                data, ancillary, _flags, _addr = self.socket.recvmsg(
                    MAX_DATAGRAM, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return
            pid = None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == _SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[:_UCRED.size])[0]
            if pid is None:
                continue
            fields = {}
            for line in data.decode("utf-8", "replace").splitlines():
                key, _, value = line.partition("=")
                fields[key] = value
            self._deliver(pid, fields)

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    def close(self) -> None:
        if self.socket.fileno() >= 0:
            self._reactor.removeReader(self)
            self.socket.close()


class WorkerPool(service.Service):
    """The ``--workers`` parent: starts, watches, restarts and signals the
    workers that share ``listen_socket``."""

    def __init__(self, reactor: Any, count: int, listen_socket: socket.socket,
                 worker_args: Callable[[int], list[str]], notifier: Notifier,
                 stop_budget_s: float, environ: dict[str, str] | None = None) -> None:
        self._reactor = reactor
        self.slots = [Slot(i) for i in range(count)]
        self.listen_socket = listen_socket
        self._worker_args = worker_args
        self.notifier = notifier
        self._stop_budget_s = stop_budget_s
        environ = dict(os.environ) if environ is None else environ
        self._watchdog_s = watchdog_interval(environ, os.getpid())
        self._child_env = {k: v for k, v in environ.items() if k not in _CHILD_ENV_DROP}
        self._receiver: NotifyReceiver | None = None
        self._loops = Loops(reactor)
        self._devnull = -1
        self.restarts = 0
        self.stopping = False
        self._announced = False
        self._reload_pending = False
        self._kill_timer: IDelayedCall | None = None

    # -- start --

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._running)

    def _running(self) -> None:
        take_signals(self._reactor, self.handle_signal)
        self._receiver = NotifyReceiver(self._reactor, self.notified)
        self._child_env["NOTIFY_SOCKET"] = self._receiver.name
        if self._watchdog_s is not None:
            self._child_env["WATCHDOG_USEC"] = str(int(self._watchdog_s * 2e6))
            self._loops.start(self._watchdog, self._watchdog_s, now=True)
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        address = self.listen_socket.getsockname()
        log.info("workers: {count} sharing {address} (pid {pid})", count=len(self.slots),
                 address=address, pid=os.getpid())
        for slot in self.slots:
            self.spawn(slot)

    def spawn(self, slot: Slot) -> None:
        slot.respawn = None
        if self.stopping:
            return
        argv = [sys.executable, "-c", TWISTD, "--nodaemon", "--pidfile=",
                *self._worker_args(slot.index)]
        slot.process = self._reactor.spawnProcess(
            WorkerProtocol(self, slot), sys.executable, argv, env=self._child_env,
            childFDs={0: self._devnull, 1: "r", 2: "r", LISTEN_FD: self.listen_socket.fileno()})
        slot.pid = slot.process.pid
        slot.started = self._reactor.seconds()
        slot.ready = slot.reloading = False
        log.info("worker {index} started: pid {pid}", index=slot.index, pid=slot.pid)

    def relay(self, slot: Slot, line: bytes) -> None:
        text = _TIMESTAMP.sub("", line.decode("utf-8", "replace").rstrip("\r"))
        if text:
            log.info("worker {index}: {line}", index=slot.index, line=text)

    def ended(self, slot: Slot, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        how = f"signal {sig}" if sig else f"status {code}"
        slot.process, slot.pid, slot.ready, slot.reloading = None, None, False, False
        if self.stopping:
            log.info("worker {index} exited ({how})", index=slot.index, how=how)
            if all(s.process is None for s in self.slots):
                self._stopped()
            return
        lived = self._reactor.seconds() - slot.started
        slot.failures = slot.failures + 1 if lived < MIN_UPTIME_S else 0
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** slot.failures)
        self.restarts += 1
        log.warn("worker {index} exited ({how}) after {lived:.1f} s; restarting in {delay:.2f} s",
                 index=slot.index, how=how, lived=lived, delay=delay)
        slot.respawn = self._reactor.callLater(delay, self.spawn, slot)
        self.notifier.status(self.status_line())

    # -- what workers tell us --

    def notified(self, pid: int, fields: dict[str, str]) -> None:
        slot = next((s for s in self.slots if s.pid == pid), None)
        if slot is None:
            return
        now = self._reactor.seconds()
        if fields.get("WATCHDOG") == "1":
            slot.last_ping = now
        if fields.get("READY") == "1":
            slot.last_ping = now
            slot.ready, slot.reloading = True, False
            if slot.reload_when_ready:
                slot.reload_when_ready = False
                self._signal(slot, signal.SIGHUP)
                slot.reloading = True
            self._maybe_ready()

    def _maybe_ready(self) -> None:
        if self.stopping:
            return
        if not self._announced and all(s.ready for s in self.slots):
            self._announced = True
            log.info("workers: all {count} ready", count=len(self.slots))
            self.notifier.ready(self.status_line())
        elif self._reload_pending and not any(s.reloading for s in self.slots):
            self._reload_pending = False
            log.info("workers: reload done")
            self.notifier.ready(self.status_line())
        else:
            self.notifier.status(self.status_line())

    def status_line(self) -> str:
        ready = sum(s.ready for s in self.slots)
        return f"{ready}/{len(self.slots)} workers ready, {plural(self.restarts, 'restart')}"

    def _watchdog(self) -> None:
        now = self._reactor.seconds()
        assert self._watchdog_s is not None  # this loop runs only with a watchdog
        limit = 2 * self._watchdog_s
        for slot in self.slots:
            if slot.ready and now - slot.last_ping > limit:
                log.warn("worker {index} (pid {pid}) missed its watchdog for {s:.1f} s; "
                         "killing it", index=slot.index, pid=slot.pid, s=now - slot.last_ping)
                slot.ready = False
                self._signal(slot, signal.SIGKILL)
        self.notifier.watchdog()

    # -- signals --

    def handle_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.reload()
        else:
            self.stop(signum)

    def _signal(self, slot: Slot, signum: int) -> None:
        if slot.process is not None:
            try:
                slot.process.signalProcess(signum)
            except net_error.ProcessExitedAlready:
                pass

    def reload(self) -> None:
        """Forward SIGHUP to ready workers; a starting one gets it once ready."""
        if self.stopping:
            return
        log.info("workers: forwarding SIGHUP")
        self.notifier.reloading()
        for slot in self.slots:
            if slot.ready:
                slot.reloading = True
                self._reload_pending = True
                self._signal(slot, signal.SIGHUP)
            elif slot.process is not None:
                slot.reload_when_ready = True
        self._maybe_ready()

    def stop(self, signum: int) -> None:
        """Forward ``signum`` (SIGTERM/SIGINT) to every worker; stop when all
        have exited, killing those still there after the drain budget."""
        if self.stopping:
            log.warn("workers: second stop signal; killing workers")
            for slot in self.slots:
                self._signal(slot, signal.SIGKILL)
            return
        self.stopping = True
        log.info("workers: forwarding {name}", name=signal.Signals(signum).name)
        self.notifier.stopping(f"stopping {sum(s.process is not None for s in self.slots)} "
                               "workers")
        for slot in self.slots:
            if slot.respawn is not None:
                slot.respawn.cancel()
                slot.respawn = None
            self._signal(slot, signum)
        if all(s.process is None for s in self.slots):
            self._stopped()
            return
        self._kill_timer = self._reactor.callLater(self._stop_budget_s + STOP_GRACE_S,
                                                   self._kill_stragglers)

    def _kill_stragglers(self) -> None:
        self._kill_timer = None
        for slot in self.slots:
            if slot.process is not None:
                log.warn("worker {index} (pid {pid}) still running; killing it",
                         index=slot.index, pid=slot.pid)
                self._signal(slot, signal.SIGKILL)

    def _stopped(self) -> None:
        cancel(self._kill_timer)
        log.info("workers: all exited")
        try:
            self._reactor.stop()
        except net_error.ReactorNotRunning:
            pass

    def stopService(self) -> Any:
        super().stopService()
        if not self.stopping:  # the reactor stops for another reason: do not orphan them
            self.stopping = True
            for slot in self.slots:
                self._signal(slot, signal.SIGTERM)
        self._loops.stop()
        if self._receiver is not None:
            self._receiver.close()
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1
        self.notifier.close()
