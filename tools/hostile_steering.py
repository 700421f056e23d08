"""Can one client, or one partner, steer the in-flight limit and the breakers for everyone?

    python tools/hostile_steering.py [--src PATH] [--scenarios abcd] [--recovery-s 10]
        [--repeat 1] [--drip-ms 10] [--flood-lead-ms 15]

Starts ``twistd fanout`` from the source tree ``--src`` (put first on the
subprocess's PYTHONPATH; default: this repository's src/) on free loopback
ports, once per scenario, and does to it what the hostile steering issue
described:

  a  one client, 20 times, 260 ms apart: sends ``P``, waits 20 ms, then the
     rest of a POST /bid with ``X-Fanout-Deadline-Ms: 1`` (``--demo``);
  b  6 POSTs with no header whose upload is spread over 600 ms, one after
     the other (``--demo``: the default deadline is 500 ms);
  c  a dripping partner: a config whose route ``bid`` calls ``drip`` (a raw
     socket server in this process: 200, ``Transfer-Encoding: chunked``,
     the body as 1-byte chunks, never finished before the call's timeout,
     and back to back from a little before the deadline the gateway sent it
     in ``X-Fanout-Deadline-Ms``) and ``fast`` (the demo's /fast); 20 plain
     POST /bid, 260 ms apart. The ordinary traffic afterwards goes to route
     ``other`` (``fast`` alone), so that it does not meet the dripper;
  d  against a fresh ``--demo``: 5 POSTs with ``X-Fanout-Deadline-Ms: 12``,
     one after the other.

After the attack it reads ``txfanout_inflight_limit`` and the breakers
(admin /metrics), sends 3 plain requests one after the other (their
outcomes per partner), then 60 ordinary requests at once (each on its own
connection, all connected before any sends: how many got 503, and why),
and for a, b, c 10 s (``--recovery-s``) of ordinary traffic (32 keep-alive
clients posting in a loop) and the limit after it. Last, whether the
daemon's log has a "circuit breaker" line, and in which phase it came.

The demo's partners listen with Twisted's default backlog of 50, and the
60 at once find an empty pool: up to 240 partner connections are opened at
once, and those the kernel's accept queue drops wait for a SYN retry (1 s),
past the partners' 300 ms timeout. That is the demo's doing, not the
limit's; it shows as ``timeout [no answer in 300 ms]`` in the burst's
outcomes (and as ``ListenOverflows`` in /proc/net/netstat).

Loopback only; every step has a timeout, and each daemon is stopped by its
PID (SIGTERM, then SIGKILL). A run of all four takes about a minute.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.daemon import Daemon, free_port  # noqa: E402

ORDINARY_BODY = b"{}"
CONCURRENT = 60
RECOVERY_CLIENTS = 32
PLAIN_PROBES = 3
MAX_LOG_LINES = 12
IO_TIMEOUT = 10.0  # seconds: any one exchange with the daemon


# -- talking to the daemon --------------------------------------------------

def read_metrics(admin_port: int) -> dict[str, float]:
    """Every sample of admin /metrics, keyed by its line's name and labels."""
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=IO_TIMEOUT)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode("utf-8", "replace")
    finally:
        conn.close()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                samples[key] = float(value)
            except ValueError:
                pass
    return samples


def inflight_limit(admin_port: int) -> int:
    return int(read_metrics(admin_port)["txfanout_inflight_limit"])


def open_breakers(admin_port: int) -> list[str]:
    """Partners whose ``txfanout_partner_circuit_open`` is 1 now."""
    found = []
    for key, value in read_metrics(admin_port).items():
        m = re.match(r'txfanout_partner_circuit_open\{partner="([^"]+)"\}', key)
        if m and value:
            found.append(m.group(1))
    return sorted(found)


def shed_totals(admin_port: int) -> dict[str, int]:
    out = {}
    for key, value in read_metrics(admin_port).items():
        m = re.match(r'txfanout_shed_total\{.*reason="([^"]+)".*\}', key)
        if m and value:
            out[m.group(1)] = int(value)
    return out


def raw_exchange(port: int, pieces: list[tuple[float, bytes]]) -> tuple[int, Any]:
    """Send each ``(delay_s, data)`` after sleeping ``delay_s`` on one new
    connection (the request says Connection: close); read the answer to EOF:
    (status, decoded JSON body or None). Status 0: no answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        for delay, data in pieces:
            if delay:
                time.sleep(delay)
            sock.sendall(data)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    answer = b"".join(chunks)
    head, _, body = answer.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def post(port: int, path: str = "/bid", headers: dict[str, str] | None = None,
         body: bytes = ORDINARY_BODY) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
    try:
        conn.request("POST", path, body=body,
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, None


def head_bytes(path: str, length: int, extra: dict[str, str] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             f"Content-Length: {length}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def describe(status: int, body: Any) -> str:
    """One answer in a few words: ``200 complete`` / ``200 incomplete`` / ``503 (reason)``."""
    if status == 200 and isinstance(body, dict) and "complete" in body:
        return "200 complete" if body["complete"] else "200 incomplete"
    if isinstance(body, dict) and "error" in body:
        return f"{status} ({str(body['error'])[:40]})"
    return str(status or "no answer")


def outcomes_of(answers: list[tuple[int, Any]]) -> collections.Counter[str]:
    """``partner=outcome`` (and a short error) over the answers' results."""
    seen: collections.Counter[str] = collections.Counter()
    for _, body in answers:
        if isinstance(body, dict):
            for r in body.get("results", []):
                error = f" [{r['error']}]" if r.get("error") and r["outcome"] not in (
                    "ok", "open") else ""
                seen[f"{r['partner']}={r['outcome']}{error}"] += 1
    return seen


def counted(counter: collections.Counter[str]) -> str:
    return ", ".join(f"{k} x{n}" for k, n in sorted(counter.items())) or "-"


def concurrent_ordinary(port: int, path: str,
                        count: int = CONCURRENT) -> list[tuple[int, Any]]:
    """``count`` ordinary POSTs at once, each on its own connection, all
    connected before any sends: (status, JSON body) each; status 0 with
    ``{"error": ...}``: no answer."""
    barrier = threading.Barrier(count, timeout=IO_TIMEOUT)
    answers: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def one() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
        answer: tuple[int, Any]
        try:
            conn.connect()
            barrier.wait()
            conn.request("POST", path, body=ORDINARY_BODY,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            try:
                answer = response.status, json.loads(data)
            except ValueError:
                answer = response.status, None
        except Exception as e:  # noqa: BLE001 - counted, not raised
            answer = 0, {"error": f"failed ({type(e).__name__})"}
        finally:
            conn.close()
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(IO_TIMEOUT * 2)
    return answers


def ordinary_load(port: int, path: str, clients: int,
                  seconds: float) -> collections.Counter[str]:
    """``clients`` keep-alive clients posting in a loop for ``seconds``
    (a new connection whenever the daemon closes one); answers described
    (``describe``: 200 complete or not, 503 and why)."""
    stop = time.monotonic() + seconds
    seen: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def client() -> None:
        mine: collections.Counter[str] = collections.Counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
        while time.monotonic() < stop:
            try:
                conn.request("POST", path, body=ORDINARY_BODY,
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                try:
                    body = json.loads(data)
                except ValueError:
                    body = None
                mine[describe(response.status, body)] += 1
                closed = response.will_close
            except (OSError, http.client.HTTPException) as e:
                mine[f"failed ({type(e).__name__})"] += 1
                closed = True
            if closed:  # http.client opens a new connection on the next request
                conn.close()
        conn.close()
        with lock:
            seen.update(mine)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + IO_TIMEOUT * 2)
    return seen


# -- the dripping partner ---------------------------------------------------

class DrippingPartner:
    """A loopback HTTP/1.1 server on raw sockets, a thread per connection.
    Every request gets ``200``, ``Transfer-Encoding: chunked``, and a body
    of 1-byte chunks: one every ``drip_s`` until ``lead_s`` before the
    deadline the gateway gave the call (its ``X-Fanout-Deadline-Ms``), then
    back to back (a send each), until the gateway hangs up or ``linger_s``
    after that deadline; then the last chunk. ``drips`` counts the chunks."""

    def __init__(self, drip_s: float = 0.010, lead_s: float = 0.015,
                 linger_s: float = 0.25) -> None:
        self.drip_s, self.lead_s, self.linger_s = drip_s, lead_s, linger_s
        self.calls = 0
        self.drips = 0
        self._stop = threading.Event()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(IO_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffered = b""
        try:
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buffered:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffered += data
                arrived = time.monotonic()
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                headers = {}
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get(b"content-length", b"0"))
                while len(buffered) < length:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffered += data
                buffered = buffered[length:]
                self.calls += 1
                given = headers.get(b"x-fanout-deadline-ms", b"")
                budget_s = (int(given) if given.isdigit() else 300) / 1000.0
                if not self._drip(sock, arrived + budget_s):
                    return
        except OSError:
            return
        finally:
            sock.close()

    def _drip(self, sock: socket.socket, deadline: float) -> bool:
        """Answer one request; False once the gateway hung up."""
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        opening = b'{"bid": 1.0, "pad": "'  # then "x" for ever: never a whole JSON
        flood_at = deadline - self.lead_s if self.lead_s > 0 else float("inf")
        end = deadline + self.linger_s
        i = 0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= end:
                    break
                sock.send(b"1\r\n" + (opening[i:i + 1] or b"x") + b"\r\n")
                i += 1
                self.drips += 1
                if now < flood_at:
                    time.sleep(min(self.drip_s, flood_at - now))
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            return False
        return True

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(2)


# -- the scenarios ----------------------------------------------------------

class Run:
    """One daemon for one scenario, and what was seen of it."""

    def __init__(self, src: Path, demo_port: int, *args: str) -> None:
        self.daemon = Daemon("--demo", "--demo-port", str(demo_port), *args,
                             env={"PYTHONPATH": str(src)})
        try:
            self.daemon.wait_ready()
        except BaseException:
            self.daemon.stop()
            raise

    @property
    def port(self) -> int:
        return self.daemon.port

    @property
    def admin(self) -> int:
        return self.daemon.admin_port

    def log_mark(self) -> int:
        """How many log lines the daemon has written by now (after a pause
        for lines on their way)."""
        time.sleep(0.2)
        return self.daemon.mark()

    def breaker_lines(self) -> list[tuple[int, str]]:
        """(index, text) of each log line about a circuit breaker."""
        self.daemon.mark()
        return [(i + 1, line.strip()) for i, line in enumerate(self.daemon.log)
                if "circuit breaker" in line]

    def stop(self) -> None:
        self.daemon.stop()


def attack_a(run: Run) -> list[tuple[int, Any]]:
    """P, 20 ms, the rest with X-Fanout-Deadline-Ms: 1; x20, 260 ms apart."""
    whole = head_bytes("/bid", len(ORDINARY_BODY), {"X-Fanout-Deadline-Ms": "1"}) \
        + ORDINARY_BODY
    return paced(20, 0.260, lambda: raw_exchange(run.port, [(0, whole[:1]),
                                                           (0.020, whole[1:])]))


def attack_b(run: Run) -> list[tuple[int, Any]]:
    """6 uploads (head at once, body a byte at a time over 600 ms), no header."""
    body = b'{"user": {"id": "' + b"u" * 40 + b'"}}'
    step = 0.600 / len(body)
    answers = []
    for _ in range(6):
        answers.append(raw_exchange(run.port, [(0, head_bytes("/bid", len(body)))]
                                    + [(step, body[i:i + 1]) for i in range(len(body))]))
    return answers


def attack_c(run: Run) -> list[tuple[int, Any]]:
    """20 plain POST /bid (dripper and fast), 260 ms apart."""
    return paced(20, 0.260, lambda: post(run.port, "/bid"))


def attack_d(run: Run) -> list[tuple[int, Any]]:
    """5 POSTs with X-Fanout-Deadline-Ms: 12, one after the other."""
    return [post(run.port, "/bid", {"X-Fanout-Deadline-Ms": "12"}) for _ in range(5)]


def paced(count: int, every: float, send: Callable[[], tuple[int, Any]]) -> list[tuple[int, Any]]:
    """``count`` sends, each started ``every`` seconds after the one before
    (or at once when that one took longer)."""
    answers = []
    start = time.monotonic()
    for i in range(count):
        delay = start + i * every - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        answers.append(send())
    return answers


SCENARIOS = {
    "a": ("P / 20 ms / X-Fanout-Deadline-Ms: 1, x20 every 260 ms (--demo)", attack_a),
    "b": ("6 uploads spread over 600 ms, no header (--demo)", attack_b),
    "c": ("dripping partner (1-byte chunks), 20 POST /bid every 260 ms", attack_c),
    "d": ("fresh --demo, 5 x X-Fanout-Deadline-Ms: 12", attack_d),
}


def scenario(key: str, src: Path, recovery_s: float, tmp: Path,
             drip: tuple[float, float] = (0.010, 0.015)) -> dict[str, str]:
    title, attack = SCENARIOS[key]
    demo_port = free_port()
    dripper = None
    args: list[str] = []
    ordinary_path = "/bid"
    if key == "c":
        dripper = DrippingPartner(*drip)
        config = tmp / "drip.toml"
        args = ["--config", str(config)]  # with --demo: its partners, this config
        ordinary_path = "/other"
    try:
        if dripper is not None:
            config.write_text(
                "[server]\n"
                f'[partners.drip]\nurl = "http://127.0.0.1:{dripper.port}/drip"\n'
                "timeout_ms = 100\n"
                f'[partners.fast]\nurl = "http://127.0.0.1:{demo_port}/fast"\n'
                "timeout_ms = 300\n"
                '[routes.bid]\npartners = ["drip", "fast"]\n'
                '[routes.other]\npartners = ["fast"]\n')
        run = Run(src, demo_port, *args)
        row = {"scenario": f"{key}: {title}"}
        try:
            time.sleep(0.3)  # let the lag monitor take a few samples of an idle loop
            row["limit before"] = str(inflight_limit(run.admin))
            phases = [("start", run.log_mark())]
            started = time.monotonic()
            answers = attack(run)
            took = time.monotonic() - started
            row["limit after attack"] = str(inflight_limit(run.admin))
            row["attack answers"] = counted(collections.Counter(
                describe(s, b) for s, b in answers)) + f"  ({took:.1f} s)"
            row["attack outcomes"] = counted(outcomes_of(answers))
            if dripper is not None:
                row["dripper"] = f"{dripper.calls} calls, {dripper.drips} chunks sent"
            phases.append(("attack", run.log_mark()))
            row["breakers open after attack"] = ", ".join(open_breakers(run.admin)) or "none"
            plain = [post(run.port, "/bid") for _ in range(PLAIN_PROBES)]
            row[f"{PLAIN_PROBES} plain POST /bid"] = counted(collections.Counter(
                describe(s, b) for s, b in plain))
            row["  plain outcomes"] = counted(outcomes_of(plain))
            phases.append(("plain", run.log_mark()))
            burst = concurrent_ordinary(run.port, ordinary_path)
            row[f"{CONCURRENT} concurrent POST {ordinary_path}: 503"] = str(
                sum(1 for status, _ in burst if status == 503))
            row["  burst answers"] = counted(collections.Counter(
                describe(status, body) for status, body in burst))
            row["  burst outcomes"] = counted(outcomes_of(burst))
            phases.append(("burst", run.log_mark()))
            row["limit after them"] = str(inflight_limit(run.admin))
            row["breakers open after them"] = ", ".join(open_breakers(run.admin)) or "none"
            if key != "d":
                load = ordinary_load(run.port, ordinary_path, RECOVERY_CLIENTS, recovery_s)
                row[f"recovery: limit after {recovery_s:g} s"] = str(inflight_limit(run.admin))
                row["  ordinary load"] = (
                    f"{RECOVERY_CLIENTS} keep-alive clients on {ordinary_path}: "
                    f"{sum(load.values())} requests: " + counted(load))
                row["breakers open after load"] = ", ".join(open_breakers(run.admin)) or "none"
                phases.append(("load", run.log_mark()))
            row["shed_total by reason"] = ", ".join(
                f"{k} {v}" for k, v in sorted(shed_totals(run.admin).items())) or "none"
            lines = run.breaker_lines()
            row["'circuit breaker' log lines"] = f"{len(lines)}: " + ", ".join(
                f"{name} {sum(1 for i, _ in lines if before < i <= end)}"
                for (_, before), (name, end) in zip(phases, phases[1:]))
            for n, (_, line) in enumerate(lines[:MAX_LOG_LINES]):
                row[f"  log {n + 1}"] = line[line.find("partner "):] \
                    if "partner " in line else line
            if len(lines) > MAX_LOG_LINES:
                row[f"  log {MAX_LOG_LINES + 1}.."] = f"{len(lines) - MAX_LOG_LINES} more"
        finally:
            run.stop()
        return row
    finally:
        if dripper is not None:
            dripper.close()


def imported_from(src: Path) -> str:
    """Where the daemon's interpreter finds txfanout with PYTHONPATH=src."""
    out = subprocess.run([sys.executable, "-c", "import txfanout; print(txfanout.__file__)"],
                         env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True,
                         text=True, timeout=30, check=False)
    return out.stdout.strip() or out.stderr.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src",
                        help="source tree to run (put on the daemon's PYTHONPATH)")
    parser.add_argument("--scenarios", default="abcd")
    parser.add_argument("--recovery-s", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each scenario this many times (a new daemon each)")
    parser.add_argument("--drip-ms", type=float, default=10.0,
                        help="c: ms between the dripper's 1-byte chunks")
    parser.add_argument("--flood-lead-ms", type=float, default=15.0,
                        help="c: how long before the call's deadline the dripper sends "
                             "its chunks back to back (0: never)")
    args = parser.parse_args()
    if not args.scenarios or set(args.scenarios) - set(SCENARIOS):
        parser.error(f"--scenarios: letters of {''.join(SCENARIOS)}")
    src = args.src.resolve()
    where = imported_from(src)
    print(f"source: {src}\ntxfanout imported from: {where}")
    if not where.startswith(str(src)):
        sys.exit("txfanout does not come from --src; refusing to measure something else")
    with tempfile.TemporaryDirectory() as tmp:
        for key in [k for k in args.scenarios for _ in range(args.repeat)]:
            row = scenario(key, src, args.recovery_s, Path(tmp),
                           (args.drip_ms / 1000.0, args.flood_lead_ms / 1000.0))
            print()
            width = max(len(k) for k in row)
            for k, v in row.items():
                print(f"{k:<{width}}  {v}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
