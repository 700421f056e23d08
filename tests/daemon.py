"""Run ``twistd fanout`` as a real subprocess on free loopback ports, and the
real things it talks to from outside: a threaded partner, a notify socket."""

from __future__ import annotations

import http.client
import json
import os
import queue
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence

TWISTD_MAIN = "from twisted.scripts.twistd import run; run()"
TWISTD = [sys.executable, "-c", TWISTD_MAIN, "--nodaemon", "--pidfile="]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_range(count: int) -> int:
    """A port P such that P .. P+count-1 are all free on 127.0.0.1 now."""
    for _ in range(50):
        base = free_port()
        if base + count > 65535:
            continue
        held = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise AssertionError(f"no {count} consecutive free ports")


def http_call(port: int, path: str, body: bytes | None = b"{}", method: str = "POST",
              headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    """One request on a fresh connection; (status, decoded JSON body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body if method == "POST" else None,
                     headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


class Daemon:
    """``twistd -n fanout ARGS`` (after ``prefix``, e.g. a socket activator);
    its log is read line by line from stdout."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 prefix: Sequence[str] = (), port: int | None = None,
                 admin_port: int | None = None, admin_ports: int = 1,
                 listen: str | None = None, endpoint_flags: bool = True,
                 twistd_args: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.admin_port = admin_port or free_port_range(admin_ports)
        endpoints = []
        if endpoint_flags:
            endpoints = ["--listen", listen or f"tcp:{self.port}:interface=127.0.0.1",
                         "--admin", f"tcp:{self.admin_port}:interface=127.0.0.1"]
        self.cmd = [*prefix, *TWISTD, *twistd_args, "fanout", *endpoints, *args]
        self.started = time.monotonic()
        # A group of its own: stop() ends what it leaves behind (see there).
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        self.log: list[str] = []
        self._partial = b""
        self._eof = False
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]

    def url(self, path: str = "/bid") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def mark(self) -> int:
        """A position in the log, after everything written so far:
        ``wait_for(..., since=mark)`` ignores what came before it."""
        while not self._eof and self._selector.select(0):
            self._read()
        return len(self.log)

    def wait_for(self, text: str, timeout: float = 20.0, since: int = 0, count: int = 1) -> str:
        """Block until ``count`` log lines after ``since`` contain ``text``;
        return the last one."""
        end = time.monotonic() + timeout
        while True:
            seen = [line for line in self.log[since:] if text in line]
            if len(seen) >= count:
                return seen[count - 1]
            if self._eof or not self._selector.select(max(0.0, end - time.monotonic())):
                raise AssertionError(f"no log line with {text!r}; log:\n" + "".join(self.log))
            self._read()

    def _read(self) -> None:
        """Read what the pipe has (unbuffered: select() sees all of it)."""
        data = os.read(self.proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
        if not data:
            self._eof = True
            data = b"\n" if self._partial else b""
        *lines, self._partial = (self._partial + data).split(b"\n")
        self.log.extend(line.decode("utf-8", "replace") + "\n" for line in lines)

    def wait_ready(self) -> None:
        self.wait_for(f"starting on {self.admin_port}")

    def post(self, path: str = "/bid", **kwargs: Any) -> tuple[int, Any]:
        return http_call(self.port, path, **kwargs)

    def healthz(self, index: int = 0) -> dict[str, Any]:
        status, body = http_call(self.admin_port + index, "/healthz", method="GET")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit on its own; its exit code."""
        code = self.proc.wait(timeout)
        self._drain_output()
        return code

    def _drain_output(self) -> None:
        if not self.proc.stdout.closed:  # type: ignore[union-attr]
            while not self._eof:
                self._read()
            self._selector.close()
            self.proc.stdout.close()  # type: ignore[union-attr]

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, and return the exit code (SIGKILL after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # What it started and left running (a failed test's socket-activated
        # instances, say) would hold its output open: the drain would hang.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._drain_output()
        return self.proc.returncode


class _PartnerHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_PartnerHTTPServer"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        partner = self.server.partner
        if self.path == "/hold":
            partner.arrived.put(self.path)
            partner.released.wait(10.0)  # bounded: never hangs a test run
        if self.path == "/echo":
            body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        else:
            body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _PartnerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    partner: "ThreadedPartner"


class ThreadedPartner:
    """A loopback partner served by threads of the test process, so that it
    answers while the test blocks on a daemon subprocess. ``/hold`` answers
    only after ``release()``; ``arrived`` gets an item when one comes in.
    Any other path answers 200 at once (``/echo`` with the request headers).
    """

    def __init__(self) -> None:
        self.arrived: queue.Queue[str] = queue.Queue()
        self.released = threading.Event()
        self._server = _PartnerHTTPServer(("127.0.0.1", 0), _PartnerHandler)
        self._server.partner = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


class NotifySocket:
    """A fake service manager: the AF_UNIX datagram socket a daemon's
    ``NOTIFY_SOCKET`` names (a path, or ``@name`` in the abstract namespace)."""

    def __init__(self, path: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:
            name = f"txfanout-test-{os.getpid()}-{os.urandom(4).hex()}"
            self.sock.bind(b"\0" + name.encode())
            self.name = "@" + name
        else:
            self.sock.bind(path)
            self.name = path
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, timeout: float = 20.0, since: int = 0) -> dict[str, str]:
        """The first message after ``since`` that sets ``key``."""
        end = time.monotonic() + timeout
        index = since
        while True:
            for message in self.messages[index:]:
                index += 1
                if key in message:
                    return message
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key} notification; got {self.messages}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            self.messages.append(dict(line.split("=", 1)
                                      for line in data.decode().splitlines() if "=" in line))

    def drain(self) -> list[dict[str, str]]:
        """The messages that came since the last look, without waiting."""
        start = len(self.messages)
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(4096)
                self.messages.append(dict(line.split("=", 1)
                                          for line in data.decode().splitlines() if "=" in line))
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
        return self.messages[start:]

    def close(self) -> None:
        self.sock.close()


def config_text(routes: dict[str, str], partner: ThreadedPartner, server: str = "",
                partner_extra: str = "") -> str:
    """A config with one partner per route (route NAME calls partner NAME at
    ``partner.url(path)``)."""
    text = f"[server]\n{server}\n"
    for name, path in routes.items():
        text += (f'[partners.{name}]\nurl = "{partner.url(path)}"\ntimeout_ms = 5000\n'
                 f"{partner_extra}\n[routes.{name}]\npartners = [\"{name}\"]\n")
    return text


def served_while_stopped(daemon: Daemon, stopped_pid: int) -> int:
    """POST /bid while ``stopped_pid`` is SIGSTOPped: only the other
    workers can accept it. Returns the status."""
    os.kill(stopped_pid, signal.SIGSTOP)
    try:
        return daemon.post("/bid", timeout=10)[0]
    finally:
        os.kill(stopped_pid, signal.SIGCONT)
