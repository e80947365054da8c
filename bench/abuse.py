"""Another client's latency while the server is flooded with 13 MB bodies (issue 14).

    .venv/bin/python bench/abuse.py [--db sqlite,postgres] [--seconds 5] [--attackers 20]
                                    [--pg-url postgresql://…/gpucloud_abuse]

For each database, `gpucloud serve` (demo catalog, background workers off, manual clock) is
started once per configuration below. A victim client sends GET /gpu/account on one
keep-alive connection (wrk when installed, else bench/loadgen.py's asyncio client), first
alone, then while `--attackers` connections each send, one after another, POST
/gpu/instances/ with a 13 MB JSON object of 800,000 keys. The table shows the victim's p50
and p99 alone and under attack, what the attackers got, the server's memory at the end of
the attack, and how long it took to answer again once the attackers stopped.

Configurations, all measured in the same run:

- `before`: web/guard.py off (GPUCLOUD_GUARD=0), every body parsed whole on the event loop
  (GPUCLOUD_JSON_OFFLOAD_BYTES and GPUCLOUD_MAX_JSON_VALUES past any body): what the server
  did when issue 14 was filed.
- `no guard`: the guard off, gpucloud/bodies.py on: the 13 MB read, its values counted and
  refused (422) in a worker thread without parsing.
- `after`: the defaults: no key, so 403/429 before a byte of the body is read.
- `key, on loop` / `key, threads`: the attackers hold a valid key and send the costliest body
  accepted for parsing: 1 MiB, 9,000 keys (under GPUCLOUD_MAX_JSON_VALUES), read, parsed,
  validated and refused (422) — on the event loop, then in worker threads.

The key's rate limit is raised for the run (the victim sends thousands of requests a second;
the per-address limit for requests without a key stays at its default). Figures are noisy on
a shared 2-core machine, where the attackers' own CPU competes with the server: compare
within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
import loadgen  # noqa: E402
from servers import free_port, fresh_pg, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "bench-admin-key"
HOST = "127.0.0.1"
NEVER = str(1 << 40)  # an offload threshold no body reaches

CONFIGS = [  # label, environment, attackers use a key, body
    ("before", {"GPUCLOUD_GUARD": "0", "GPUCLOUD_JSON_OFFLOAD_BYTES": NEVER,
                "GPUCLOUD_MAX_JSON_VALUES": NEVER}, False, "13MB"),
    ("no guard", {"GPUCLOUD_GUARD": "0"}, False, "13MB"),
    ("after", {}, False, "13MB"),
    ("key, on loop", {"GPUCLOUD_JSON_OFFLOAD_BYTES": NEVER}, True, "1MiB"),
    ("key, threads", {}, True, "1MiB"),
]


def bodies() -> dict[str, bytes]:
    big = b"{" + b",".join(b'"k%d":%d' % (i, i) for i in range(800_000)) + b"}"
    # The costliest body a key holder can send: 1 MiB, as many values as accepted (9,000 keys
    # of 100 characters each, under GPUCLOUD_MAX_JSON_VALUES), parsed and validated in full.
    fits = b"{" + b",".join(b'"k%d":"%s"' % (i, b"x" * 100) for i in range(9_000)) + b"}"
    assert len(fits) <= 1024 * 1024, len(fits)
    return {"13MB": big, "1MiB": fits}


def start(tmp: Path, port: int, db_url: str | None, extra: dict[str, str]) -> subprocess.Popen:
    env = dict(os.environ, GPUCLOUD_DATA_DIR=str(tmp), GPUCLOUD_ADMIN_KEY=ADMIN,
               GPUCLOUD_WORKERS="0", GPUCLOUD_LOCAL_PROVIDER="0", GPUCLOUD_CLOCK="manual",
               GPUCLOUD_DEMO="1", GPUCLOUD_LOG_LEVEL="warning", GPUCLOUD_ACCESS_LOG="0",
               GPUCLOUD_RATE_LIMIT_KEY="1000000", GPUCLOUD_RATE_LIMIT_KEY_BURST="1000000",
               GPUCLOUD_SECRET_KEY="x2yqkR1o2D2m3Gm0bnxkV8cJmJb8G0r5Q0c2yD3rW7s=", **extra)
    env.pop("GPUCLOUD_DATABASE_URL", None)
    if db_url:
        env["GPUCLOUD_DATABASE_URL"] = db_url
    proc = subprocess.Popen([str(ROOT / ".venv/bin/gpucloud"), "serve", "--port", str(port)],
                            env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://{HOST}:{port}/gpu/api-docs/openapi.json", timeout=180)
    except RuntimeError:
        proc.kill()
        raise
    return proc


def keys(base: str) -> tuple[str, str]:
    with httpx.Client(base_url=base, timeout=60) as c:
        made = [c.post("/admin/accounts", json={"name": name}, headers={"X-ADMIN-KEY": ADMIN})
                for name in ("victim", "attacker")]
        return made[0].json()["api_key"], made[1].json()["api_key"]


class Attack:
    """`n` connections, each sending one request after another until stopped; counts the
    statuses the server answered (or how the connection ended)."""

    def __init__(self, port: int, body: bytes, key: str | None, n: int):
        headers = ["POST /gpu/instances/ HTTP/1.1", f"Host: {HOST}:{port}",
                   "Content-Type: application/json", f"Content-Length: {len(body)}"]
        if key:
            headers.append(f"X-API-KEY: {key}")
        self.head = ("\r\n".join(headers) + "\r\n\r\n").encode()
        self.port, self.body, self.n = port, body, n
        self.statuses: dict[str, int] = {}
        self.seconds: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def _count(self, what: str) -> None:
        self.statuses[what] = self.statuses.get(what, 0) + 1

    async def _one(self) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                reader, writer = await asyncio.open_connection(HOST, self.port)
            except OSError:
                self._count("refused")
                await asyncio.sleep(0.05)
                continue
            try:
                writer.write(self.head)
                writer.write(self.body)
                # Read the answer while the body is still going out: the server may answer
                # (403, 413) before it has read the body.
                drain = asyncio.ensure_future(writer.drain())
                line = await self._answer(reader)
                drain.cancel()
                if line is None:  # stopped while still waiting
                    self._count("unanswered")
                    break
                self._count(line[9:12].decode() if line.startswith(b"HTTP/") else "closed")
            except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                self._count("reset")
            finally:
                writer.close()
            self.seconds.append(time.perf_counter() - t0)

    async def _answer(self, reader: asyncio.StreamReader) -> bytes | None:
        while not self.stop.is_set():
            try:
                return await asyncio.wait_for(reader.readline(), 0.5)
            except TimeoutError:
                continue
        return None

    async def _run(self) -> None:
        await asyncio.gather(*(self._one() for _ in range(self.n)))

    def __enter__(self) -> Attack:
        self.thread.start()
        time.sleep(0.5)  # every connection is sending before the victim starts measuring
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(90)


def victim(port: int, key: str, seconds: float) -> loadgen.Result:
    req = loadgen.Request("GET", "/gpu/account", {"X-API-KEY": key})
    return loadgen.measure(HOST, port, req, seconds=seconds, connections=1, warmup=0.3)


def run_config(db: str, db_url: str | None, label: str, env: dict[str, str], with_key: bool,
               body: bytes, args) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        url = fresh_pg(db_url) if db_url else None
        proc = start(Path(tmp), port, url, env)
        try:
            victim_key, attacker_key = keys(f"http://{HOST}:{port}")
            alone = victim(port, victim_key, args.seconds)
            with Attack(port, body, attacker_key if with_key else None, args.attackers) as a:
                loaded = victim(port, victim_key, args.seconds)
            rss = int(subprocess.run(["ps", "-o", "rss=", "-p", str(proc.pid)],
                                     capture_output=True, text=True).stdout.strip() or 0)
            # How long the server needs, once the attackers are gone, to answer again: the
            # work already queued (bodies read, not yet parsed) still has to drain.
            stopped = time.perf_counter()
            httpx.get(f"http://{HOST}:{port}/gpu/account", timeout=300,
                      headers={"X-API-KEY": victim_key}).raise_for_status()
            recovered = time.perf_counter() - stopped
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
    return {"db": db, "label": label, "alone": alone, "loaded": loaded, "attack": a,
            "rss_mb": rss / 1024, "recovered": recovered}


def _ms(result: loadgen.Result, p: int, seconds: float) -> str:
    """A percentile, or what it is at least when the victim got no answer at all."""
    if not result.requests:
        return f">{seconds * 1000:.0f}ms"
    return f"{result.pct(p):.1f}ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="sqlite,postgres")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--attackers", type=int, default=20)
    ap.add_argument("--only", default="", help="comma-separated configuration labels")
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/gpucloud_abuse")
    args = ap.parse_args()
    payloads = bodies()
    print(f"victim: GET /gpu/account on 1 connection ({loadgen.engine()}), {args.seconds:g} s "
          f"alone and {args.seconds:g} s under attack; attackers: {args.attackers} connections "
          f"of POST /gpu/instances/ ({len(payloads['13MB']) / 1e6:.1f} MB without a key, "
          f"{len(payloads['1MiB']) / 1e6:.2f} MB with one)\n")
    rows = []
    wanted = {x.strip() for x in args.only.split(",") if x.strip()}
    for db in [d.strip() for d in args.db.split(",") if d.strip()]:
        for label, env, with_key, body in CONFIGS:
            if wanted and label not in wanted:
                continue
            rows.append(run_config(db, args.pg_url if db == "postgres" else None, label, env,
                                   with_key, payloads[body], args))
            r = rows[-1]
            print(f"  {db:8} {label:13} victim p50 {r['alone'].pct(50):7.1f} ms alone, "
                  f"{_ms(r['loaded'], 50, args.seconds)} under attack", flush=True)
    print()
    head = (f"{'db':8} {'configuration':13} {'p50 alone':>10} {'p50 attack':>11} "
            f"{'p99 attack':>11} {'ratio':>6} {'victim req':>10} {'attack req/s':>12} "
            f"{'attack median s':>15} {'rss MB':>7} {'recovery s':>10}  attackers got")
    print(head)
    print("-" * len(head))
    for r in rows:
        a, alone, loaded = r["attack"], r["alone"], r["loaded"]
        median = statistics.median(a.seconds) if a.seconds else float("nan")
        got = ", ".join(f"{k}: {v}" for k, v in sorted(a.statuses.items()))
        ratio = loaded.pct(50) / alone.pct(50) if loaded.requests else float("inf")
        print(f"{r['db']:8} {r['label']:13} {alone.pct(50):8.1f}ms "
              f"{_ms(loaded, 50, args.seconds):>11} {_ms(loaded, 99, args.seconds):>11} "
              f"{ratio:6.1f} "
              f"{loaded.requests:>10} {len(a.seconds) / args.seconds:12.1f} {median:15.3f} "
              f"{r['rss_mb']:7.0f} {r['recovered']:10.2f}  {got}")
    print("\nacceptance: under 20 concurrent 13 MB requests without a key, another client's p50 "
          "stays under 20 ms (row `after`).")


if __name__ == "__main__":
    main()
