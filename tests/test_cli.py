"""The daemon's options and manual, and the worker command lines."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.python.usage import UsageError

import txfanout
from txfanout import about, advice, demo, tap
from txfanout import config as configuration

from .daemon import TWISTD_MAIN, Daemon, free_port

CONFIG = '[partners.a]\nurl = "http://127.0.0.1:1/"\n[routes.bid]\npartners = ["a"]\n'


def options(*argv: str) -> tap.Options:
    o = tap.Options()
    o.parseOptions(list(argv))
    return o


def test_help_documents_every_option_and_the_operations() -> None:
    o = tap.Options()
    text = o.getUsage(width=100)
    for flag in o.optFlags:
        assert f"--{flag[0]}" in text and flag[2]
    for param in o.optParameters:
        name, doc = param[0], param[3]
        assert f"--{name}=" in text, name
        assert len(doc) > 20, name
        assert " ".join(doc.split()[:3]) in " ".join(text.split()), name
    for heading in ("SIGNALS", "SEVERAL PROCESSES ON ONE PORT", "ENVIRONMENT", "FILES",
                    "EXIT STATUS", "EXAMPLES"):
        assert re.search(rf"^{heading}$", text, re.M), heading
    for term in ("SIGHUP", "SIGTERM", "NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS",
                 "/readyz", "txfanout@I.service", "check-config"):
        assert term in text, term


def test_the_warmup_option_is_bounded_and_reaches_the_workers(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    assert options("--config", str(path))["warmup"] == 0
    parent = options("--config", str(path), "--workers", "2", "--warmup", "1000")
    assert parent.worker_args(0)[-2:] == ["--warmup", "1000"]
    assert "--warmup" not in options("--config", str(path), "--workers", "2").worker_args(0)
    with pytest.raises(UsageError, match="--warmup must be at least 0"):
        options("--config", str(path), "--warmup", "-1")
    with pytest.raises(UsageError, match=f"--warmup must be at most {tap.MAX_WARMUP}"):
        options("--config", str(path), "--warmup", str(tap.MAX_WARMUP + 1))


def test_workers_options(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    o = options("--config", str(path), "--workers", "0", "--deadline-ms", "300")
    cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count())  # PyPy 3.9 has no sched_getaffinity
    assert o.workers == cpus
    assert o.worker_args(1) == [
        "fanout", "--config", str(path), "--worker-index", "1",
        "--worker-count", str(cpus), "--inherit-fd", "3", "--deadline-ms", "300"]
    with pytest.raises(UsageError, match="--workers must be at least 0"):
        options("--config", str(path), "--workers", "-1")
    with pytest.raises(UsageError, match="--workers needs --config"):
        options("--demo", "--workers", "2")
    with pytest.raises(UsageError, match="are for the workers themselves"):
        options("--config", str(path), "--workers", "2", "--worker-index", "1")
    with pytest.raises(UsageError, match="are for the workers themselves"):
        options("--config", str(path), "--workers", "2", "--worker-count", "2")
    with pytest.raises(UsageError, match="--worker-count must be at least 1"):
        options("--config", str(path), "--worker-count", "0")
    guarded = tmp_path / "guarded.toml"  # a systemd: admin socket may be anywhere
    guarded.write_text('[server]\nadmin_token = "0123456789abcdef-token"\n' + CONFIG)
    with pytest.raises(UsageError, match="server.admin: cannot derive a per-worker endpoint"):
        options("--config", str(guarded), "--workers", "2", "--admin",
                "systemd:domain=INET:name=admin")


def test_worker_index_shifts_the_admin_port(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    o = options("--config", str(path), "--worker-index", "3")
    assert o.admin_endpoint == "tcp:8084:interface=127.0.0.1"
    assert o.config.server.admin == "tcp:8081:interface=127.0.0.1"  # what reload compares
    assert options("--config", str(path)).admin_endpoint == "tcp:8081:interface=127.0.0.1"


# -- what a newcomer meets on the command line, as real processes --

ROOT = Path(__file__).resolve().parent.parent


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def twistd(*argv: str) -> subprocess.CompletedProcess[str]:
    return run("-c", TWISTD_MAIN, "--nodaemon", "--pidfile=", "fanout", *argv)


@pytest.mark.slow  # twistd or txfanout as a process, as an operator runs it
@pytest.mark.runtime_neutral
def test_the_version_is_txfanouts_and_comes_from_one_place() -> None:
    line = about.version_line()
    assert line.startswith(f"txfanout {txfanout.__version__} (")
    assert run("-m", "txfanout", "--version").stdout.strip() == line
    assert twistd("--version").stdout.strip() == line
    setup = run("setup.py", "--version", cwd=ROOT)
    assert setup.stdout.strip().splitlines()[-1] == txfanout.__version__, setup.stderr


@pytest.mark.slow  # twistd or txfanout as a process, as an operator runs it
@pytest.mark.parametrize("argv, message", [
    ((), "twistd fanout: give --config PATH (txfanout init-config PATH writes a starter), "
         "or --demo to try the built-in demo partners"),
    (("--demo", "--deadline-ms", "abc"),
     "twistd fanout: --deadline-ms takes a whole number, e.g. --deadline-ms 500 (not 'abc')"),
    (("--demo", "--bogus"), "twistd fanout: option --bogus not recognized"),
    (("--demo", "--demo-port", "70000"), "twistd fanout: --demo-port must be from 1 to 65535"),
])
@pytest.mark.runtime_neutral
def test_a_bad_option_is_one_line_and_where_help_is(argv: tuple[str, ...], message: str) -> None:
    refused = twistd(*argv)
    assert refused.returncode == 1
    assert (refused.stdout + refused.stderr).splitlines() == [
        message, "see: twistd fanout --help"]


@pytest.mark.slow  # twistd or txfanout as a process, as an operator runs it
@pytest.mark.runtime_neutral
def test_an_option_out_of_its_key_range_names_both() -> None:
    refused = twistd("--demo", "--deadline-ms", "3")
    assert refused.returncode == 1
    assert (refused.stdout + refused.stderr).splitlines() == [
        "twistd fanout: invalid configuration:",
        "  server.deadline_ms (--deadline-ms): must be an integer from 10 to 60000",
        "see: twistd fanout --help"]


@pytest.mark.slow  # twistd or txfanout as a process, as an operator runs it
@pytest.mark.parametrize("busy, message", [
    ("--listen", "cannot listen on tcp:{port}:interface=127.0.0.1 (public): Address already in "
                 "use; choose another with --listen (or server.listen)"),
    ("--admin", "cannot listen on tcp:{port}:interface=127.0.0.1 (admin): Address already in "
                "use; choose another with --admin (or server.admin)"),
    ("--demo-port", "cannot listen on 127.0.0.1:{port} (demo partners): Address already in "
                    "use; choose another with --demo-port"),
])
@pytest.mark.runtime_neutral
def test_a_busy_port_names_the_endpoint_and_the_option(busy: str, message: str) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        ports = {"--listen": f"tcp:{free_port()}:interface=127.0.0.1",
                 "--admin": f"tcp:{free_port()}:interface=127.0.0.1",
                 "--demo-port": str(free_port())}
        ports[busy] = str(port) if busy == "--demo-port" else f"tcp:{port}:interface=127.0.0.1"
        refused = twistd("--demo", *[arg for item in ports.items() for arg in item])
    output = refused.stdout + refused.stderr
    assert refused.returncode == 1, output
    assert "txfanout: " + message.format(port=port) in output
    assert "Traceback" not in output and len(output.splitlines()) <= 8, output


@pytest.mark.slow  # twistd or txfanout as a process, as an operator runs it
@pytest.mark.runtime_neutral
def test_init_config_writes_a_config_the_demo_runs(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    demo_port = free_port()
    wrote = run("-m", "txfanout", "init-config", str(path), "--demo-port", str(demo_port))
    assert wrote.returncode == 0 and f"--demo-port {demo_port} --config {path}" in wrote.stdout
    assert configuration.load(str(path)) == configuration.parse(
        demo.demo_config(demo.base_url(demo_port)))
    again = run("-m", "txfanout", "init-config", str(path))
    assert again.returncode == 1
    assert again.stderr.strip() == (f"init-config: {path} exists; give another path, or "
                                    "--force to replace it")
    daemon = Daemon("--demo", "--demo-port", str(demo_port), "--config", str(path))
    try:
        daemon.wait_ready()
        status, answer = daemon.post(headers={"X-Country": "FR", "X-OS": "android"})
        assert status == 200 and (answer["country"], answer["os"]) == ("FR", "android")
        assert {r["partner"] for r in answer["results"]} == {
            "demo-fast", "demo-normal", "demo-slow", "demo-flaky", "demo-eu", "demo-mobile"}
    finally:
        assert daemon.stop() == 0


@pytest.mark.slow  # twistd or txfanout as a process, as an operator runs it
@pytest.mark.runtime_neutral
def test_check_config_warns_of_placeholder_partners(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.replace("http://127.0.0.1:1/", "https://dsp.example/bid"))
    checked = run("-m", "txfanout", "check-config", str(path))
    assert checked.returncode == 0 and checked.stdout == f"{path}: ok\n"
    assert checked.stderr == ("warning: partners.a.url: dsp.example is a placeholder host "
                              "(reserved for examples): every call to it fails; give your "
                              "partner's URL\n")
    assert advice.warnings(configuration.load(str(path))) != []
    for host in ("127.0.0.1", "example.org.internal", "dsp.example.org", "x.invalid"):
        assert advice.is_placeholder(host) is host.endswith((".org", ".invalid")), host
