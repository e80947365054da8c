"""SQLite reads from the event loop through a read process (gpucloud.sqlitepipe): the values
sqlite3's own cursor gives, concurrent reads in flight together, a failed read failing alone,
a read-only connection, committed writes seen and open ones not waited for, a killed process
replaced, a new event loop getting a process of its own. On real SQLite files; the API's reads
through it are covered by every API test on the SQLite backend (tests/test_parity.py compares
bytes)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import pytest
from sqlalchemy import create_engine, text

from gpucloud.db import Reader
from gpucloud.pipes import Pipelines
from gpucloud.sqlitepipe import ReadProcess

_SELECT = "SELECT id, n, name, score, blob FROM t WHERE n >= ? AND n < ? + ? ORDER BY n"


@pytest.fixture
def db(tmp_path):
    """A WAL database of 200 rows (text, NULLs, floats, bytes) and a connection to compare."""
    path = str(tmp_path / "pipe.db")
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, name TEXT, score REAL, "
              "blob BLOB)")
    c.executemany("INSERT INTO t (n, name, score, blob) VALUES (?, ?, ?, ?)",
                  [(n, None if n % 7 == 0 else f"row {n} ✓", n / 3, bytes([n % 256]) * 3)
                   for n in range(200)])
    yield path, c
    c.close()


def _pipes(path: str, size: int = 1) -> Pipelines:
    return Pipelines(lambda: ReadProcess.start(path), size)


@contextlib.asynccontextmanager
async def _started(path: str):
    """Pipelines with one read process started (by a first read), closed afterwards."""
    pipes = _pipes(path)
    try:
        await pipes.rows("SELECT 1", [])
        yield pipes, pipes._open[0]
    finally:
        pipes.close()


def test_concurrent_reads_are_in_flight_together_with_the_cursors_values(db):
    path, c = db
    wanted = [[low, low, span] for low in range(0, 200, 9) for span in (1, 5, 40)]
    expected = [c.execute(_SELECT, p).fetchall() for p in wanted]

    async def main():
        pipes = _pipes(path)
        try:
            first = await pipes.rows(_SELECT, wanted[0])  # starts the process
            proc = pipes._open[0]
            futures = [proc.rows(_SELECT, p) for p in wanted]  # all sent before any answer
            assert proc.pending == len(wanted)
            got = await asyncio.gather(*futures)
            assert proc.pending == 0 and pipes._open == [proc]
            return first, got
        finally:
            pipes.close()

    first, got = asyncio.run(main())
    assert first == expected[0] and got == expected
    assert any(row[2] is None for rows in got for row in rows)  # NULLs, floats and bytes too
    assert got[-1][-1][3] == 199 / 3 and got[-1][-1][4] == bytes([199]) * 3


def test_a_failing_read_fails_alone_and_the_process_only_reads(db):
    path, c = db

    async def main():
        async with _started(path) as (pipes, proc):
            good = proc.rows("SELECT count(*) FROM t", [])
            bad = proc.rows("SELECT nope FROM t", [])
            write = proc.rows("DELETE FROM t", [])
            after = proc.rows("SELECT max(n) FROM t WHERE n < ?", [50])
            results = await asyncio.gather(good, bad, write, after, return_exceptions=True)
            assert proc.broken is None and pipes._open == [proc]
            return results

    good, bad, write, after = asyncio.run(main())
    assert good == [(200,)] and after == [(49,)]
    assert isinstance(bad, sqlite3.OperationalError) and "no such column: nope" in str(bad)
    assert isinstance(write, sqlite3.OperationalError) and "readonly" in str(write)
    assert c.execute("SELECT count(*) FROM t").fetchone() == (200,)


def test_a_read_sees_every_committed_write_and_does_not_wait_for_an_open_one(db):
    path, c = db

    async def main():
        pipes = _pipes(path)
        try:
            before = await pipes.rows("SELECT count(*) FROM t", [])
            c.execute("INSERT INTO t (n) VALUES (1000)")  # committed (autocommit)
            committed = await pipes.rows("SELECT count(*) FROM t", [])
            c.execute("BEGIN IMMEDIATE")
            c.execute("INSERT INTO t (n) VALUES (1001)")
            during = await asyncio.wait_for(pipes.rows("SELECT count(*) FROM t", []), 5)
            c.execute("COMMIT")
            return before, committed, during, await pipes.rows("SELECT count(*) FROM t", [])
        finally:
            pipes.close()

    assert asyncio.run(main()) == ([(200,)], [(201,)], [(201,)], [(202,)])


def test_a_killed_read_process_is_replaced_and_the_read_answered(db):
    path, _ = db

    async def main():
        pipes = _pipes(path)
        try:
            await pipes.rows("SELECT 1", [])
            dead = pipes._open[0]
            dead.proc.kill()
            await asyncio.get_running_loop().run_in_executor(None, dead.proc.wait, 10)
            rows = await pipes.rows("SELECT count(*) FROM t WHERE n < ?", [10])
            return dead, pipes._open, rows
        finally:
            pipes.close()

    dead, now, rows = asyncio.run(main())
    assert rows == [(10,)]
    assert isinstance(dead.broken, sqlite3.OperationalError)
    assert len(now) == 1 and now[0].proc.pid != dead.proc.pid


def test_each_event_loop_gets_its_own_process_and_close_ends_them(db):
    path, _ = db
    pipes = _pipes(path, size=2)

    async def read():
        got = await asyncio.gather(*(pipes.rows("SELECT n FROM t WHERE n = ?", [k])
                                     for k in range(6)))
        return got, list(pipes._open)

    first, first_procs = asyncio.run(read())
    second, second_procs = asyncio.run(read())
    pipes.close()
    assert first == second == [[(k,)] for k in range(6)]
    assert 1 <= len(first_procs) <= 2 and not set(first_procs) & set(second_procs)
    # Closed from plain code, close() waited for them: nothing holds the file any more.
    assert all(p.proc.returncode == 0 for p in second_procs)
    # Those of the first loop were let go from the next loop, without a wait there.
    for proc in first_procs + second_procs:
        assert proc.broken is not None
        assert proc.proc.wait(10) == 0


def test_a_big_parameter_and_a_big_answer_go_whole_and_in_order(db):
    path, _ = db
    big = "x" * 30_000_000  # more than a socket buffer holds: sent when writable

    async def main():
        async with _started(path) as (pipes, proc):
            futures = [proc.rows("SELECT length(?)", [big]),
                       proc.rows("SELECT n FROM t WHERE n = ?", [3]),
                       proc.rows("SELECT zeroblob(4000000)", []),
                       proc.rows("SELECT n FROM t WHERE n = ?", [4])]
            assert proc._out and not proc._writing  # queued, to go out in one write
            await asyncio.sleep(0)  # the loop's turn: the write
            assert proc._writing  # the socket did not take it all at once
            got = await asyncio.gather(*futures)
            assert not proc._writing
            return got

    length, three, blob, four = asyncio.run(main())
    assert length == [(30_000_000,)] and three == [(3,)] and four == [(4,)]
    assert blob == [(bytes(4_000_000),)]


def test_a_cancelled_read_does_not_disturb_the_others(db):
    path, _ = db

    async def main():
        async with _started(path) as (pipes, proc):
            futures = [proc.rows("SELECT n FROM t WHERE n = ?", [k]) for k in range(5)]
            futures[2].cancel()
            return await asyncio.gather(*(f for i, f in enumerate(futures) if i != 2))

    assert asyncio.run(main()) == [[(0,)], [(1,)], [(3,)], [(4,)]]


def test_an_in_memory_database_is_read_on_the_read_thread():
    """No other process can open it, so the reader keeps its thread path."""
    engine = create_engine("sqlite://")
    try:
        reader = Reader(engine, engine, limit=2)
        assert reader.pipes is None
        assert reader.execute(text("SELECT 41 + 1")).scalar() == 42
        reader.close()
    finally:
        engine.dispose()
