"""Preconditions: tools present, Python packages importable, machine not busy.

Each missing piece is reported with the exact thing to install.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass, field

from . import nginx

# tool -> Debian package that provides it
TOOLS = {
    "nginx": "nginx",
    "wrk": "wrk",
    "ab": "apache2-utils",
    "h2load": "nghttp2-client",
    "taskset": "util-linux",
    "go": "golang-go",
}
# gateway -> python modules it needs, and how to get them
MODULES = {
    "txfanout": (("twisted", "treq", "klein"), "pip install -e . (or pip install '.[bench]')"),
    "bare-twisted": (("twisted",), "pip install Twisted"),
    "aiohttp": (("aiohttp",), "pip install aiohttp (or pip install '.[bench]')"),
    "aiohttp-uvloop": (("aiohttp", "uvloop"), "pip install aiohttp uvloop"),
}
# gateways built at run time with a tool; without it the gateway is skipped
# (a warning and a note in the table), the rest of the run goes on
BUILT_WITH = {"go-nethttp": "go"}


@dataclass
class Report:
    """Problems (the run cannot go on) and warnings (it can, less reliably)."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # gateways that cannot be built


def tool_version(cmd: list[str]) -> str:
    """First line of what ``cmd`` prints ('' when it fails)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return ""


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def check(tools: set[str], gateways: list[str], want_plots: bool = True,
          pin: bool = True) -> Report:
    """Check what a run needs; ``tools`` are the load generators it uses."""
    r = Report()
    needed = {"nginx"} | tools | ({"taskset"} if pin else set())
    for tool in sorted(needed):
        if shutil.which(tool) is None:
            r.problems.append(f"{tool} not found: apt-get install {TOOLS[tool]}")
    if shutil.which("nginx") is not None:
        if nginx.echo_module() is None:
            r.problems.append("nginx echo module not found under /usr/lib/nginx/modules: "
                              "apt-get install libnginx-mod-http-echo")
        try:
            v = subprocess.run(["nginx", "-V"], capture_output=True, text=True, timeout=10)
            if "http_stub_status_module" not in v.stderr:
                r.problems.append("this nginx lacks stub_status (needed to count upstream "
                                  "connections): apt-get install nginx")
        except (OSError, subprocess.TimeoutExpired) as e:
            r.problems.append(f"nginx -V failed: {e}")
    for gw in gateways:
        tool = BUILT_WITH.get(gw)
        if tool is not None:
            if shutil.which(tool) is None:
                r.warnings.append(f"gateway {gw} needs {tool} to be built: apt-get install "
                                  f"{TOOLS[tool]}; {gw} is skipped")
                r.skipped.append(gw)
            else:
                r.facts[f"{tool}_version"] = tool_version([tool, "version"])
        modules, how = MODULES.get(gw, ((), ""))
        missing = [m for m in modules if not has_module(m)]
        if missing:
            r.problems.append(f"gateway {gw} needs Python module(s) {', '.join(missing)}: {how}")
    if want_plots and not has_module("matplotlib"):
        r.warnings.append("matplotlib not importable: no PNG plots (pip install matplotlib)")
    ncpu = os.cpu_count() or 1
    load1, load5, _ = os.getloadavg()
    r.facts.update({"cpus": ncpu, "loadavg_1m": round(load1, 2), "loadavg_5m": round(load5, 2)})
    if load1 > 0.5 * ncpu:
        r.warnings.append(f"machine is busy: 1-minute load average {load1:.2f} on {ncpu} "
                          f"CPUs; figures will be noisy (ratios still compare like with like)")
    if pin and ncpu < 2:
        r.warnings.append("fewer than 2 CPUs: no pinning; load generator and gateway share a core")
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        r.facts["nofile"] = soft
        if soft < 8192:
            r.warnings.append(f"open-files limit is {soft}; the seed and overload scenarios "
                              f"open thousands of sockets (ulimit -n 65536)")
    except (ImportError, ValueError):
        pass
    return r
