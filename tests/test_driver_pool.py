"""The driver-call pool's threads: a call that returned leaves its thread for the next one, a
call that hangs keeps its own thread and holds nobody else's (drivers/pool.py)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from gpucloud.drivers.pool import CallPool, CallTimeout, expire_after


def wait_until(check, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def read_async(pool: CallPool, fn, *args, timeout: float, what: str = "read"):
    """A read the way a request makes one: started, awaited on the loop with a deadline."""
    answer = asyncio.get_running_loop().create_future()
    pool.start_read("p", answer, fn, *args)
    timer = expire_after(answer, timeout, what)
    try:
        return await answer
    finally:
        timer.cancel()


def read(pool: CallPool, fn, *args, timeout: float = 5.0):
    return asyncio.run(read_async(pool, fn, *args, timeout=timeout))


def test_reads_one_after_another_reuse_one_thread():
    pool = CallPool(size=2, per_provider=2)
    seen = []
    for _ in range(20):
        seen.append(read(pool, threading.current_thread))
        # The answer is out before its thread is back among the spares: wait for it.
        assert wait_until(lambda: pool.threads.spares() == 1)
    assert len(set(seen)) == 1
    assert threading.current_thread() not in seen  # never the caller's own thread


def test_a_hung_call_keeps_its_thread_and_comes_back_once_it_returns():
    pool = CallPool(size=2, per_provider=2)
    read(pool, threading.current_thread)
    assert wait_until(lambda: pool.threads.spares() == 1)
    release = threading.Event()
    hung: list[threading.Thread] = []

    def hang() -> None:
        hung.append(threading.current_thread())
        release.wait(30)

    slot = pool.acquire("p")
    with pytest.raises(CallTimeout, match="within 0.2 s"):
        slot.call(hang, timeout=0.2, what="create")
    assert pool.threads.spares() == 0  # the spare went to the call that hangs
    # Reads go on, on another thread; the step's slot refuses more calls while it is stuck.
    assert read(pool, threading.current_thread) != hung[0]
    with pytest.raises(CallTimeout, match="did not answer a previous"):
        slot.call(threading.current_thread, timeout=5)
    slot.drop()  # the step gives up; the slot stays held while its call is stuck
    assert pool.free_slots("p") == 1
    release.set()
    # Returned: the slot is given back and its thread waits as a spare beside the reader's.
    assert wait_until(lambda: pool.free_slots("p") == 2)
    assert wait_until(lambda: pool.threads.spares() == 2)


def test_a_call_that_raises_hands_the_error_to_the_caller_and_its_thread_back():
    pool = CallPool(size=2, per_provider=2)
    slot = pool.acquire("p")
    first = slot.call(threading.current_thread, timeout=5)
    with pytest.raises(ZeroDivisionError):
        slot.call(lambda: 1 / 0, timeout=5)
    assert wait_until(lambda: pool.threads.spares() == 1)
    assert slot.call(threading.current_thread, timeout=5) == first
    slot.drop()
    assert pool.free_slots("p") == 2


def test_a_read_past_its_deadline_times_out_and_one_queued_behind_it_never_starts():
    pool = CallPool(size=2, per_provider=1)
    release = threading.Event()
    ran: list[str] = []

    def hang() -> None:
        ran.append("hang")
        release.wait(30)

    async def both():
        first = asyncio.ensure_future(read_async(pool, hang, timeout=0.2, what="logs"))
        queued = asyncio.ensure_future(read_async(pool, ran.append, "queued", timeout=0.1))
        return await asyncio.gather(first, queued, return_exceptions=True)

    started = time.monotonic()
    first, queued = asyncio.run(both())
    assert time.monotonic() - started < 2
    assert isinstance(first, CallTimeout) and "within 0.2 s (logs)" in str(first)
    assert isinstance(queued, CallTimeout)
    assert pool.reads_running("p") == 1  # the hung read still holds the provider's one slot
    release.set()
    assert wait_until(lambda: pool.reads_running("p") == 0)
    assert ran == ["hang"]  # the read queued behind it was given up on: it never ran
    assert read(pool, ran.append, "after") is None and ran == ["hang", "after"]


def test_reads_run_at_most_per_provider_at_once_in_the_callers_context_and_raise_its_errors():
    pool = CallPool(size=2, per_provider=2)
    who = contextvars.ContextVar("who", default="nobody")
    lock = threading.Lock()
    running = [0, 0]  # now, most ever

    def work(n: int) -> str:
        with lock:
            running[0] += 1
            running[1] = max(running)
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return f"{who.get()} {n}"

    async def many():
        who.set("caller")
        return await asyncio.gather(*(read_async(pool, work, n, timeout=10) for n in range(8)))

    assert asyncio.run(many()) == [f"caller {n}" for n in range(8)]
    assert running[1] == 2
    with pytest.raises(ZeroDivisionError):
        read(pool, lambda: 1 / 0)
    assert wait_until(lambda: pool.reads_running("p") == 0)
