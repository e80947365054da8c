"""PostgreSQL reads from the event loop (gpucloud.pgpipe): the values psycopg's cursor gives,
concurrent reads pipelined on one connection, a failed read failing alone, a dropped
connection replaced, a bounded number of prepared statements, and a new event loop getting
connections of its own. Against the real PostgreSQL server; the API's reads through it are
covered by every API test on the PostgreSQL backend (tests/test_parity.py compares bytes)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import uuid

import orjson
import psycopg
import pytest
from psycopg import pq
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from gpucloud import pgexec, pgpipe
from gpucloud.pipes import Pipelines
from tests.conftest import PG_ADMIN_URL, _backends

_SELECT = "SELECT id, n, name, at FROM {t} WHERE n >= %(low)s AND n < %(low)s + %(span)s ORDER BY n"


@pytest.fixture(params=[b for b in _backends() if b == "postgres"])
def table(request):
    """A real table (the pipelines have connections of their own) and a blocking connection
    to compare with; dropped afterwards."""
    name = f"pipe_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL.replace("+psycopg", ""), autocommit=True) as c:
        c.execute(f"CREATE TABLE {name} (id uuid PRIMARY KEY, n bigint, name text, "
                  "at timestamptz DEFAULT now())")
        for n in range(200):
            c.execute(f"INSERT INTO {name} (id, n, name) VALUES (%s, %s, %s)",
                      (uuid.uuid4(), n, None if n % 7 == 0 else f"row {n}"))
        try:
            yield name, c
        finally:
            c.execute(f"DROP TABLE {name}")


def _connect_args() -> tuple[tuple, dict]:
    engine = create_engine(PG_ADMIN_URL)
    try:
        return engine.dialect.create_connect_args(make_url(PG_ADMIN_URL))
    finally:
        engine.dispose()


def _pipes(size: int = 1) -> Pipelines:
    args, kwargs = _connect_args()
    return Pipelines(lambda: pgpipe.Pipeline.open(args, kwargs), size)


@contextlib.asynccontextmanager
async def _opened(sql: str, size: int = 1):
    """Pipelines with one connection opened (by a first read of `sql`), closed afterwards."""
    pipes = _pipes(size)
    try:
        await pipes.rows(sql, {"low": 0, "span": 1})
        yield pipes, pipes._open[0]
    finally:
        pipes.close()


def test_concurrent_reads_are_pipelined_on_one_connection_with_the_cursors_values(table):
    name, c = table
    sql = _SELECT.format(t=name)
    wanted = [{"low": low, "span": span} for low in range(0, 200, 9) for span in (1, 5, 40)]
    expected = [c.execute(sql, p).fetchall() for p in wanted]

    async def main():
        pipes = _pipes(1)
        try:
            first = await pipes.rows(sql, wanted[0])  # opens the connection
            pipe = pipes._open[0]
            futures = [pipe.rows(sql, p) for p in wanted]  # all sent before any answer
            assert pipe.pending == len(wanted)
            # A TCP connection: what this turn of the loop sent waits in the corked socket.
            cork = pipe._cork.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)
            got = await asyncio.gather(*futures)
            assert pipe.pending == 0 and pipes._open == [pipe]
            assert cork == 1 and not pipe._corked
            assert pipe._cork.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 0
            return first, got
        finally:
            pipes.close()

    first, got = asyncio.run(main())
    assert first == expected[0] and got == expected
    assert sum(map(len, got)) > 500 and any(r[2] is None for rows in got for r in rows)


def test_a_failed_read_fails_alone_and_the_connection_goes_on(table):
    name, c = table
    sql = _SELECT.format(t=name)
    bad = f"SELECT n / %(zero)s FROM {name} WHERE n = 1"

    async def main():
        async with _opened(sql) as (pipes, pipe):
            futures = [pipe.rows(sql, {"low": 3, "span": 2}), pipe.rows(bad, {"zero": 0}),
                       pipe.rows(sql, {"low": 5, "span": 1}),
                       pipe.rows(f"SELECT nope FROM {name}", {})]
            out = await asyncio.gather(*futures, return_exceptions=True)
            after = await pipes.rows(bad, {"zero": 1})
            return out, after, pipes._open == [pipe] and pipe.broken is None

    (two, zero, one, unknown), after, same = asyncio.run(main())
    assert [r[1] for r in two] == [3, 4] and [r[1] for r in one] == [5]
    assert isinstance(zero, psycopg.errors.DivisionByZero)
    assert isinstance(unknown, psycopg.errors.UndefinedColumn)  # its PREPARE failed
    assert after == [(1,)] and same


def test_a_connection_the_server_drops_is_replaced_and_the_read_answered(table):
    name, c = table
    sql = _SELECT.format(t=name)

    async def main():
        async with _opened(sql) as (pipes, old):
            c.execute("SELECT pg_terminate_backend(%s)", (old.pgconn.backend_pid,))
            rows = await pipes.rows(sql, {"low": 10, "span": 3})
            return rows, old, pipes._open

    rows, old, now = asyncio.run(main())
    assert [r[1] for r in rows] == [10, 11, 12]
    assert old.broken is not None and old not in now and len(now) == 1


def test_prepared_statements_per_connection_are_bounded(table, monkeypatch):
    name, _ = table
    monkeypatch.setattr(pgpipe, "MAX_PREPARED", 3)
    sqls = [f"SELECT n + {k} FROM {name} WHERE n = %(n)s" for k in range(8)]

    async def main():
        pipes = _pipes(1)
        try:
            got = await asyncio.gather(*(pipes.rows(s, {"n": 2}) for s in sqls))
            held = await pipes.rows("SELECT count(*) FROM pg_prepared_statements", {})
            return got, held
        finally:
            pipes.close()

    got, held = asyncio.run(main())
    assert got == [[(2 + k,)] for k in range(8)]
    assert held[0][0] <= 4  # at most the bound, and the count's own statement


def test_each_event_loop_gets_connections_of_its_own_and_close_lets_them_go(table):
    name, c = table
    sql = _SELECT.format(t=name)
    pipes = _pipes(2)

    async def read():
        rows = await asyncio.gather(*(pipes.rows(sql, {"low": k, "span": 1}) for k in range(6)))
        pids.update(p.pgconn.backend_pid for p in pipes._open)
        return rows, list(pipes._open)

    pids: set[int] = set()
    first, first_pipes = asyncio.run(read())
    second, second_pipes = asyncio.run(read())
    pipes.close()
    assert first == second == [[c.execute(sql, {"low": k, "span": 1}).fetchone()]
                               for k in range(6)]
    assert 1 <= len(first_pipes) <= 2 and not set(first_pipes) & set(second_pipes)
    assert all(p.broken is not None for p in first_pipes + second_pipes)  # all closed
    assert len(pids) == len(first_pipes) + len(second_pipes)
    alive = {r[0] for r in c.execute("SELECT pid FROM pg_stat_activity")}
    assert not pids & alive


def test_a_database_that_cannot_be_reached_fails_the_read_and_the_next_one_connects(table):
    name, _ = table
    args, good = _connect_args()
    kwargs = {**good, "port": 1}
    pipes = Pipelines(lambda: pgpipe.Pipeline.open(args, kwargs), 1)

    async def main():
        try:
            with pytest.raises(psycopg.OperationalError):
                await pipes.rows(f"SELECT count(*) FROM {name}", {})
            kwargs.update(good)
            return await pipes.rows(f"SELECT count(*) FROM {name}", {})
        finally:
            pipes.close()

    assert asyncio.run(main()) == [(200,)]
    assert pgexec.MAX_PREPARED == pgpipe.MAX_PREPARED  # one bound for both read paths


def test_reads_larger_than_the_sockets_buffers_go_out_and_come_back_whole(table):
    """A read whose parameters fill the socket's send buffer is sent when the socket is
    writable again (`add_writer`); an answer of several megabytes arrives in many readable
    events. Both among ordinary reads, in order."""
    name, _ = table
    sql = _SELECT.format(t=name)
    # Far more than a 64 KiB send buffer and the server's receive buffer (a few MB on this
    # machine's loopback) hold, so the first flush leaves most of it queued.
    big = "é" * 15_000_000  # 30 MB of UTF-8

    async def main():
        async with _opened(sql) as (_, pipe):
            with socket.socket(fileno=os.dup(pipe.pgconn.socket)) as sock:  # the same socket
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            first = pipe.rows(sql, {"low": 1, "span": 1})
            sent = pipe.rows("SELECT length(%(big)s), md5(%(big)s)", {"big": big})
            writing = pipe._writing  # it did not fit: the rest waits for the socket
            back = pipe.rows("SELECT repeat(%(s)s, 2000000)", {"s": "ab"})
            last = pipe.rows(sql, {"low": 2, "span": 1})
            out = await asyncio.gather(first, sent, back, last)
            return out, writing, pipe._writing

    (first, sent, back, last), writing, still = asyncio.run(main())
    assert writing and not still
    assert [r[1] for r in first] == [1] and [r[1] for r in last] == [2]
    assert sent[0][0] == 15_000_000
    assert sent[0][1] == hashlib.md5(big.encode()).hexdigest()
    assert back == [("ab" * 2_000_000,)]


def test_a_read_whose_caller_stopped_waiting_does_not_disturb_the_others(table):
    name, _ = table
    sql = _SELECT.format(t=name)

    async def main():
        async with _opened(sql) as (pipes, pipe):
            futures = [pipe.rows(sql, {"low": k, "span": 1}) for k in range(5)]
            futures[2].cancel()  # a client that went away
            done = await asyncio.gather(*futures, return_exceptions=True)
            again = await pipes.rows(sql, {"low": 7, "span": 1})
            return done, again, pipe.pending, pipe.broken

    done, again, pending, broken = asyncio.run(main())
    assert isinstance(done[2], asyncio.CancelledError)
    assert [d[0][1] for i, d in enumerate(done) if i != 2] == [0, 1, 3, 4]
    assert [r[1] for r in again] == [7] and pending == 0 and broken is None


def test_json_columns_are_parsed_by_orjson_as_the_engines_connections_parse_them(table):
    """JSON and JSONB come back as the cursor gives them, parsed by orjson like the engine's
    own connections (SQLAlchemy sets its `json_deserializer` on each): psycopg's default
    would be the standard library's parser, slower, on every feed read."""
    _, c = table
    sql = "SELECT %(doc)s::jsonb, %(doc)s::json, NULL::jsonb"
    doc = '{"engine_url": "unix:///x.sock", "ports": [30000, 32767], "gpu": null, "f": 0.5}'
    expected = c.execute(sql, {"doc": doc}).fetchall()

    async def main():
        async with _opened(sql.replace("%(doc)s", "'{}'")) as (pipes, pipe):
            rows = await pipes.rows(sql, {"doc": doc})
            loaders = {pipe.conn.adapters.get_loader(psycopg.adapters.types[t].oid, f)._loads
                       for t in ("json", "jsonb") for f in (pq.Format.TEXT, pq.Format.BINARY)}
            return rows, loaders

    rows, loaders = asyncio.run(main())
    assert rows == expected == [(orjson.loads(doc), orjson.loads(doc), None)]
    assert loaders == {orjson.loads}


def test_only_a_tcp_connection_is_corked():
    """A Unix socket (PostgreSQL on its local socket) is sent as libpq sends it."""
    a, b = socket.socketpair()
    try:
        assert pgpipe._corkable(a.fileno()) is None
    finally:
        a.close()
        b.close()
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        try:
            handle = pgpipe._corkable(client.fileno())
            assert handle is not None and handle.fileno() != client.fileno()
            handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 1  # one socket
            handle.close()
        finally:
            client.close()
