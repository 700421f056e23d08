"""The gateways under test: txfanout (twistd plugin) and the references.

Each is started as a subprocess on 127.0.0.1 with the same fan-out, the same
partner URLs and the same timeouts; :func:`start` returns once it answers
its readiness probe. Each says where its counters are (``Running.counters``):
txfanout's admin /metrics, the references' ``GET /stats``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from .procs import Child, Registry, free_port, pinned, wait_http

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
TWISTD = "from twisted.scripts.twistd import run; run()"

TXFANOUT = "txfanout"
BARE_TWISTED = "bare-twisted"
AIOHTTP = "aiohttp"
AIOHTTP_UVLOOP = "aiohttp-uvloop"
GO_NETHTTP = "go-nethttp"
ALL = (TXFANOUT, BARE_TWISTED, AIOHTTP, AIOHTTP_UVLOOP, GO_NETHTTP)
REFERENCES = (BARE_TWISTED, AIOHTTP, AIOHTTP_UVLOOP, GO_NETHTTP)
GO_SOURCE = os.path.join(BENCH_DIR, "ref_go")
# go-nethttp's binary, once build_go() has built it in this run
_go_binary: str | None = None
# txfanout's --warmup (requests before it is ready); set once per run
txfanout_warmup = 0


@dataclass
class Setup:
    """What every gateway in a row group gets: same partner, same budget."""

    fanout: int
    partner_url: str  # '{i}' -> 1..fanout
    timeout_ms: int = 300
    deadline_ms: int = 500
    max_concurrency: int = 256
    max_inflight: int = 2000
    workers: int = 1
    extra_args: list[str] = field(default_factory=list)
    # txfanout only: more keys of route ``bid`` and of partner pI (by I;
    # a "url" there replaces partner_url's)
    route_keys: dict[str, Any] = field(default_factory=dict)
    partner_keys: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Running:
    """A started gateway."""

    name: str
    child: Child
    url: str  # where the load goes
    ready_url: str
    # where its counters are: (URLs, "metrics" for txfanout | "stats")
    counters: tuple[list[str], str] = field(default_factory=lambda: ([], "stats"))


PYPY_DROP_IN = os.path.join(REPO, "systemd", "txfanout.service.d", "pypy.conf")


def pypy_environment(drop_in: str = PYPY_DROP_IN) -> dict[str, str]:
    """The ``Environment=`` of the PyPy drop-in: on PyPy every gateway runs
    with it (PyPy's nursery, docs/pypy.rst), unless this shell sets the
    same variable."""
    env = {}
    with open(drop_in, encoding="utf-8") as f:
        for line in f:
            if line.startswith("Environment="):
                name, _, value = line.strip()[len("Environment="):].partition("=")
                env[name] = value
    return env


def _env() -> dict[str, str]:
    env = dict(os.environ)
    if platform.python_implementation() == "PyPy":
        env = {**pypy_environment(), **env}
    paths = [os.path.join(REPO, "src"), REPO]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def txfanout_config(setup: Setup, path: str) -> None:
    """Write the TOML config for txfanout: partners p1..pN on the nginx
    partner, one route ``bid`` calling all of them (plus the set-up's
    route and partner keys; a JSON string, number, bool or list of
    strings is TOML too)."""
    lines = ["[server]", f"deadline_ms = {setup.deadline_ms}",
             f"max_inflight = {setup.max_inflight}", ""]
    names = []
    for i in range(1, setup.fanout + 1):
        names.append(f"p{i}")
        keys = {"url": setup.partner_url.replace("{i}", str(i)), "timeout_ms": setup.timeout_ms,
                "max_concurrency": setup.max_concurrency, **setup.partner_keys.get(i, {})}
        lines += [f"[partners.p{i}]"] + [f"{k} = {json.dumps(v)}" for k, v in keys.items()] + [""]
    route = {"partners": names, **setup.route_keys}
    lines += ["[routes.bid]"] + [f"{k} = {json.dumps(v)}" for k, v in route.items()] + [""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def txfanout_accepts(setup: Setup, path: str) -> bool:
    """True when ``txfanout check-config`` of the tree under test accepts
    the config of ``setup`` (written to ``path``): e.g. a key it may not
    have yet."""
    txfanout_config(setup, path)
    try:
        out = subprocess.run([sys.executable, "-m", "txfanout", "check-config", path],
                             capture_output=True, text=True, env=_env(), cwd=REPO, timeout=60)
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0


def txfanout_options() -> str:
    """``twistd fanout --help`` (to see which options this gateway has)."""
    try:
        out = subprocess.run([sys.executable, "-c", TWISTD, "fanout", "--help"],
                             capture_output=True, text=True, env=_env(), cwd=REPO,
                             timeout=60)
    except subprocess.TimeoutExpired:
        return ""
    return out.stdout + out.stderr


def supports_workers() -> bool:
    """True when the txfanout plugin has a ``--workers`` option."""
    return "--workers" in txfanout_options()


def build_go(tmpdir: str, log_path: str, timeout_s: float = 300) -> str:
    """Build bench/ref_go with the distribution's ``go`` into ``tmpdir``
    (its GOCACHE too; standard library only, GOPROXY=off: no network);
    return a note on failure ('' on success). Done once per run."""
    global _go_binary
    import shutil

    go = shutil.which("go")
    if go is None:
        return "go not found: apt-get install golang-go"
    binary = os.path.join(tmpdir, "ref-go-nethttp")
    env = dict(os.environ, GOCACHE=os.path.join(tmpdir, "gocache"),
               GOPATH=os.path.join(tmpdir, "gopath"), GOPROXY="off", GOFLAGS="",
               GOTOOLCHAIN="local", GOTELEMETRY="off", CGO_ENABLED="0", GO111MODULE="on")
    # (no -trimpath: it rebuilds the standard library too, 26 s against 10 s here)
    cmd = [go, "build", "-o", binary, "."]
    try:
        out = subprocess.run(cmd, cwd=GO_SOURCE, env=env, capture_output=True, text=True,
                             timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"go build took over {timeout_s:.0f} s"
    with open(log_path, "w", encoding="utf-8") as f:
        f.write(f"$ (cd {GO_SOURCE} && {' '.join(cmd)})\n{out.stdout}{out.stderr}")
    if out.returncode != 0 or not os.path.exists(binary):
        return f"go build failed (exit {out.returncode}); see {log_path}"
    _go_binary = binary
    return ""


def command(name: str, setup: Setup, port: int, admin_port: int, workdir: str) -> list[str]:
    """The command line that starts gateway ``name`` on ``port``."""
    if name == TXFANOUT:
        conf = os.path.join(workdir, f"txfanout-fo{setup.fanout}.toml")
        txfanout_config(setup, conf)
        cmd = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "fanout", "--config", conf,
               "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=4096",
               "--admin", f"tcp:{admin_port}:interface=127.0.0.1",
               "--deadline-ms", str(setup.deadline_ms),
               "--max-inflight", str(setup.max_inflight)]
        if setup.workers > 1:
            cmd += ["--workers", str(setup.workers)]
        if txfanout_warmup:
            cmd += ["--warmup", str(txfanout_warmup)]
        return cmd + setup.extra_args
    common = ["--port", str(port), "--fanout", str(setup.fanout),
              "--partner-url", setup.partner_url, "--timeout-ms", str(setup.timeout_ms),
              "--deadline-ms", str(setup.deadline_ms),
              "--pool-size", str(setup.max_concurrency * setup.fanout)]
    if name == BARE_TWISTED:
        return [sys.executable, os.path.join(BENCH_DIR, "ref_twisted.py")] + common
    if name == AIOHTTP:
        return [sys.executable, os.path.join(BENCH_DIR, "ref_aiohttp.py")] + common
    if name == AIOHTTP_UVLOOP:
        return [sys.executable, os.path.join(BENCH_DIR, "ref_aiohttp.py"), "--uvloop"] + common
    if name == GO_NETHTTP:
        if _go_binary is None:
            raise RuntimeError("go-nethttp is not built (gateways.build_go)")
        return [_go_binary] + common
    raise ValueError(f"unknown gateway {name!r}; known: {', '.join(ALL)}")


def start(registry: Registry, name: str, setup: Setup, workdir: str, logdir: str,
          cpu: int | str | None, tag: str, attempts: int = 3) -> Running:
    """Start gateway ``name`` and wait until it is ready (at most 30 s); a
    port taken between choosing and binding it is retried with new ports."""
    for attempt in range(attempts):
        port, admin_port = free_port(), free_port()
        while admin_port == port:
            admin_port = free_port()
        cmd = pinned(command(name, setup, port, admin_port, workdir), cpu)
        log_path = os.path.join(logdir, f"{tag}.log")
        with open(log_path, "w", encoding="utf-8") as f:
            f.write("$ " + " ".join(cmd) + "\n")
        child = registry.start(name, cmd, log_path=log_path, env=_env(), cwd=REPO)
        base = f"http://127.0.0.1:{port}"
        ready = (f"http://127.0.0.1:{admin_port}/readyz" if name == TXFANOUT
                 else f"{base}/healthz")
        try:
            wait_http(ready, 30.0, child)
            for i in range(1, setup.workers if name == TXFANOUT else 1):
                # every worker, each warming up on its own (its admin port is the next one)
                wait_http(f"http://127.0.0.1:{admin_port + i}/readyz", 30.0, child)
        except RuntimeError:
            registry.stop(child)
            with open(log_path, encoding="utf-8", errors="replace") as f:
                taken = "Address already in use" in f.read()
            if taken and attempt + 1 < attempts:
                continue
            raise
        if name == TXFANOUT:
            counters = ([f"http://127.0.0.1:{admin_port + i}/metrics"
                         for i in range(setup.workers)], "metrics")
        else:
            counters = ([f"{base}/stats"], "stats")
        return Running(name, child, f"{base}/bid", ready, counters)
    raise AssertionError("unreachable")
