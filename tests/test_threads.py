"""RequestThreads: the requests' blocking reads, run on a few threads and awaited."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import types

import anyio
import pytest

from gpucloud.threads import RequestThreads, run_aside

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def test_results_errors_and_the_callers_context_reach_the_caller():
    threads = RequestThreads(2, name="test-threads")

    def where(x):
        return x * 2, request_id.get(), threading.current_thread().name

    def fails():
        raise KeyError("missing")

    def stops():
        raise StopIteration

    async def main():
        request_id.set("req-1")
        doubled, seen, name = await threads.run(where, 21)
        assert (doubled, seen) == (42, "req-1") and name.startswith("test-threads_")
        with pytest.raises(KeyError, match="missing"):
            await threads.run(fails)
        with pytest.raises(RuntimeError, match="StopIteration"):  # a future refuses it as is
            await threads.run(stops)
        # A change the call makes to its context stays in its copy
        await threads.run(request_id.set, "changed")
        assert request_id.get() == "req-1"

    asyncio.run(main())
    threads.shutdown()


def test_all_threads_run_at_once_and_shutdown_joins_them():
    threads = RequestThreads(3)
    barrier = threading.Barrier(3, timeout=10)

    async def main():
        # Three calls that each wait for the other two: they finish only if all three run at once.
        return await asyncio.gather(*(threads.run(barrier.wait) for _ in range(3)))

    assert sorted(asyncio.run(main())) == [0, 1, 2]
    started = list(threads._threads)
    assert len(started) == 3 and all(t.is_alive() for t in started)
    threads.shutdown()
    assert not any(t.is_alive() for t in started)

    async def after():
        threads.run(print)

    with pytest.raises(RuntimeError, match="shut down"):
        asyncio.run(after())


def test_a_caller_that_stops_waiting_loses_nothing_but_its_result():
    threads = RequestThreads(1)
    release = threading.Event()
    ran = []

    async def main():
        blocking = threads.run(release.wait, 10)  # holds the only thread
        queued = asyncio.ensure_future(threads.run(ran.append, "queued"))
        await asyncio.sleep(0)
        queued.cancel()  # still in the queue: it never runs
        release.set()
        assert await blocking is True
        # The thread goes on serving the next caller
        assert await threads.run(lambda: "next") == "next"

    asyncio.run(main())
    assert ran == []
    threads.shutdown()


def test_a_loop_that_closes_before_the_call_returns_leaves_the_thread_serving():
    threads = RequestThreads(1)
    release = threading.Event()

    async def leave_early():
        threads.run(release.wait, 10)  # nobody awaits it; the loop closes first

    asyncio.run(leave_early())
    release.set()

    async def next_caller():
        return await threads.run(lambda: "still here")

    assert asyncio.run(next_caller()) == "still here"
    threads.shutdown()


def test_hand_leaves_the_future_to_the_work_it_starts_and_settles_it_only_with_an_error():
    threads = RequestThreads(1)

    async def main():
        loop = asyncio.get_running_loop()
        request_id.set("req-2")
        passed_on = loop.create_future()

        def start_more():  # on a request thread: hands the future on to a thread of its own
            seen = request_id.get()
            threading.Thread(target=lambda: loop.call_soon_threadsafe(
                passed_on.set_result, f"{seen} done later")).start()
            return "dropped"

        threads.hand(passed_on, start_more)
        assert await passed_on == "req-2 done later"  # not "dropped"

        failed = loop.create_future()
        threads.hand(failed, lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            await failed

        # A future settled while its call waited in the queue (a deadline): the call never runs.
        ran = []
        release = threading.Event()
        blocking = threads.run(release.wait, 10)
        expired = loop.create_future()
        threads.hand(expired, ran.append, "expired")
        expired.set_exception(TimeoutError("deadline"))
        release.set()
        assert await blocking is True
        assert await threads.run(lambda: "next") == "next"
        assert ran == []
        with pytest.raises(TimeoutError):
            await expired

    asyncio.run(main())
    threads.shutdown()


def test_run_aside_keeps_off_the_blocking_routes_threads_and_its_own_bound():
    """Long work run aside (an audit, BMC reads) takes a limiter of its own: with the default
    limiter at one token (SQLite's blocking routes) and that work stuck, a blocking call is
    still served; and two aside calls with one token run one after the other."""
    async def main() -> list[str]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1
        state = types.SimpleNamespace()
        gate = threading.Event()
        order: list[str] = []

        def stuck(name: str) -> None:
            order.append(f"{name} in")
            gate.wait(5)
            order.append(f"{name} out")

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_aside, state, "slow", 1, stuck, "a")
            tg.start_soon(run_aside, state, "slow", 1, stuck, "b")
            await anyio.sleep(0.2)
            assert await anyio.to_thread.run_sync(lambda: "served") == "served"
            assert order == ["a in"] or order == ["b in"]  # the other waits for the token
            gate.set()
        assert state.slow.total_tokens == 1
        return order

    order = anyio.run(main)
    assert order[0][0] == order[1][0] and order[2][0] == order[3][0] != order[0][0]
