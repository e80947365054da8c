"""The driver-call pool's threads: a call that returned leaves its thread for the next one, a
call that hangs keeps its own thread and holds nobody else's (drivers/pool.py)."""

from __future__ import annotations

import threading
import time

import pytest

from gpucloud.drivers.pool import CallPool, CallTimeout


def wait_until(check, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_reads_one_after_another_reuse_one_thread():
    pool = CallPool(size=2, per_provider=2)
    seen = [pool.start_read("p", threading.current_thread).result(timeout=5) for _ in range(20)]
    assert len(set(seen)) == 1
    assert threading.current_thread() not in seen  # never the caller's own thread


def test_a_hung_call_keeps_its_thread_and_comes_back_once_it_returns():
    pool = CallPool(size=2, per_provider=2)
    pool.start_read("p", threading.current_thread).result(timeout=5)
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
    assert pool.start_read("p", threading.current_thread).result(timeout=5) != hung[0]
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
