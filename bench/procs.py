"""Child processes: start, register, stop by PID; sample CPU and RSS from /proc.

Every process the harness starts goes through :class:`Registry`, which stops
them all (SIGTERM, then SIGKILL to the child's own process group, whose id is
the child's PID) in a ``finally`` - on success, on error, on Ctrl-C and on
SIGTERM alike. Nothing is ever killed by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Sequence

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Interrupted(Exception):
    """SIGTERM / SIGHUP / the run's time bound: unwind and clean up."""


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGHUP into :class:`Interrupted` and make sure SIGINT
    raises KeyboardInterrupt (a shell starts background jobs with SIGINT
    ignored), so that ``finally`` runs."""
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def set_time_bound(seconds: float) -> None:
    """Raise :class:`Interrupted` in the main thread after ``seconds``."""

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(f"run exceeded its time bound of {seconds:.0f} s")

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (bound to 0, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """True when ``port`` can be bound on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pinned(cmd: Sequence[str], cpu: int | str | None) -> list[str]:
    """``cmd`` prefixed with ``taskset -c CPU`` when ``cpu`` is given (a CPU
    number or a list such as ``0-1``)."""
    return (["taskset", "-c", str(cpu)] if cpu is not None else []) + list(cmd)


@dataclass
class Child:
    """One started process and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: str | None
    log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid


class Registry:
    """The processes this run started; :meth:`stop_all` ends every one."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.started: list[tuple[str, int]] = []  # every (name, pid) ever started

    def start(self, name: str, cmd: Sequence[str], log_path: str | None = None,
              env: dict[str, str] | None = None, cwd: str | None = None,
              **popen: Any) -> Child:
        """Start ``cmd`` in its own session, output to ``log_path``."""
        log_file = open(log_path, "ab") if log_path else None
        out = log_file if log_file is not None else subprocess.DEVNULL
        p = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                             start_new_session=True, **popen)
        child = Child(name, p, log_path, log_file)
        self.children.append(child)
        self.started.append((name, p.pid))
        return child

    def stop(self, child: Child, grace_s: float = 5.0) -> int | None:
        """SIGTERM ``child``, wait ``grace_s``, then SIGKILL its process group."""
        p = child.popen
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        # The child's session/process group id is its own PID: this reaches
        # its workers (nginx, forked gateway workers) and nothing else.
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        if child.log_file is not None:
            child.log_file.close()
            child.log_file = None
        if child in self.children:
            self.children.remove(child)
        return p.returncode

    def stop_all(self) -> None:
        """Stop every registered child, newest first."""
        for child in list(reversed(self.children)):
            self.stop(child, grace_s=3.0)


def run_bounded(cmd: Sequence[str], timeout_s: float, registry: Registry,
                name: str, log_path: str | None = None) -> tuple[int, str]:
    """Run ``cmd`` to completion (registered, so Ctrl-C ends it); return
    (exit code, combined output). Past ``timeout_s`` it is killed and the
    exit code is -9."""
    import tempfile

    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        child = Child(name, p, None)
        registry.children.append(child)
        registry.started.append((name, p.pid))
        try:
            code = p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            registry.stop(child, grace_s=1.0)
            code = -9
        finally:
            if child in registry.children:
                registry.stop(child, grace_s=1.0)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    if log_path:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"$ {' '.join(cmd)}\n{text}\n")
    return code, text


def wait_http(url: str, timeout_s: float, child: Child | None = None,
              until: Callable[[bytes], bool] = lambda body: True) -> None:
    """Poll ``url`` with GET until it answers 200 with a body that satisfies
    ``until``; raise RuntimeError on timeout or when ``child`` exits first."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if child is not None and child.popen.poll() is not None:
            raise RuntimeError(f"{child.name} exited with code {child.popen.returncode} "
                               f"before it was ready; see {child.log_path}")
        try:
            with urllib.request.urlopen(url, timeout=10.0) as r:
                if r.status == 200 and until(r.read()):
                    return
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except (OSError, urllib.error.URLError) as e:
            last = str(e)
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s ({last})")


# -- /proc sampling --


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2:].split()
        kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime+stime (plus reaped children's cutime+cstime) of ``pids``, in s."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2:].split()
        # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def running_children_cpu(registry: Registry, *others: Child) -> float:
    """CPU seconds so far of ``registry``'s children that are still running,
    but ``others``: a load generator started before a row's window (its
    lead-in) is reaped after it, and the reaped children's CPU
    (:func:`own_and_children_cpu`) would count its lead-in too."""
    return cpu_seconds([c.pid for c in registry.children
                        if all(c is not other for other in others)])


def rss_by_pid(pids: Sequence[int]) -> dict[int, int]:
    """VmRSS of each of ``pids`` that is alive, in KiB."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        out[pid] = int(line.split()[1])
                        break
        except OSError:
            continue
    return out


class Sampler:
    """Samples RSS (KiB) and CPU seconds of a process tree every ``interval``
    seconds in a thread; ``samples`` is [(t since start, rss_kb, cpu_s)],
    ``by_pid`` the same times' RSS of each process [(t, {pid: rss_kb})]."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int, float]] = []
        self.by_pid: list[tuple[float, dict[int, int]]] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def sample(self) -> tuple[float, int, float]:
        """Take one sample now (also recorded)."""
        pids = process_tree(self.pid)
        rss = rss_by_pid(pids)
        s = (time.monotonic() - self._t0, sum(rss.values()), cpu_seconds(pids))
        self.samples.append(s)
        self.by_pid.append((s[0], rss))
        return s

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def now(self) -> float:
        return time.monotonic() - self._t0

    def peak_rss_kb(self, since: float, until: float) -> int:
        return max((r for t, r, _ in self.samples if since <= t <= until), default=0)


def host_busy_seconds() -> float:
    """CPU seconds all CPUs spent not idle since boot (/proc/stat)."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / CLK_TCK


def own_and_children_cpu() -> tuple[float, float]:
    """CPU seconds of this process, and of its reaped children."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def wait_for_quiet(max_wait_s: float, threshold_cores: float = 0.25,
                   probe_s: float = 1.0) -> float:
    """Wait (at most ``max_wait_s``) until the machine's CPU use, measured
    over ``probe_s``, is below ``threshold_cores``; return the last reading
    in cores."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0, t0 = host_busy_seconds(), time.monotonic()
        time.sleep(probe_s)
        busy = (host_busy_seconds() - b0) / (time.monotonic() - t0)
        if busy < threshold_cores or time.monotonic() >= deadline:
            return busy
