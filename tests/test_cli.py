"""The daemon's options and manual, and the worker command lines."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from twisted.python.usage import UsageError

from txfanout import tap

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


def test_workers_options(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    o = options("--config", str(path), "--workers", "0", "--deadline-ms", "300")
    cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count())  # PyPy 3.9 has no sched_getaffinity
    assert o.workers == cpus
    assert o.worker_args(1) == [
        "fanout", "--config", str(path), "--worker-index", "1", "--inherit-fd", "3",
        "--deadline-ms", "300"]
    with pytest.raises(UsageError, match="--workers must be at least 0"):
        options("--config", str(path), "--workers", "-1")
    with pytest.raises(UsageError, match="--workers needs --config"):
        options("--demo", "--workers", "2")
    with pytest.raises(UsageError, match="are for the workers themselves"):
        options("--config", str(path), "--workers", "2", "--worker-index", "1")
    guarded = tmp_path / "guarded.toml"  # a systemd: admin socket may be anywhere
    guarded.write_text('[server]\nadmin_token = "0123456789abcdef-token"\n' + CONFIG)
    with pytest.raises(UsageError, match="server.admin: cannot derive a per-worker endpoint"):
        options("--config", str(guarded), "--workers", "2", "--admin",
                "systemd:domain=INET:name=admin")


def test_worker_index_shifts_the_admin_port(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    o = options("--config", str(path), "--worker-index", "3")
    assert o.admin_endpoint == "tcp:9093:interface=127.0.0.1"
    assert o.config.server.admin == "tcp:9090:interface=127.0.0.1"  # what reload compares
    assert options("--config", str(path)).admin_endpoint == "tcp:9090:interface=127.0.0.1"
