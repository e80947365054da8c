"""A few threads that run the requests' blocking reads, awaited from the event loop.

What `loop.run_in_executor` on a `ThreadPoolExecutor` does, less what a read does not need:
the executor wraps each call in a `concurrent.futures.Future` (a lock and a condition
variable built per call), checks whether the function is a coroutine function, and chains
that future to an asyncio one through two callbacks and three state copies. Measured on this
project's 2-core machine with 32 concurrent callers of a function that returns at once, a hop
there and back cost 29–38 µs of CPU that way and 4–6 µs here (`bench/hop.py`); instance
details make one such hop, logs and events one besides their driver call.

Here the caller's asyncio future itself travels with the call: a thread takes
(loop, future, context, fn, args) from a queue, runs `fn` in the caller's copied context
(its request id reaches the thread's log lines) and hands the result back with one
`call_soon_threadsafe`. A caller that stopped waiting (its task cancelled) has its result
dropped; a call still queued then never runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


def settle(fut: asyncio.Future, ok: bool, value: Any) -> None:
    """On the loop: hand a thread's outcome to `fut`, unless its caller stopped waiting
    (cancelled, or a deadline settled it first)."""
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    elif isinstance(value, StopIteration):  # a future refuses it: it would end a generator
        fut.set_exception(RuntimeError(f"the call raised {value!r}"))
    else:
        fut.set_exception(value)


class RequestThreads:
    """`size` threads, started at the first call; `await threads.run(fn, *args)`."""

    def __init__(self, size: int, name: str = "gpucloud-request") -> None:
        if size < 1:
            raise ValueError("at least one thread")
        self.size = size
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Call on the event loop: a future of `fn(*args)` run on one of the threads."""
        fut = asyncio.get_running_loop().create_future()
        self._put(fut, fn, args, True)
        return fut

    def hand(self, fut: asyncio.Future, fn: Callable[..., Any], *args: Any) -> None:
        """Call on the event loop: `fn(*args)` on one of the threads, where it passes `fut` on
        to be settled by other work it starts (a driver read); what it raises settles `fut`,
        what it returns is dropped. The request's next step then starts from the thread,
        without a round trip through the event loop in between."""
        self._put(fut, fn, args, False)

    def _put(self, fut: asyncio.Future, fn: Callable[..., Any], args: tuple, settles: bool):
        if not self._threads:
            self._start()
        if self._closed:
            raise RuntimeError("the request threads are shut down")
        self._queue.put((fut.get_loop(), fut, contextvars.copy_context(), fn, args, settles))

    def _start(self) -> None:
        with self._lock:
            if self._threads or self._closed:
                return
            # Daemon threads: a runtime that is never closed must not hold the process open
            # at exit; `shutdown` joins them when it is.
            threads = [threading.Thread(target=self._work, name=f"{self.name}_{i}", daemon=True)
                       for i in range(self.size)]
            for thread in threads:
                thread.start()
            self._threads = threads

    def _work(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is None:
                return
            loop, fut, ctx, fn, args, settles = item
            item = None
            if fut.done():  # cancelled, or settled by a deadline while it was queued
                continue
            try:
                value, ok = ctx.run(fn, *args), True
            except BaseException as exc:  # handed to the awaiting request
                value, ok = exc, False
            if settles or not ok:  # (`hand`: fn passed the future on)
                try:
                    loop.call_soon_threadsafe(settle, fut, ok, value)
                except RuntimeError:  # the loop closed while this ran: nobody is waiting
                    pass
            loop = fut = ctx = fn = args = value = None  # hold nothing while idle

    def shutdown(self) -> None:
        """Calls already queued still run; then the threads end and are joined."""
        with self._lock:
            self._closed = True
            threads = self._threads
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join()


async def run_aside(state, name: str, tokens: int, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` on a worker thread under a limiter of its own (`tokens` at once, kept on
    `state` as `name`) instead of the blocking routes' limiter: for long work (an audit, BMC
    reads at registration) that must not hold the threads the customers' writes need (one
    on SQLite)."""
    limiter = getattr(state, name, None)
    if limiter is None:
        limiter = anyio.CapacityLimiter(tokens)
        setattr(state, name, limiter)
    return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)
