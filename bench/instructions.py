"""``python -m bench count``: what a request costs in instructions and cache
misses, counted by valgrind's callgrind rather than timed.

Timed figures on a shared VM move by 10-30% from one row to the next, so a
change worth 2% cannot be seen in them. Callgrind counts what the gateway's
own process executes (instructions, and the misses of a simulated cache:
first level and last level), the same on every run of the same code.

The gateway runs under callgrind (its instrumentation on only while a phase
is measured), with fan-out 2 on an nginx partner, and no admission in the
way: under callgrind the loop runs some 50 times slower than it does, so
lag shedding, the adaptive limit and the deadline are set out of reach.
Each phase sends the same number of requests, 64 at a time, each on a
kept-alive connection, and reports per request:

- ``64 clients``: on 64 connections;
- ``64 clients, N idle beside``: the same 64, with ``--idle`` more open
  connections, each answered once and silent since;
- ``spread over N + 64``: each group of 64 on the next 64 of all those
  connections, so that every request finds its connection's state cold, as
  under a storm of that many clients;
- ``64 clients again``: the first phase again, the idle connections closed
  (what moved between the first and last is the drift of the process).

The last level is simulated at the size the host reports (32 MB here), or
at ``--last-level-mb``: a VM shares its host's with other tenants, and
how much of it is its own is not known.

What callgrind does not see: the kernel, the hardware's own caches and TLB,
and other processes. It measures the gateway's own work, not its CPU time.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from typing import Callable

from . import gateways, nginx
from .procs import Registry, free_port, wait_http

BATCH = 64  # requests in flight at once, as wrk -c64 and the seed's few clients
BODY = b'{"user": {"country": "DE", "os": "android"}}'
REQUEST = (b"POST /bid HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))

CONFIG = """[server]
deadline_ms = 60000
max_lag_ms = 60000
adaptive_inflight = false
idle_timeout_ms = 3600000
request_timeout_ms = 600000

[partners.p1]
url = "{base}/bid1"
timeout_ms = 60000

[partners.p2]
url = "{base}/bid2"
timeout_ms = 60000

[routes.bid]
partners = ["p1", "p2"]
"""


@dataclass
class Phase:
    """One measured phase: its name and its counts per request."""

    name: str
    requests: int
    statuses: dict[str, int]
    instructions: float  # Ir
    first_level_misses: float  # I1mr + D1mr + D1mw
    last_level_misses: float  # ILmr + DLmr + DLmw


def read_totals(path: str) -> dict[str, int]:
    """The event totals of one callgrind dump."""
    events: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("summary:") or line.startswith("totals:"):
                return dict(zip(events, (int(v) for v in line.split()[1:])))
    raise RuntimeError(f"{path}: no totals (callgrind wrote no summary)")


def phase_of(name: str, requests: int, statuses: dict[str, int],
             totals: dict[str, int]) -> Phase:
    """Per-request counts of a phase from its dump's totals."""
    def per(*keys: str) -> float:
        return sum(totals.get(k, 0) for k in keys) / requests
    return Phase(name, requests, statuses, per("Ir"), per("I1mr", "D1mr", "D1mw"),
                 per("ILmr", "DLmr", "DLmw"))


def _more(s: socket.socket) -> bytes:
    """What the gateway sent next on ``s``; it may not close."""
    chunk = s.recv(65536)
    if not chunk:
        raise RuntimeError("the gateway closed a connection")
    return chunk


def _answer(s: socket.socket) -> str:
    """Read one whole answer; its status code."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += _more(s)
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    length = next((int(v) for k, _, v in (line.partition(b":") for line in lines[1:])
                   if k.strip().lower() == b"content-length"), None)
    if length is None:
        raise RuntimeError(f"an answer without Content-Length: {lines[0]!r}")
    while len(rest) < length:
        rest += _more(s)
    return lines[0].split()[1].decode()


def _send(groups: list[list[socket.socket]]) -> dict[str, int]:
    """Send a request on every connection of each group, a group at a time,
    and read the answers; count them by status."""
    statuses: dict[str, int] = {}
    for group in groups:
        for s in group:
            s.sendall(REQUEST)
        for s in group:
            code = _answer(s)
            statuses[code] = statuses.get(code, 0) + 1
    return statuses


def _print(line: str) -> None:
    print(line, flush=True)


def run(out: str, idle: int, requests: int, last_level_mb: int | None = None,
        log: Callable[[str], None] = _print) -> list[Phase]:
    """Measure the four phases (see the module); write ``results.json``
    and ``table.md`` into ``out``. ``last_level_mb``: the simulated last
    level's size (16-way), rather than the host's."""
    if requests % BATCH:
        raise ValueError(f"--requests must be a multiple of {BATCH}")
    os.makedirs(out, exist_ok=True)
    registry = Registry()
    phases: list[Phase] = []
    ngx_dir = tempfile.mkdtemp(prefix="bench-nginx-")  # nginx's user reads it
    try:
        # not pinned: what callgrind counts does not depend on the CPU
        partner = nginx.start(registry, ngx_dir, free_port(), slow_ms=1, slow_percent=1)
        conf = os.path.join(out, "txfanout.toml")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(CONFIG.format(base=partner.base_url))
        port, admin = free_port(), free_port()
        dumps = os.path.join(out, "callgrind.out")
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--cache-sim=yes",
               f"--callgrind-out-file={dumps}"]
        if last_level_mb:
            cmd.append(f"--LL={last_level_mb * 1024 * 1024},16,64")
        if platform.python_implementation() == "PyPy":  # its JIT writes code at run time
            cmd.append("--smc-check=all-non-file")
        cmd += [sys.executable, "-c", gateways.TWISTD, "-n", "--pidfile=", "fanout",
               "--config", conf, "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=4096",
               "--admin", f"tcp:{admin}:interface=127.0.0.1"]
        child = registry.start("txfanout", cmd, log_path=os.path.join(out, "txfanout.log"),
                               env=gateways._env(), cwd=gateways.REPO)
        wait_http(f"http://127.0.0.1:{admin}/readyz", 300, child)

        def control(*args: str) -> None:
            subprocess.run(["callgrind_control", *args, str(child.pid)], check=True,
                           capture_output=True, timeout=120)

        def measure(name: str, groups: list[list[socket.socket]]) -> None:
            before = set(glob.glob(dumps + ".*"))
            control("--instr=on")
            control("--zero")
            statuses = _send(groups)
            control("--dump=" + name)
            control("--instr=off")
            (dump,) = set(glob.glob(dumps + ".*")) - before
            phases.append(phase_of(name, requests, statuses, read_totals(dump)))
            log(f"  {name}: {json.dumps(asdict(phases[-1]))}")

        def connect(n: int) -> list[socket.socket]:
            return [socket.create_connection(("127.0.0.1", port), timeout=600) for _ in range(n)]

        rounds = requests // BATCH
        busy = connect(BATCH)
        _send([busy] * 4)  # warm: the pool's connections to nginx open
        measure("64 clients", [busy] * rounds)
        quiet: list[socket.socket] = []
        while len(quiet) < idle:
            batch = connect(min(BATCH, idle - len(quiet)))
            _send([batch])
            quiet += batch
        measure(f"64 clients, {idle} idle beside", [busy] * rounds)
        everyone = quiet + busy
        measure(f"spread over {len(everyone)}",
                [[everyone[(r * BATCH + i) % len(everyone)] for i in range(BATCH)]
                 for r in range(rounds)])
        for s in quiet:
            s.close()
        open_now = f"\ntxfanout_client_connections {float(BATCH)}\n".encode()
        wait_http(f"http://127.0.0.1:{admin}/metrics", 120, child,  # the gateway saw them close
                  lambda body: open_now in body)
        measure("64 clients again", [busy] * rounds)
        for s in busy:
            s.close()
    finally:
        registry.stop_all()
        shutil.rmtree(ngx_dir, ignore_errors=True)
    write(out, phases)
    return phases


def table(phases: list[Phase]) -> str:
    """The phases as a Markdown table, each against the first."""
    first = phases[0]
    rows = ["| phase | requests | statuses | instructions | vs first | first-level misses "
            "| last-level misses | vs first |", "|---|---|---|---|---|---|---|---|"]
    for p in phases:
        rows.append(f"| {p.name} | {p.requests} | {p.statuses} | {p.instructions:,.0f} "
                    f"| {p.instructions / first.instructions:.3f} | {p.first_level_misses:,.0f} "
                    f"| {p.last_level_misses:,.1f} "
                    f"| {p.last_level_misses / max(first.last_level_misses, 1e-9):.2f} |")
    return "\n".join(rows) + "\n\nPer request, the gateway's own process (callgrind).\n"


def write(out: str, phases: list[Phase]) -> None:
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump([asdict(p) for p in phases], f, indent=1)
    with open(os.path.join(out, "table.md"), "w", encoding="utf-8") as f:
        f.write(table(phases))
