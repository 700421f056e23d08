"""Run ``twistd fanout`` as a real subprocess on free loopback ports."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """``twistd -n [TWISTD_ARGS] fanout ARGS``; its log is read line by line from stdout."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 twistd_args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        cmd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=", *twistd_args, "fanout",
               "--listen", f"tcp:{self.port}:interface=127.0.0.1",
               "--admin", f"tcp:{self.admin_port}:interface=127.0.0.1", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        self.log: list[str] = []
        self._partial = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]

    def url(self, path: str = "/bid") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        """Block until a log line contains ``text``; return that line."""
        end = time.monotonic() + timeout
        for line in self.log:
            if text in line:
                return line
        while time.monotonic() < end:
            # Raw reads: a buffered readline() would keep later lines in its
            # buffer, where select() cannot see them.
            if not self._selector.select(max(0.0, end - time.monotonic())):
                break
            data = os.read(self.proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
            if not data:
                break
            self._partial += data
            *lines, self._partial = self._partial.split(b"\n")
            fresh = [raw.decode("utf-8", "replace") + "\n" for raw in lines]
            self.log.extend(fresh)
            for line in fresh:
                if text in line:
                    return line
        raise AssertionError(f"no log line with {text!r}; log:\n" + "".join(self.log))

    def wait_ready(self) -> None:
        self.wait_for(f"starting on {self.admin_port}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, and return the exit code (SIGKILL after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rest = (self._partial + self.proc.stdout.read()).decode("utf-8", "replace")  # type: ignore[union-attr]
        self.log.extend(rest.splitlines(keepends=True))
        self._selector.close()
        self.proc.stdout.close()  # type: ignore[union-attr]
        return self.proc.returncode
