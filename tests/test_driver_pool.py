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


def _counting(work):
    """`work` wrapped to record how many of its calls ran at once (the most ever)."""
    lock = threading.Lock()
    running = [0, 0]  # now, most ever

    def counted(*args):
        with lock:
            running[0] += 1
            running[1] = max(running)
        try:
            return work(*args)
        finally:
            with lock:
                running[0] -= 1

    return counted, running


def _spin(seconds: float) -> str:
    """CPU work, as a read of our own database is: no waiting on anything."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return threading.current_thread().name


def test_reads_that_are_cpu_work_take_turns_on_one_slot_instead_of_opening_more():
    # grow_after far away: only the measure of what the reads do decides here.
    pool = CallPool(size=4, per_provider=4, grow_after=30)
    spin, running = _counting(_spin)

    async def many():
        return await asyncio.gather(*(read_async(pool, spin, 0.002, timeout=20)
                                      for _ in range(40)))

    names = asyncio.run(many())
    # Four slots would have four at once (the code before did): more threads only take turns
    # at the interpreter lock. One, or two if the machine preempted a read long enough to
    # make it look like waiting.
    assert running[1] <= 2 and len(set(names)) <= 2
    assert wait_until(lambda: pool.reads_running("p") == 0)


def test_reads_that_wait_on_the_far_side_open_every_slot():
    pool = CallPool(size=4, per_provider=4, grow_after=30)
    nap, running = _counting(time.sleep)
    read(pool, nap, 0.01)  # measured once (when its slot is given back): it waits
    assert wait_until(lambda: pool.reads_running("p") == 0)

    async def many():
        return await asyncio.gather(*(read_async(pool, nap, 0.05, timeout=20)
                                      for _ in range(8)))

    asyncio.run(many())
    assert running[1] == 4


def test_a_read_queued_behind_a_hung_one_gets_a_slot_of_its_own_once_reads_stall():
    pool = CallPool(size=2, per_provider=2, grow_after=0.05)
    release = threading.Event()

    async def both():
        hung = asyncio.ensure_future(read_async(pool, release.wait, 30, timeout=10))
        await asyncio.sleep(0.01)  # the hung read holds the provider's first slot
        started = time.monotonic()
        answer = await read_async(pool, threading.current_thread, timeout=5)
        return hung, answer, time.monotonic() - started

    hung, answer, waited = asyncio.run(both())
    # A provider not measured yet counts as CPU work (one slot); the stall opened the second.
    assert answer is not None and 0.04 <= waited < 2
    assert wait_until(lambda: pool.reads_running("p") == 1)  # the hung read keeps its slot
    release.set()
    assert wait_until(lambda: pool.reads_running("p") == 0)


def test_slots_opened_for_waiting_reads_close_again_when_the_reads_turn_out_cpu_work():
    pool = CallPool(size=4, per_provider=4, grow_after=30)
    lock = threading.Lock()
    running = [0]
    seen: list[int] = []  # how many ran at once as each read started

    def work(kind: str) -> None:
        with lock:
            running[0] += 1
            seen.append(running[0])
        try:
            time.sleep(0.02) if kind == "nap" else _spin(0.002)
        finally:
            with lock:
                running[0] -= 1

    async def many(kind: str, n: int):
        await asyncio.gather(*(read_async(pool, work, kind, timeout=30) for _ in range(n)))

    read(pool, work, "nap")
    assert wait_until(lambda: pool.reads_running("p") == 0)
    asyncio.run(many("nap", 8))
    assert max(seen) == 4  # waiting reads: every slot
    seen.clear()
    asyncio.run(many("spin", 60))
    # Four slots were open when the CPU work began; they close as its measure comes in.
    assert max(seen[-20:]) <= 2, seen
