"""CPU per request, in-process: where the microseconds of each GET go, without HTTP or wrk.

    .venv/bin/python bench/api_cpu.py [--db sqlite,postgres] [--n 2000] [--only LABEL,…]
                                      [--profile LABEL] [--loop-thread] [--repeat R]

Sets up the same data as bench/api.py (a real `gpucloud serve`, 100 instances of each kind),
stops that server, builds the app in this process on the same database, and calls it as an
ASGI application in a loop: 32 concurrent tasks on uvloop, like 32 connections. Prints the CPU
time of this process per request (the threadpool's threads included), for every endpoint and
for a bare Starlette app returning the plans bytes. On a loaded machine CPU time moves much
less than req/s does, so this is the script to compare changes with; `bench/api.py` is the
one that measures throughput over HTTP.

`--profile LABEL` runs the endpoints whose label contains LABEL under cProfile and prints the
top functions. `--loop-thread` also prints the event loop thread's share of the CPU (what a
second process could not take over: the rest is the threads' database work), the system
time and the context switches of the process per request (each hand-over of the interpreter
lock between a thread and the loop is one).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import api  # noqa: E402
import httpx  # noqa: E402
import uvloop  # noqa: E402
from servers import free_port  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from gpucloud.app import create_app  # noqa: E402
from gpucloud.runtime import Runtime  # noqa: E402
from gpucloud.settings import Settings  # noqa: E402
from gpucloud.web.logs import configure  # noqa: E402
from gpucloud.web.server import settle_heap  # noqa: E402


def _scope(method: str, path: str, headers: dict[str, str], body: bytes | None) -> dict:
    raw_path, _, query = path.partition("?")
    hdrs = [(b"host", b"127.0.0.1")] + [(k.lower().encode(), v.encode())
                                        for k, v in headers.items()]
    if body is not None:
        hdrs += [(b"content-type", b"application/json"),
                 (b"content-length", str(len(body)).encode())]
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": method, "scheme": "http", "path": raw_path,
            "raw_path": raw_path.encode(), "query_string": query.encode(), "root_path": "",
            "headers": hdrs, "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000)}


async def _call(app, scope: dict, body: bytes | None) -> int:
    status = 0
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body or b"", "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(dict(scope), receive, send)
    return status


async def _drive(app, scope, body, n: int, concurrency: int,
                 loop_thread: bool = False) -> tuple[float, float, dict]:
    statuses: dict[int, int] = {}
    per_task = max(1, n // concurrency)

    async def worker():
        for _ in range(per_task):
            code = await _call(app, scope, body)
            statuses[code] = statuses.get(code, 0) + 1

    cpu, wall, main = time.process_time(), time.perf_counter(), time.thread_time()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = per_task * concurrency
    if loop_thread:
        after = resource.getrusage(resource.RUSAGE_SELF)
        print(f"   loop thread {(time.thread_time() - main) / done * 1e6:.0f} µs/req; "
              f"system {(after.ru_stime - usage.ru_stime) / done * 1e6:.0f} µs/req; "
              f"context switches {(after.ru_nvcsw - usage.ru_nvcsw) / done:.1f} voluntary, "
              f"{(after.ru_nivcsw - usage.ru_nivcsw) / done:.1f} forced per request")
    return ((time.process_time() - cpu) / done * 1e6, done / (time.perf_counter() - wall),
            statuses)


def _bare(body: bytes):
    async def endpoint(request):
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/bare", endpoint)])


async def _measure(app, bare, ctx, args) -> None:
    todo = [("bare Starlette (plans bytes)", bare, "GET", "/bare", {}, None)]
    for label, req in api.cases(ctx):
        if args.only and not any(o in label for o in args.only.split(",")):
            continue
        todo.append((label, app, req.method, req.path, req.headers, req.body))
    print(f"{'endpoint':40} {'c32 µs CPU':>10} {'c32 req/s':>10} {'c1 µs CPU':>10} "
          f"{'c1 req/s':>10}  status", flush=True)
    for label, target, method, path, headers, body in todo:
        scope = _scope(method, path, headers, body)
        n = args.n if method == "GET" else min(args.n, 300)
        await _drive(target, scope, body, min(n, 200), 32)  # warm up
        if args.profile and args.profile in label:
            prof = cProfile.Profile(time.thread_time)
            prof.enable()
            await _drive(target, scope, body, n, 32)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(35)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(60)
        for _ in range(args.repeat):
            cpu, rps, statuses = await _drive(target, scope, body, n, 32, args.loop_thread)
            cpu1, rps1, _ = await _drive(target, scope, body, max(50, n // 4), 1)
            print(f"{label:40} {cpu:10.0f} {rps:10.0f} {cpu1:10.0f} {rps1:10.0f}  {statuses}",
                  flush=True)


async def _run(app, bare, ctx, args) -> None:
    async with app.router.lifespan_context(app):
        await _measure(app, bare, ctx, args)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="sqlite,postgres")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--only", default="")
    ap.add_argument("--profile", default="")
    ap.add_argument("--loop-thread", action="store_true")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure each endpoint this many times (a row each: see the spread)")
    ap.add_argument("--pg-url", default=os.environ.get(
        "GPUCLOUD_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/gpucloud_bench_cpu"))
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} on "
          f"{os.cpu_count()} cores")
    for name in args.db.split(","):
        url = None if name == "sqlite" else api.fresh_pg(args.pg_url)
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            port = free_port()
            server = api.start_gpucloud(tmp, port, url, 1)
            try:
                ctx = api.setup(f"http://{api.HOST}:{port}")
                plans_body = httpx.get(f"http://{api.HOST}:{port}/gpu/plans/",
                                       headers={"X-API-KEY": ctx["key"]}).content
            finally:
                server.terminate()
                server.wait(20)
            env = dict(GPUCLOUD_DATA_DIR=str(tmp), GPUCLOUD_ADMIN_KEY=api.ADMIN,
                       GPUCLOUD_WORKERS="0", GPUCLOUD_LOCAL_PROVIDER="0", GPUCLOUD_CLOCK="manual",
                       GPUCLOUD_DEMO="1", GPUCLOUD_LOG_FORMAT="json", GPUCLOUD_RATE_LIMITS="0",
                       GPUCLOUD_SECRET_KEY="x2yqkR1o2D2m3Gm0bnxkV8cJmJb8G0r5Q0c2yD3rW7s=")
            if url:
                env["GPUCLOUD_DATABASE_URL"] = url
            os.environ.update(env)
            if not url:
                os.environ.pop("GPUCLOUD_DATABASE_URL", None)
            settings = Settings()
            # The access log on, as in production, written to /dev/null.
            stderr = sys.stderr
            sys.stderr = open(os.devnull, "w")  # noqa: SIM115
            configure(settings.log_level, settings.log_format, settings.access_log)
            sys.stderr = stderr
            rt = Runtime.build(settings, migrate=False)
            app = create_app(settings, rt)
            settle_heap(settings)  # as `gpucloud serve` does
            print(f"\n{name}")

            uvloop.run(_run(app, _bare(plans_body), ctx, args))
            rt.close()


if __name__ == "__main__":
    main()
