"""The systemd units, and socket activation with real processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .daemon import (Daemon, ThreadedPartner, config_text, free_port, free_port_range,
                     served_while_stopped)

UNITS = Path(__file__).parent.parent / "systemd"
INSTALLED_BINS = ("/opt/txfanout/bin/", "/opt/txfanout-pypy/bin/")  # CPython's venv, PyPy's
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


def unit_lines(name: str) -> list[str]:
    return [line for line in (UNITS / name).read_text().splitlines()
            if line and not line.startswith("#")]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (.ci/run installs it)")
@pytest.mark.parametrize("unit", ["txfanout.service", "txfanout.socket", "txfanout@.service"])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, unit: str) -> None:
    """Verified as installed, drop-ins included (the PyPy one): the units name
    /opt/txfanout/bin/{twistd,python} and /opt/txfanout-pypy/bin/... (the
    documented venvs); here they point at this Python and its twistd, which
    verify checks are executable."""
    twistd = Path(sys.executable).parent / "twistd"
    assert twistd.exists(), f"no twistd beside {sys.executable}"
    for path in UNITS.rglob("*"):
        if path.is_dir():
            continue
        text = path.read_text()
        for installed in INSTALLED_BINS:
            text = text.replace(installed + "twistd", str(twistd))
            text = text.replace(installed + "python", sys.executable)
            assert not [line for line in text.splitlines()
                        if installed in line and not line.startswith("#")], path.name
        target = tmp_path / path.relative_to(UNITS)
        target.parent.mkdir(exist_ok=True)
        target.write_text(text)
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}  # its drop-ins too
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / unit)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert result.returncode == 0 and not result.stdout and not result.stderr, \
        result.stdout + result.stderr


@pytest.mark.parametrize("unit", ["txfanout.service", "txfanout@.service"])
def test_the_pypy_drop_in_runs_the_same_daemon_from_the_pypy_venv_warmed_up(unit: str) -> None:
    lines = unit_lines(f"{unit}.d/pypy.conf")
    assert lines.count("ExecStart=") == 1 and lines.count("ExecStartPre=") == 1  # resets
    [start] = [line for line in lines if line.startswith("ExecStart=/")]
    [service_start] = [line for line in unit_lines(unit) if line.startswith("ExecStart=")]
    assert start == service_start.replace("/opt/txfanout/", "/opt/txfanout-pypy/") \
        + " --warmup 1000"
    # PyPy's nursery, whatever cache the CPU reports (docs/pypy.rst, "Memory")
    assert "Environment=PYPY_GC_NURSERY=32MB" in lines


def test_units_say_what_the_daemon_needs() -> None:
    service = unit_lines("txfanout.service")
    assert "Type=notify" in service and "Restart=on-failure" in service
    assert "ExecReload=/bin/kill -HUP $MAINPID" in service
    assert any(line.startswith("WatchdogSec=") for line in service)
    assert "ExecStart=/opt/txfanout/bin/twistd --nodaemon --pidfile= fanout --config " \
           "/etc/txfanout/txfanout.toml" in service
    for hardening in ("DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict",
                      "ProtectHome=yes", "PrivateTmp=yes", "CapabilityBoundingSet="):
        assert hardening in service
    assert "LimitNOFILE=65536" in service
    instance = unit_lines("txfanout@.service")
    assert "Sockets=txfanout.socket" in instance and "Type=notify" in instance
    assert any(line.startswith("ExecStart=") and
               "--listen systemd:domain=INET:name=web --worker-index %i" in line
               for line in instance)
    socket_unit = unit_lines("txfanout.socket")
    assert "FileDescriptorName=web" in socket_unit


def activated(port: int, *command: str) -> list[str]:
    """``systemd-socket-activate`` listening on 127.0.0.1:``port`` (fd name
    ``web``) in front of ``command``."""
    assert SOCKET_ACTIVATE, "systemd-socket-activate is not installed (.ci/run installs it)"
    # It passes the child no environment but what -E names.
    keep = [arg for name in ("PYTHONPATH", "PATH") if name in os.environ
            for arg in ("-E", name)]
    return [SOCKET_ACTIVATE, "-l", f"127.0.0.1:{port}", "--fdname=web", *keep, "--", *command]


# What systemd does for instances listing one socket in Sockets=: each gets
# the same listening socket as fd 3, with LISTEN_PID set to its own pid.
INSTANCES = """
for i in 0 1; do
  sh -c 'export LISTEN_PID=$$; exec "$@"' sh "$@" --worker-index "$i" &
done
wait
"""


@pytest.mark.slow
@pytest.mark.runtime_neutral
def test_socket_activated_instances_share_one_socket(tmp_path: Path,
                                                     threaded_partner: ThreadedPartner) -> None:
    path = tmp_path / "txfanout.toml"
    path.write_text(config_text({"bid": "/ok"}, threaded_partner))
    launcher = tmp_path / "instances.sh"
    launcher.write_text(INSTANCES)
    port, admin = free_port(), free_port_range(2)
    daemon = Daemon("--config", str(path), "--listen", "systemd:domain=INET:name=web",
                    "--admin", f"tcp:{admin}:interface=127.0.0.1",
                    port=port, admin_port=admin, endpoint_flags=False,
                    prefix=activated(port, "/bin/sh", str(launcher)))
    pids: list[int] = []
    try:
        daemon.wait_for("Listening on 127.0.0.1")
        # Nothing runs yet: the first connection starts the instances, and
        # is served once they are up.
        status, answer = daemon.post("/bid", timeout=30)
        assert status == 200 and answer["results"][0]["outcome"] == "ok"
        daemon.wait_for("ready: pid", count=2)
        pids = [daemon.healthz(0)["pid"], daemon.healthz(1)["pid"]]
        assert len(set(pids)) == 2
        assert served_while_stopped(daemon, pids[0]) == 200
        assert served_while_stopped(daemon, pids[1]) == 200
        # Stopping one instance leaves the socket served by the other.
        os.kill(pids[0], signal.SIGTERM)
        daemon.wait_for("drained in")
        assert daemon.post("/bid")[0] == 200
        os.kill(pids[1], signal.SIGTERM)
        code = daemon.wait(15)  # the launcher exits when both have
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        code = daemon.stop()
    log = "".join(daemon.log)
    assert code == 0, log
    assert log.count("drained in") == 2 and "Traceback" not in log


@pytest.mark.slow
@pytest.mark.runtime_neutral
def test_socket_activated_workers(tmp_path: Path, threaded_partner: ThreadedPartner) -> None:
    """``--workers`` takes the socket systemd passed and shares it."""
    path = tmp_path / "txfanout.toml"
    path.write_text(config_text({"bid": "/ok"}, threaded_partner))
    port, admin = free_port(), free_port_range(2)
    daemon = Daemon("--config", str(path), "--listen", "systemd:domain=INET:name=web",
                    "--admin", f"tcp:{admin}:interface=127.0.0.1", "--workers", "2",
                    port=port, admin_port=admin, endpoint_flags=False,
                    prefix=activated(port))
    try:
        daemon.wait_for("Listening on 127.0.0.1")
        assert daemon.post("/bid", timeout=30)[0] == 200
        daemon.wait_for("workers: all 2 ready")
        pids = [daemon.healthz(0)["pid"], daemon.healthz(1)["pid"]]
        assert served_while_stopped(daemon, pids[0]) == 200
        assert served_while_stopped(daemon, pids[1]) == 200
    finally:
        code = daemon.stop()
    assert code == 0, "".join(daemon.log)
