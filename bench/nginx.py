"""The partner under load: a private nginx on 127.0.0.1 with its own config.

Locations (all answer POST with a ~100-byte JSON body):

- ``/bidN`` (any path not listed below): answers at once (``return 200``).
- ``/mixed``: ~20% of calls (``split_clients`` on ``$request_id``) are sent
  to ``/delayed``, the rest answer at once.
- ``/delayed`` (internal): answers after ``slow_ms`` (echo module's
  ``echo_sleep``).
- ``/slowtail``: the slow partner of the slowpartner scenario: of its calls
  ``TAIL_MIX`` (percent, ms) go to ``/tailMS`` (internal, answers after MS
  ms), the rest answer at once.
- ``/nginx_status``: ``stub_status``; its ``accepts`` counter is the number
  of TCP connections nginx has accepted, i.e. upstream connections opened.

When the harness runs as root, nginx runs as ``nobody`` (master included).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import urllib.request
from collections import Counter
from dataclasses import dataclass

from .procs import Child, Registry, pinned, wait_http

ECHO_MODULE_GLOBS = ("/usr/lib/nginx/modules/ngx_http_echo_module.so",
                     "/usr/lib/nginx/modules/*echo*.so",
                     "/usr/lib*/nginx/modules/*echo*.so")

# 100 bytes exactly, a plausible bid answer.
BODY = '{"id":"bench","seatbid":[{"bid":[{"price":1.25,"adm":"<ad/>","crid":"c-420"}]}],"cur":"USD","nbr":0}'
assert len(BODY) == 100, len(BODY)
# /slowtail: (percent of calls, delay ms); 20% past the 300 ms partner timeout
TAIL_MIX = ((10, 400), (7, 600), (3, 900))


def echo_module() -> str | None:
    """Path of the echo module .so, or None when it is not installed."""
    for pattern in ECHO_MODULE_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def render_conf(tmpdir: str, port: int, module: str, slow_ms: int,
                slow_percent: int, access_log: bool) -> str:
    """The whole nginx.conf for a partner on 127.0.0.1:``port``."""
    tail_split = "\n        ".join(f"{pct}% /tail{ms};" for pct, ms in TAIL_MIX)
    tail_locations = "".join(f"""
        location = /tail{ms} {{
            internal;
            echo_read_request_body;
            echo_sleep {ms / 1000.0:.3f};
            echo -n '{BODY}';
        }}""" for _, ms in TAIL_MIX)
    log = (f"log_format bench '$connection $status $request_time $uri';\n"
           f"    access_log {tmpdir}/access.log bench buffer=256k flush=1s;"
           if access_log else "access_log off;")
    return f"""# written by bench/nginx.py
load_module {module};
worker_processes 1;
pid {tmpdir}/nginx.pid;
error_log {tmpdir}/error.log warn;
worker_rlimit_nofile 65536;
events {{
    worker_connections 32768;
    multi_accept on;
}}
http {{
    {log}
    client_body_temp_path {tmpdir}/client_body;
    proxy_temp_path {tmpdir}/proxy;
    fastcgi_temp_path {tmpdir}/fastcgi;
    uwsgi_temp_path {tmpdir}/uwsgi;
    scgi_temp_path {tmpdir}/scgi;
    client_body_buffer_size 64k;
    client_max_body_size 1m;
    keepalive_requests 100000;
    keepalive_timeout 75s;
    server_tokens off;
    default_type application/json;
    split_clients "${{request_id}}" $bench_slow {{
        {slow_percent}% 1;
        * "";
    }}
    split_clients "${{request_id}}" $bench_tail {{
        {tail_split}
        * "";
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /nginx_status {{
            stub_status;
        }}
        location = /mixed {{
            if ($bench_slow) {{
                rewrite ^ /delayed last;
            }}
            return 200 '{BODY}';
        }}
        location = /delayed {{
            internal;
            echo_read_request_body;
            echo_sleep {slow_ms / 1000.0:.3f};
            echo -n '{BODY}';
        }}
        location = /slowtail {{
            if ($bench_tail) {{
                rewrite ^ $bench_tail last;
            }}
            return 200 '{BODY}';
        }}{tail_locations}
        location / {{
            return 200 '{BODY}';
        }}
    }}
}}
"""


@dataclass
class Nginx:
    """A running private nginx."""

    port: int
    tmpdir: str
    child: Child
    access_log: bool

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self) -> dict[str, int]:
        """stub_status counters: active, accepts, handled, requests (this
        poll's own connection and request included)."""
        with urllib.request.urlopen(f"{self.base_url}/nginx_status", timeout=5) as r:
            text = r.read().decode()
        # "Active connections: N \nserver accepts handled requests\n A H R \n..."
        a = re.search(r"Active connections:\s*(\d+)", text)
        m = re.search(r"\n\s*(\d+)\s+(\d+)\s+(\d+)", text)
        if not a or not m:
            raise RuntimeError(f"unexpected stub_status output: {text!r}")
        return {"active": int(a.group(1)), "accepts": int(m.group(1)),
                "handled": int(m.group(2)), "requests": int(m.group(3))}

    def access_log_mark(self) -> int:
        """Current size of the access log (a place to count from)."""
        path = os.path.join(self.tmpdir, "access.log")
        return os.path.getsize(path) if os.path.exists(path) else 0

    def access_log_stats(self, start: int, end: int | None = None) -> dict[str, object]:
        """Counts from the access log between two marks: distinct connections,
        statuses, and requests to /delayed answered (200) or abandoned by the
        gateway (499)."""
        path = os.path.join(self.tmpdir, "access.log")
        if not os.path.exists(path):
            return {}
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(max(0, end - start))
        conns: set[bytes] = set()
        statuses: Counter[str] = Counter()
        delayed: Counter[str] = Counter()
        for line in data.splitlines():
            parts = line.split()
            if len(parts) < 4 or parts[3] == b"/nginx_status":
                continue
            conns.add(parts[0])
            statuses[parts[1].decode()] += 1
            if parts[3] == b"/delayed":
                delayed[parts[1].decode()] += 1
        return {"connections": len(conns), "statuses": dict(statuses),
                "delayed": dict(delayed)}


def start(registry: Registry, tmpdir: str, port: int, cpu: int | None = None,
          slow_ms: int = 500, slow_percent: int = 20, access_log: bool = False) -> Nginx:
    """Write the config into ``tmpdir`` and start nginx in the foreground."""
    module = echo_module()
    if module is None:
        raise RuntimeError("nginx echo module missing: apt-get install libnginx-mod-http-echo")
    os.makedirs(tmpdir, exist_ok=True)
    conf = os.path.join(tmpdir, "nginx.conf")
    with open(conf, "w", encoding="utf-8") as f:
        f.write(render_conf(tmpdir, port, module, slow_ms, slow_percent, access_log))
    extra: dict[str, object] = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        for root, dirs, files in os.walk(tmpdir):
            for name in [root] + [os.path.join(root, n) for n in dirs + files]:
                os.chown(name, nobody.pw_uid, nobody.pw_gid)
        extra = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    cmd = pinned(["nginx", "-p", tmpdir, "-c", conf, "-e", f"{tmpdir}/error.log",
                  "-g", "daemon off;"], cpu)
    child = registry.start("nginx", cmd, log_path=os.path.join(tmpdir, "stdout.log"),
                           **extra)
    server = Nginx(port, tmpdir, child, access_log)
    try:
        wait_http(f"{server.base_url}/nginx_status", 10.0, child)
    except RuntimeError as e:
        err = ""
        try:
            with open(os.path.join(tmpdir, "error.log"), encoding="utf-8") as f:
                err = f.read()[-2000:]
        except OSError:
            pass
        raise RuntimeError(f"{e}\nnginx error.log:\n{err}") from None
    return server
