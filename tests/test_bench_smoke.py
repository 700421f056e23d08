"""Smoke test of the benchmark harness: ``python -m bench run`` for ~2 s per
gateway (steady, fan-out 1) against a real nginx with wrk, then checks the
JSON it wrote. Skipped only where wrk or nginx is not installed or aiohttp
is not importable."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GATEWAYS = {"txfanout", "bare-twisted", "aiohttp"}


def _skip_reason() -> str | None:
    missing = [f"{tool} (apt-get install {pkg})"
               for tool, pkg in (("wrk", "wrk"), ("nginx", "nginx libnginx-mod-http-echo"))
               if shutil.which(tool) is None]
    if missing:
        return "benchmark tools not installed: " + ", ".join(missing)
    if importlib.util.find_spec("aiohttp") is None:
        return "aiohttp not importable (pip install -e '.[test]')"
    return None


def test_bench_steady_smoke(tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "out"
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--scenario", "steady", "--quick",
         "--duration", "2", "--fanouts", "1", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, output

    data = json.loads((out / "results.json").read_text())
    rows = {r["gateway"]: r for r in data["rows"]}
    assert set(rows) == GATEWAYS, output
    for name, row in rows.items():
        where = f"{name}: {json.dumps({k: row[k] for k in ('statuses', 'socket_errors')})}"
        assert row["scenario"] == "steady" and row["fanout"] == 1, where
        assert row["tool"] == "wrk", where
        assert row["requests"] > 0 and row["rps"] > 0, where
        assert row["errors"] == 0, where
        assert row["statuses"] == {"200": row["requests"]}, where
        assert row["socket_errors"] == {}, where
        assert row["partner_timeouts"] == 0 and row["incomplete"] == 0, where
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"], where
        assert row["cpu_s_per_1k"] > 0, where
        assert row["peak_rss_mb"] > 0 and row["settled_rss_mb"] > 0, where
        assert row["upstream_rps"] > 0, where  # nginx saw the fan-out calls
        assert row["upstream_conns_new"] >= 0, where
        assert row["gateway_log_errors"] == 0, where
    refs = {(q["reference"], q["fanout"]) for q in data["ratios"]}
    assert refs == {("bare-twisted", 1), ("aiohttp", 1)}
    assert all(q["rps"] and q["rps"] > 0 for q in data["ratios"])
    assert data["meta"]["scenario"] == "steady"
    table = (out / "table.md").read_text()
    assert "| txfanout | 1 | wrk |" in table
    if importlib.util.find_spec("matplotlib") is not None:
        for png in ("throughput.png", "latency.png", "rss.png"):
            assert (out / png).stat().st_size > 1000, png
    # it started nginx, three gateways and wrk runs, and left none running
    started = data["meta"]["started"]
    assert {s["name"] for s in started} >= {"nginx", "wrk"} | GATEWAYS
    assert data["meta"]["left_running"] == []
    for s in started:
        with pytest.raises(ProcessLookupError):
            os.kill(s["pid"], 0)
