"""The hop to a request thread and back: `loop.run_in_executor` against `RequestThreads`.

    .venv/bin/python bench/hop.py [--n 20000] [--rounds 3]

32 concurrent callers (and one) on uvloop await a call on one thread, alternating the two
ways in the same process: a function that returns at once (the hop alone) and a one-row
SQLite read of an in-memory table (a hop with a read in it, the interpreter lock changing
hands around the read). Prints the CPU of this process per call and calls per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import uvloop

from gpucloud.threads import RequestThreads

_local = threading.local()


def _noop(x: int) -> int:
    return x + 1


def _read(x: int):
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = sqlite3.connect(":memory:", check_same_thread=False)
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row {i}") for i in range(100)])
    return conn.execute("SELECT v FROM t WHERE id = ?", (x % 100,)).fetchall()


async def _measure(hop, fn, n: int, callers: int) -> tuple[float, float]:
    async def caller(k: int) -> None:
        for i in range(k):
            await hop(fn, i)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(n // callers) for _ in range(callers)))
    return (time.process_time() - cpu) / n * 1e6, n / (time.perf_counter() - wall)


async def _main(n: int, rounds: int) -> None:
    executor = ThreadPoolExecutor(1)
    threads = RequestThreads(1)

    async def run_in_executor(fn, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, contextvars.copy_context().run, fn, *args)

    async def request_threads(fn, *args):
        return await threads.run(fn, *args)

    print(f"{'call':8} {'hop':18} {'callers':>7} {'µs CPU/call':>12} {'calls/s':>9}")
    for _ in range(rounds):
        for fn in (_noop, _read):
            for name, hop in (("run_in_executor", run_in_executor),
                              ("RequestThreads", request_threads)):
                for callers in (32, 1):
                    cpu, rate = await _measure(hop, fn, n, callers)
                    print(f"{fn.__name__[1:]:8} {name:18} {callers:7} {cpu:12.1f} {rate:9.0f}")
    executor.shutdown()
    threads.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    uvloop.run(_main(args.n, args.rounds))


if __name__ == "__main__":
    main()
