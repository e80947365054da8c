"""PostgreSQL reads on the event loop itself: libpq's pipeline mode, no thread, no blocking.

A read handed to a thread (`pgexec`, through `RequestThreads`) costs the hop there and back
and, around its one blocking libpq call, two hand-overs of the interpreter lock between the
thread and the event loop: measured under 32 concurrent requests, ~30 µs of CPU and ~1.5
context switches per read besides the read itself. Here the loop sends the read on a
non-blocking connection, goes on with other requests, and reads the answer when the socket is
readable (`loop.add_reader`): ~10 µs of CPU and no context switch. In pipeline mode the reads
of concurrent requests go out back to back on one connection without waiting for each
other's answers, so the server runs them in a row and one readable event brings several
answers. Figures in docs/api-speed.md ("PostgreSQL reads from the event loop").

Each read is its own pipeline segment (the statement, then a sync point), so a failed read
fails only its own request. Statements are prepared once per connection and per set of
parameter types, as in `pgexec`, and the rows come from psycopg's own loaders.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque

import orjson
import psycopg
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.types.json import set_json_loads

from gpucloud.pgexec import MAX_PREPARED, bind, error_of
from gpucloud.pipes import LoopConnection

_TEXT = pq.Format.TEXT
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_ROWS = pq.ExecStatus.TUPLES_OK
_DONE = pq.ExecStatus.COMMAND_OK


class _Segment:
    """One read in flight: what the server answers up to its sync point."""

    __slots__ = ("fut", "key", "rows", "error")

    def __init__(self, fut: asyncio.Future | None, key: tuple | None):
        self.fut = fut
        self.key = key  # the statement this segment prepares, if it does
        self.rows: list | None = None
        self.error: Exception | None = None


class Pipeline(LoopConnection):
    """One autocommit connection in pipeline mode, driven by the loop it was opened on."""

    def __init__(self, conn: psycopg.AsyncConnection, loop: asyncio.AbstractEventLoop):
        self.conn = conn
        self.loop = loop
        self.pgconn = conn.pgconn
        self.broken: Exception | None = None
        # Parameters are dumped when a read is sent and rows loaded when its answer comes,
        # interleaved across reads: each side keeps its own state.
        self._dump = Transformer(conn)
        self._load = Transformer(conn)
        self._numbered: dict[str, tuple[bytes, list[str], list[PyFormat]]] = {}
        self._prepared: dict[tuple, bytes] = {}
        self._names = 0  # never reused: a statement prepared again gets a new name
        self._segments: deque[_Segment] = deque()
        self._writing = False
        self.pgconn.nonblocking = 1
        self.pgconn.enter_pipeline_mode()
        self._fd = self.pgconn.socket
        self._cork = _corkable(self._fd)
        self._corked = False
        loop.add_reader(self._fd, self._readable)

    @classmethod
    async def open(cls, connect_args: tuple, connect_kwargs: dict) -> Pipeline:
        conn = await psycopg.AsyncConnection.connect(*connect_args, autocommit=True,
                                                     **connect_kwargs)
        # JSON columns parsed by orjson, as the engine's own connections do (db.make_engine
        # gives SQLAlchemy `json_deserializer=orjson.loads`, which it sets on each connection):
        # psycopg's default is the standard library's json.loads.
        set_json_loads(orjson.loads, conn)
        return cls(conn, asyncio.get_running_loop())

    @property
    def pending(self) -> int:
        return len(self._segments)

    def rows(self, sql: str, params: dict | list) -> asyncio.Future:
        """Send one SELECT (`%(name)s` placeholders); a future of its rows as tuples."""
        if self.broken is not None:
            raise self.broken
        tx = self._dump
        query, values, key = bind(tx, self._numbered, sql, params)
        name = self._prepared.get(key)
        pg = self.pgconn
        try:
            if self._cork is not None and not self._corked:
                self._hold()
            prepares = None
            if name is None:
                if len(self._prepared) >= MAX_PREPARED:
                    self._forget_all()
                name = self._prepared[key] = f"gpucloud_p{self._names}".encode()
                self._names += 1
                pg.send_prepare(name, query, tx.types)
                prepares = key
            pg.send_query_prepared(name, values, tx.formats, _TEXT)
            pg.pipeline_sync()
        except (psycopg.Error, OSError) as exc:
            self._break(exc)
            raise self.broken from exc
        fut = self.loop.create_future()
        self._segments.append(_Segment(fut, prepares))
        self._flush()
        return fut

    def _hold(self) -> None:
        """Keep what this turn of the loop sends in the socket until the turn ends: libpq
        flushes at every sync point, and each flush on a TCP connection to this machine ran
        the server's side of the delivery in our system call (~20–35 µs of the loop's CPU
        per read); corked, the reads of a turn go out together."""
        self._cork.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        self._corked = True
        self.loop.call_soon(self._release)

    def _release(self) -> None:
        self._corked = False
        if self._fd is None:
            return
        try:
            self._cork.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        except OSError as exc:
            self._break(psycopg.OperationalError(f"the connection to PostgreSQL broke: {exc}"))

    def _forget_all(self) -> None:
        # Bound per connection, as pgexec's; reads already sent run before the DEALLOCATE.
        self.pgconn.send_query_params(b"DEALLOCATE ALL", None)
        self.pgconn.pipeline_sync()
        self._segments.append(_Segment(None, None))
        self._prepared.clear()

    def _flush(self) -> None:
        """Send what libpq holds; what the socket does not take now goes when it is writable
        (this again, as the loop's writer callback)."""
        try:
            unsent = self.pgconn.flush()
        except psycopg.Error as exc:
            self._break(exc)
            return
        if unsent and not self._writing:
            self._writing = True
            self.loop.add_writer(self._fd, self._flush)
        elif not unsent and self._writing:
            self._writing = False
            self.loop.remove_writer(self._fd)

    def _readable(self) -> None:
        pg = self.pgconn
        try:
            pg.consume_input()
        except psycopg.Error as exc:
            self._break(exc)
            return
        if pg.status == pq.ConnStatus.BAD:
            self._break(psycopg.OperationalError("the connection to PostgreSQL broke"))
            return
        segments = self._segments
        ended = False
        while segments and not pg.is_busy():
            res = pg.get_result()
            if res is None:  # the end of one statement's results
                if ended:  # twice in a row: nothing more has arrived yet
                    break
                ended = True
                continue
            ended = False
            seg = segments[0]
            status = res.status
            if status == _SYNC:
                segments.popleft()
                self._settle(seg)
            elif status == _ROWS:
                self._load.set_pgresult(res)
                seg.rows = self._load.load_rows(0, res.ntuples, tuple)
            elif status != _DONE and seg.error is None:
                # FATAL_ERROR, or PIPELINE_ABORTED for a read behind a failed prepare.
                seg.error = error_of(res)
                if pg.status == pq.ConnStatus.BAD:
                    self._break(seg.error)
                    return

    def _settle(self, seg: _Segment) -> None:
        if seg.error is not None and seg.key is not None:
            self._prepared.pop(seg.key, None)  # its PREPARE may be what failed
        fut = seg.fut
        if fut is None or fut.done():  # DEALLOCATE, or a caller that stopped waiting
            return
        if seg.error is not None:
            fut.set_exception(seg.error)
        else:
            fut.set_result(seg.rows if seg.rows is not None else [])

    def _break(self, exc: Exception) -> None:
        """The connection is unusable: fail every read in flight and let it go."""
        if self.broken is None:
            self.broken = exc if isinstance(exc, psycopg.OperationalError) else \
                psycopg.OperationalError(str(exc))
        self.close()
        while self._segments:
            fut = self._segments.popleft().fut
            if fut is not None and not fut.done():
                fut.set_exception(self.broken)

    def _end(self, from_loop: bool) -> None:
        self.broken = self.broken or psycopg.OperationalError("closed")
        if self._cork is not None:
            self._cork.close()
        self.pgconn.finish()


def _corkable(fd: int) -> socket.socket | None:
    """A second handle on a TCP connection's socket, to cork it; None for a Unix socket (or
    a system without TCP_CORK), which is sent as libpq sends it."""
    if not hasattr(socket, "TCP_CORK"):
        return None
    sock = socket.socket(fileno=socket.dup(fd))
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        sock.close()
        return None
    return sock
