"""Reads sent from the event loop: a few connections of one kind, a read to the least busy.

A connection here (`pgpipe.Pipeline` for PostgreSQL, `sqlitepipe.ReadProcess` for SQLite) is
driven by the event loop it was opened on: `rows(sql, params)` sends a read and returns a
future of its rows, `pending` counts the reads in flight, `broken` is set (an exception) once
it can serve no more, and `close()` lets it go from any thread.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable


class LoopConnection(abc.ABC):
    """What both kinds share: a socket `_fd` read (and, while output waits, written) by the
    loop's callbacks, let go from any thread."""

    loop: asyncio.AbstractEventLoop
    _fd: int | None
    _writing: bool

    def close(self) -> None:
        """Let the connection go (from the loop's own thread, or handed to it)."""
        if self._fd is None:
            return
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is not self.loop and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.close)
            return
        if not self.loop.is_closed():
            self.loop.remove_reader(self._fd)
            if self._writing:
                self.loop.remove_writer(self._fd)
        self._fd = None
        self._end(from_loop=here is not None)

    @abc.abstractmethod
    def _end(self, from_loop: bool) -> None:
        """Close the connection itself, its callbacks already removed."""


class Pipelines:
    """Up to `size` connections on the running loop, opened by `opener()`; a read goes to the
    least busy one.

    A broken connection (the database restarted, the read process died) fails the reads in
    flight on it; each is sent once more on a new connection, as `db.Reader` retries its
    reads. A different event loop (a test's TestClient after another's) gets connections of
    its own."""

    def __init__(self, opener: Callable[[], Awaitable], size: int):
        self.opener = opener
        self.size = size
        self._open: list = []
        self._opening: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def rows(self, sql: str, params: dict | list) -> list[tuple]:
        pipe = await self._pick()
        try:
            return await pipe.rows(sql, params)
        except Exception:
            if pipe.broken is None:
                raise  # the statement failed, not the connection
        pipe = await self._pick()
        return await pipe.rows(sql, params)

    async def _pick(self):
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._drop_all()
            self._loop = loop
        alive = [p for p in self._open if p.broken is None]
        if len(alive) != len(self._open):
            self._open = alive
        best = min(alive, key=lambda p: p.pending, default=None)
        if best is not None and (best.pending == 0 or len(alive) >= self.size):
            return best
        if self._opening is not None:  # one connect at a time; meanwhile the busy ones do
            if best is not None:
                return best
            await asyncio.shield(self._opening)
            return await self._pick()
        self._opening = loop.create_future()
        try:
            pipe = await self.opener()
        except BaseException as exc:
            self._opening.set_exception(exc)
            self._opening.exception()  # retrieved: the waiters raise it themselves
            self._opening = None
            raise
        self._open.append(pipe)
        self._opening.set_result(None)
        self._opening = None
        return pipe

    def _drop_all(self) -> None:
        for pipe in self._open:
            pipe.close()
        self._open = []
        self._opening = None

    def close(self) -> None:
        self._drop_all()
