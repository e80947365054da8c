"""SQLite reads without a thread of this process: a read process of our own, fed from the loop.

SQLite's calls block, so a read thread used to run the API's reads, and under load the
interpreter lock changed hands between that thread and the busy event loop around every
SQLite step, each hand-over a wait and a context switch: instance details cost ~2.5× the
CPU of a plans response and the feeds served about as many at 32 connections as at one
(docs/api-speed.md, "SQLite reads in a read process"). Here a child process
(`python -m gpucloud.sqlitereader`) holds its own connection to the same database file and
answers the reads sent over a socket pair: it has an interpreter lock of its own. The loop
writes a read to a non-blocking socket and goes on; `loop.add_reader` settles the futures when
answers arrive, as with PostgreSQL's pipelines (`pgpipe`). WAL mode (db.make_engine) lets the
child read while this process writes, and each read sees every write committed before it was
sent, as a read thread's own connection did; the child's connection is `query_only`.

The frames are described in `sqlitereader`, the child's side.
"""

from __future__ import annotations

import asyncio
import marshal
import os
import pickle
import socket
import sqlite3
import subprocess
import sys
from collections import deque
from pathlib import Path

from gpucloud.pipes import LoopConnection
from gpucloud.sqlitereader import CHUNK, HEADER, OK

# The directory holding the gpucloud package: the child imports its module from there even
# when the server was started with a path of its own (a checkout on PYTHONPATH).
_SOURCE_ROOT = str(Path(__file__).resolve().parent.parent)
_ENDING = 5.0  # seconds a closed read process has to end before it is killed


def _error(name: str, message: str) -> sqlite3.Error:
    """The child's error as the sqlite3 exception a read thread would have raised."""
    cls = getattr(sqlite3, name, None)
    if isinstance(cls, type) and issubclass(cls, sqlite3.Error):
        return cls(message)
    return sqlite3.Error(f"{name}: {message}")


def _spawn(path: str) -> tuple[subprocess.Popen, socket.socket]:
    ours, theirs = socket.socketpair()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_SOURCE_ROOT, env.get("PYTHONPATH")) if p)
    try:
        # -S: no site packages to import; the child needs the standard library and one file.
        proc = subprocess.Popen(
            [sys.executable, "-S", "-m", "gpucloud.sqlitereader", str(theirs.fileno()), path],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return proc, ours


class ReadProcess(LoopConnection):
    """One read process, driven by the event loop it was started on."""

    def __init__(self, proc: subprocess.Popen, sock: socket.socket,
                 loop: asyncio.AbstractEventLoop):
        self.proc = proc
        self.sock = sock
        self.loop = loop
        self.broken: Exception | None = None
        self._waiting: deque[asyncio.Future] = deque()
        self._out = bytearray()
        self._in = bytearray()
        self._writing = False
        self._flushing = False
        sock.setblocking(False)
        self._fd: int | None = sock.fileno()
        loop.add_reader(self._fd, self._readable)

    @classmethod
    async def start(cls, path: str) -> ReadProcess:
        loop = asyncio.get_running_loop()
        # Starting a process blocks for a few milliseconds: not on the loop.
        proc, sock = await loop.run_in_executor(None, _spawn, path)
        return cls(proc, sock, loop)

    @property
    def pending(self) -> int:
        return len(self._waiting)

    def rows(self, sql: str, params: dict | list) -> asyncio.Future:
        """Send one SELECT (`?` or `:name` placeholders); a future of its rows as tuples."""
        if self.broken is not None:
            raise self.broken
        body = pickle.dumps((sql, params), pickle.HIGHEST_PROTOCOL)
        self._out += HEADER.pack(len(body))
        self._out += body
        fut = self.loop.create_future()
        self._waiting.append(fut)
        if not self._writing and not self._flushing:
            # The reads of one turn of the loop go out in one write: each write wakes the
            # read process, and a wake-up here cost ~19 µs of the loop's CPU.
            self._flushing = True
            self.loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        """Send what is queued; what the socket does not take now goes when it is writable
        (this again, as the loop's writer callback)."""
        self._flushing = False
        if self._fd is None:
            return
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._break(exc)
            return
        del self._out[:sent]
        if self._out and not self._writing:
            self._writing = True
            self.loop.add_writer(self._fd, self._flush)
        elif not self._out and self._writing:
            self._writing = False
            self.loop.remove_writer(self._fd)

    def _readable(self) -> None:
        try:
            chunk = self.sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._break(exc)
            return
        if not chunk:
            self._break(sqlite3.OperationalError("the SQLite read process ended"))
            return
        buf = self._in
        buf += chunk
        pos, end, waiting = 0, len(buf), self._waiting
        while end - pos >= 4:
            size = HEADER.unpack_from(buf, pos)[0]
            if end - pos - 4 < size:
                break
            start = pos + 4
            pos = start + size
            fut = waiting.popleft()
            if fut.done():  # a caller that stopped waiting
                continue
            if buf[start] == OK:
                fut.set_result(marshal.loads(buf[start + 1:pos]))
            else:
                fut.set_exception(_error(*pickle.loads(buf[start + 1:pos])))
        del buf[:pos]

    def _break(self, exc: Exception) -> None:
        """The process is gone or its socket broke: fail every read in flight."""
        if self.broken is None:
            self.broken = exc if isinstance(exc, sqlite3.Error) else \
                sqlite3.OperationalError(f"the SQLite read process: {exc}")
        self.close()
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(self.broken)

    def _end(self, from_loop: bool) -> None:
        """The process ends when its socket closes. Let go from a loop it is left to end
        (Popen's finalizer reaps it); from plain code it is waited for."""
        self.broken = self.broken or sqlite3.OperationalError("closed")
        self.sock.close()
        if not from_loop:
            # Closed from plain code (a shutdown, a test's teardown), not from a loop: wait
            # for the process, so that nothing of ours holds the database file once this
            # returns (SQLite removes the -wal file when its last connection closes).
            try:
                self.proc.wait(_ENDING)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
