"""aiohttp: the same fan-out written the way a Python user would write it.

An aiohttp server and one ClientSession (TCPConnector with a limit); each
POST starts one task per partner, ``asyncio.wait`` with the timeout, cancels
the stragglers, answers the same JSON shape as txfanout. ``GET /healthz``
answers 200. ``--uvloop`` runs it on uvloop (when it imports).

    python bench/ref_aiohttp.py --port 8082 --fanout 2 \\
        --partner-url 'http://127.0.0.1:8000/bid{i}' --timeout-ms 300 --deadline-ms 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

HEADERS = {"Content-Type": "application/json"}


async def call(session: ClientSession, index: int, url: str, body: bytes) -> dict[str, Any]:
    started = time.monotonic()
    try:
        async with session.post(url, data=body, headers=HEADERS) as r:
            data = await r.read()
            return {"partner": f"p{index + 1}",
                    "outcome": "ok" if 200 <= r.status < 300 else "http_error",
                    "status": r.status,
                    "latency_ms": round((time.monotonic() - started) * 1000, 1),
                    "body": data.decode("utf-8", "replace")}
    except asyncio.CancelledError:
        raise
    except Exception:
        return {"partner": f"p{index + 1}", "outcome": "error", "status": None,
                "latency_ms": round((time.monotonic() - started) * 1000, 1), "body": None}


def make_app(urls: list[str], timeout_s: float, pool_size: int) -> web.Application:
    app = web.Application()
    state: dict[str, Any] = {"n": 0, "prefix": os.urandom(4).hex(), "answers": 0,
                             "complete": 0, "started": time.monotonic()}

    async def on_startup(app: web.Application) -> None:
        state["session"] = ClientSession(
            connector=TCPConnector(limit=pool_size, limit_per_host=0, keepalive_timeout=60),
            timeout=ClientTimeout(total=None), auto_decompress=False)

    async def on_cleanup(app: web.Application) -> None:
        await state["session"].close()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"answers": state["answers"], "complete": state["complete"],
                                  "uptime_s": round(time.monotonic() - state["started"], 3)})

    async def fanout(request: web.Request) -> web.Response:
        started = time.monotonic()
        body = await request.read()
        session: ClientSession = state["session"]
        tasks = [asyncio.create_task(call(session, i, url, body)) for i, url in enumerate(urls)]
        try:
            done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()
        results = []
        for i, t in enumerate(tasks):
            if t in done:
                results.append(t.result())
            else:
                results.append({"partner": f"p{i + 1}", "outcome": "timeout", "status": None,
                                "latency_ms": round(timeout_s * 1000, 1), "body": None})
        state["n"] += 1
        complete = all(r["outcome"] == "ok" for r in results)
        data = json.dumps({"request_id": f"{state['prefix']}-{state['n']:x}", "route": "bid",
                           "complete": complete,
                           "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
                           "results": results})
        # Counted when the client is still there to receive it (as the other
        # references do): a client that hung up gets no answer.
        transport = request.transport
        if transport is not None and not transport.is_closing():
            state["answers"] += 1
            state["complete"] += complete
        return web.Response(text=data, content_type="application/json",
                            headers={"X-Fanout-Complete": "true" if complete else "false"})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", stats)
    app.router.add_post("/{route}", fanout)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--fanout", type=int, required=True)
    p.add_argument("--partner-url", required=True,
                   help="partner URL; '{i}' is replaced by 1..fanout")
    p.add_argument("--timeout-ms", type=int, default=300)
    p.add_argument("--deadline-ms", type=int, default=500)
    p.add_argument("--pool-size", type=int, default=0,
                   help="TCPConnector limit (default 256 x fanout)")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop")
    a = p.parse_args()
    urls = [a.partner_url.replace("{i}", str(i + 1)) for i in range(a.fanout)]
    if a.uvloop:
        import uvloop

        uvloop.install()
    app = make_app(urls, min(a.timeout_ms, a.deadline_ms) / 1000.0,
                   a.pool_size or 256 * a.fanout)
    print(f"aiohttp listening on 127.0.0.1:{a.port}, fan-out {a.fanout}"
          f"{' (uvloop)' if a.uvloop else ''}", flush=True)
    web.run_app(app, host="127.0.0.1", port=a.port, backlog=4096, access_log=None,
                print=None, handle_signals=True)


if __name__ == "__main__":
    main()
