"""How driver calls run: on a bounded pool, a few at a time per provider, each with a timeout.

A provider that is slow or dead (an image pull of 20 GB, a BMC that never answers) must hold
only its own slots: the pool has `size` step threads in all, and a provider at most
`per_provider` slots. A slot is taken when work for the provider is dispatched and given back
when its last driver call has really returned — a call that times out keeps its slot until the
driver gives the thread back, so a hung provider cannot pile up threads; the caller gets a
`CallTimeout` at once and goes on.

The call itself runs on a thread of its own (threads cannot be interrupted in Python: waiting
on it with a timeout is the only way to stop waiting). Threads whose call returned are kept as
spares for the next call (`SpareThreads`): starting one per call cost every logs or events
request a thread start and its context switches.

Reads a request asks for (logs, events) go through `start_read`: at most `per_provider` of
them run at once per provider, beside the lifecycle's slots (a provider busy with deploys
still answers its customers' log requests), the rest queue until one returns. Nobody waits on
a thread: the request awaits its answer on the event loop with a deadline (`expire_after`),
so a hung provider holds at most its own read threads, never request threads.

How many of a provider's read slots are open depends on what its reads do. Reads that wait
on the far side (a socket to an engine, a BMC, a database server) overlap: while one waits,
another runs. Reads that are our own CPU work (the simulated provider on SQLite, a console
file) gain nothing from more threads, which only take turns at the interpreter lock and pay
a hand-over each time: they queue for one slot, which takes them in turn. Which kind a
provider's reads are is measured, not declared: the share of each read's time spent on its
thread's CPU (`time.thread_time`, times the slots open, since n reads that are all CPU work
each hold the interpreter lock 1/n of the time), averaged per provider; a read that finds
the open slots busy opens another while fewer than 1 / share are open (`_wanted`). A
provider not measured yet counts as CPU work, and a read that stalls (no read of the
provider started or finished for GROW_AFTER while others wait, as with a hung provider)
opens another slot whatever the measure says. Measured on the simulated provider's feeds
(docs/api-speed.md, "read slots by what the reads do"): on SQLite four slots cost ~1.5× the
CPU per request of one and 3–4× the context switches.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from gpucloud.drivers.base import DriverTransientError
from gpucloud.threads import settle

T = TypeVar("T")

# How long a provider's reads may make no progress (no read started or finished) while others
# wait before one more of its read slots opens: far longer than a read that answers at once,
# far shorter than what a customer notices.
GROW_AFTER = 0.005


class CallTimeout(DriverTransientError):
    """The provider did not answer within the driver's call timeout."""


class Slot:
    """One of a provider's slots, held by a step and by each driver call it makes."""

    def __init__(self, pool: CallPool, provider_id: str):
        self.pool = pool
        self.provider_id = provider_id
        self._holders = 1
        self._lock = threading.Lock()
        self.timed_out = False

    def _hold(self) -> None:
        with self._lock:
            self._holders += 1

    def drop(self) -> None:
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if last:
            self.pool._release(self.provider_id)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float, what: str = "call") -> T:
        """Run `fn(*args)` and wait at most `timeout` seconds for it."""
        if self.timed_out:  # a call of this step is still stuck: don't stack another on it
            raise CallTimeout(f"the provider did not answer a previous {what}")
        self._hold()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn(*args)
            except BaseException as exc:  # handed to the waiting step below
                box["error"] = exc
            finally:
                self.drop()
                done.set()

        done = threading.Event()
        self.pool.threads.run(run)
        if not done.wait(timeout):
            self.timed_out = True
            raise CallTimeout(f"the provider did not answer within {timeout:g} s ({what})")
        if "error" in box:
            raise box["error"]
        return box["value"]


class SpareThreads:
    """Threads for driver calls, each kept after its call returns (up to `keep` of them) and
    handed the next call. A call that hangs keeps its thread, as a thread of its own would:
    that thread just never comes back to the spares, so a hung provider still holds only the
    threads of its own calls."""

    def __init__(self, keep: int = 32):
        self._spare: list[queue.SimpleQueue] = []
        self._lock = threading.Lock()
        self._keep = keep

    def run(self, fn: Callable[[], None]) -> None:
        """Run `fn()` (which must not raise) on a spare thread, or on a new one."""
        with self._lock:
            inbox = self._spare.pop() if self._spare else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(inbox,), name="gpucloud-driver-call",
                             daemon=True).start()
        inbox.put(fn)

    def spares(self) -> int:
        with self._lock:
            return len(self._spare)

    def _serve(self, inbox: queue.SimpleQueue) -> None:
        while True:
            inbox.get()()
            with self._lock:
                if len(self._spare) >= self._keep:
                    return
                self._spare.append(inbox)


class CallPool:
    def __init__(self, size: int, per_provider: int, grow_after: float = GROW_AFTER):
        self.size = size
        self.per_provider = per_provider
        self.grow_after = grow_after
        self._busy: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="gpucloud-step")
        self._running = 0  # steps submitted and not finished
        self.changed = threading.Event()  # set whenever a slot or a step thread frees up
        self._reads: Counter[str] = Counter()  # read calls running, per provider
        self._queued: dict[str, deque[tuple[asyncio.Future, Callable[[], bool]]]] = {}
        self._progress: dict[str, float] = {}  # when a read of the provider last started/ended
        self._watched: set[str] = set()  # providers whose waiting reads a timer looks at
        # Per provider, the share of its recent reads' time spent on their thread's CPU (a
        # moving average; the rest they wait on the far side).
        self._busy_share: dict[str, float] = {}
        self.threads = SpareThreads()  # the driver calls' own threads (steps' calls and reads)

    def free_steps(self) -> int:
        with self._lock:
            return max(0, self.size - self._running)

    def saturated(self) -> set[str]:
        """Providers that have no free slot right now."""
        with self._lock:
            return {p for p, n in self._busy.items() if n >= self.per_provider}

    def free_slots(self, provider_id: str) -> int:
        with self._lock:
            return max(0, self.per_provider - self._busy[provider_id])

    def acquire(self, provider_id: str) -> Slot | None:
        with self._lock:
            if self._busy[provider_id] >= self.per_provider:
                return None
            self._busy[provider_id] += 1
        return Slot(self, provider_id)

    def _release(self, provider_id: str) -> None:
        with self._lock:
            self._busy[provider_id] -= 1
            if self._busy[provider_id] <= 0:
                del self._busy[provider_id]
        self.changed.set()

    def submit(self, fn: Callable[[], Any]) -> Future:
        with self._lock:
            self._running += 1

        def run() -> Any:
            try:
                return fn()
            finally:
                with self._lock:
                    self._running -= 1
                self.changed.set()

        return self._executor.submit(run)

    # -- reads on behalf of a request (logs, events) ------------------------------------------
    def start_read(self, provider_id: str, answer: asyncio.Future, fn: Callable[..., Any],
                   *args: Any) -> None:
        """From the event loop or a request thread: `fn(*args)` on a driver-call thread, in
        one of the provider's read slots (queued while its open slots are busy; see the
        module's note on when another opens), in a
        copy of the calling thread's context; its outcome settles `answer` on the loop
        `answer` belongs to. A read whose answer was settled meanwhile (its deadline passed,
        its caller was cancelled) never starts; one already running keeps its thread until
        the driver returns, and its outcome is dropped.

        The outcome comes back the way `RequestThreads` brings it (one `call_soon_threadsafe`
        settling the caller's asyncio future; the caller's deadline is a timer on the loop,
        `expire_after`): a `concurrent.futures.Future` chained with `wrap_future` under
        `asyncio.wait_for` cost 55–67 µs of CPU per read of a function that returns at once,
        with 32 callers, against 19–20 µs (docs/api-speed.md)."""
        loop = answer.get_loop()
        ctx = contextvars.copy_context()

        def run() -> bool:
            """The read, unless it was given up on while queued; whether it ran."""
            if answer.done():
                return False
            try:
                value, ok = ctx.run(fn, *args), True
            except BaseException as exc:  # handed to the awaiting request
                value, ok = exc, False
            try:
                loop.call_soon_threadsafe(settle, answer, ok, value)
            except RuntimeError:  # the loop closed while this ran: nobody waits
                pass
            return True

        with self._lock:
            running = self._reads[provider_id]
            go = running < self._wanted(provider_id)
            if go:
                self._reads[provider_id] = running + 1
                self._progress[provider_id] = time.monotonic()
            else:
                self._queued.setdefault(provider_id, deque()).append((answer, run))
            watch = not go and running < self.per_provider \
                and provider_id not in self._watched
            if watch:
                self._watched.add(provider_id)
        if go:
            self.threads.run(lambda: self._drain(provider_id, run))
        elif watch:
            try:
                loop.call_soon_threadsafe(loop.call_later, self.grow_after, self._grow,
                                          provider_id, loop)
            except RuntimeError:  # the loop closed: nobody waits for this read
                with self._lock:
                    self._watched.discard(provider_id)

    def _wanted(self, provider_id: str) -> int:
        """How many read slots the provider's reads keep busy: while one read is on the CPU,
        the others wait on the far side, so 1 / (the share of a read's time on the CPU),
        rounded — one for reads that are all CPU work, `per_provider` at most. Under the
        lock."""
        share = self._busy_share.get(provider_id, 1.0)
        return min(self.per_provider, max(1, round(1 / max(share, 0.01))))

    def _grow(self, provider_id: str, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop, `grow_after` seconds after reads began to wait: one more slot for the
        provider if its reads made no progress meanwhile (a stalled or hung read); looks
        again while reads wait."""
        run = None
        with self._lock:
            waiting = self._queued.get(provider_id)
            while waiting and waiting[0][0].done():  # given up on while queued
                waiting.popleft()
            if not waiting or self._reads[provider_id] >= self.per_provider:
                # Nothing waits, or every slot is open: those slots take what comes next.
                self._watched.discard(provider_id)
                return
            now = time.monotonic()
            if now - self._progress.get(provider_id, 0.0) >= self.grow_after:
                _, run = waiting.popleft()
                self._reads[provider_id] += 1
                self._progress[provider_id] = now
        if run is not None:
            self.threads.run(lambda: self._drain(provider_id, run))
        loop.call_later(self.grow_after, self._grow, provider_id, loop)

    def _drain(self, provider_id: str, run: Callable[[], bool]) -> None:
        """One read slot at work: its read, then the provider's queued reads still wanted, on
        the same thread (handing each to a thread of its own cost a wake-up and a switch per
        read), until none is left, or more slots are open than the provider's reads keep
        busy, and the slot is given back."""
        while True:
            started, cpu = time.monotonic(), time.thread_time()
            ran = run()
            ended = time.monotonic()
            cpu = time.thread_time() - cpu
            with self._lock:
                self._progress[provider_id] = ended
                if ran:  # (a read given up on says nothing about the provider)
                    # Times the slots open: n reads that are all CPU work share the
                    # interpreter lock, each on the CPU 1/n of its time, and must not look
                    # like reads that wait (which would keep n open, or open more).
                    busy = min(1.0, cpu * self._reads[provider_id] / max(ended - started, 1e-9))
                    self._busy_share[provider_id] = \
                        0.8 * self._busy_share.get(provider_id, busy) + 0.2 * busy
                running = self._reads[provider_id]
                if running > 1 and running > self._wanted(provider_id):
                    # More slots open than the reads keep busy (they turned out to be CPU
                    # work): this one closes, the others take what waits.
                    self._reads[provider_id] = running - 1
                    return
                queue = self._queued.get(provider_id)
                while queue:
                    waiting, run = queue.popleft()
                    if not waiting.done():
                        break
                else:
                    self._queued.pop(provider_id, None)
                    self._reads[provider_id] -= 1
                    if self._reads[provider_id] <= 0:
                        del self._reads[provider_id]
                        del self._progress[provider_id]
                    return

    def reads_running(self, provider_id: str) -> int:
        with self._lock:
            return self._reads[provider_id]

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


async def call(pool: CallPool, provider_id: str, timeout: float, what: str,
               fn: Callable[..., Any], *args: Any) -> Any:
    """From the event loop: `fn(*args)` in one of the provider's read slots, awaited with a
    deadline (`CallTimeout` past it). For a route that asks a provider once, so that a slow
    one holds a driver-call thread, never a thread of the blocking routes."""
    answer = asyncio.get_running_loop().create_future()
    pool.start_read(provider_id, answer, fn, *args)
    timer = expire_after(answer, timeout, what)
    try:
        return await answer
    finally:
        timer.cancel()


def expire_after(answer: asyncio.Future, timeout: float, what: str) -> asyncio.TimerHandle:
    """On `answer`'s loop: settle it with `CallTimeout` in `timeout` seconds unless it is
    settled by then (cancel the returned handle once it is)."""
    return answer.get_loop().call_later(
        timeout, _expire, answer, f"the provider did not answer within {timeout:g} s ({what})")


def _expire(answer: asyncio.Future, message: str) -> None:
    if not answer.done():
        answer.set_exception(CallTimeout(message))
