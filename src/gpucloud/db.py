"""Engine, sessions and the column types every domain shares.

One transaction per unit of work: callers open `db.write()` (or `db.read()`) around exactly the
work they own; services only `flush()`.

SQLite notes: WAL so readers never block the writer, a busy timeout so writers queue instead of
failing, and `BEGIN IMMEDIATE` for write transactions — a deferred transaction that reads and
then writes can fail with SQLITE_BUSY when another writer got in between, which would turn a
perfectly valid request into a 500.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import BigInteger, DateTime, Integer, String, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from gpucloud.settings import Settings


class UTCDateTime(TypeDecorator):
    """Stored naive in UTC, returned timezone-aware, so both databases compare identically."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc)


# Auto-incrementing 64-bit ids; SQLite only auto-increments a column declared INTEGER.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")
Micro = BigInteger  # integer micro-USDC


def new_id() -> str:
    return str(uuid.uuid4())


def plausible_id(value: str) -> bool:
    """Whether `value` could name a row. Ids are UUIDs; anything else cannot match, and a NUL
    makes PostgreSQL raise instead of finding nothing, so a lookup checks this first and
    answers 404 exactly as for an unknown id."""
    return len(value) <= 64 and "\x00" not in value


UUIDStr = String(36)


class Base(DeclarativeBase):
    pass


def private_sqlite_file(url: str) -> None:
    """Create the SQLite file (and its directory) readable by its owner only: it holds SSH keys
    and environment values (tokens). SQLite gives its -wal and -shm files the database file's
    mode. An existing file is narrowed too; an existing directory is left as it is (it may be
    the working directory)."""
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    file = Path(path)
    if not file.parent.exists():
        file.parent.mkdir(mode=0o700, parents=True)
    os.close(os.open(file, os.O_CREAT | os.O_RDWR, 0o600))
    for sibling in (file, file.with_name(file.name + "-wal"), file.with_name(file.name + "-shm")):
        if sibling.exists() and sibling.stat().st_mode & 0o077:
            sibling.chmod(0o600)


def make_engine(url: str) -> Engine:
    # hide_parameters: a failed statement's message (which reaches the log) must not carry the
    # values it was given — environment values, SSH keys, names a client typed.
    if url.startswith("sqlite"):
        private_sqlite_file(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=20, max_overflow=20, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            # Take transaction control away from the driver so BEGIN is ours to emit.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True,
                         hide_parameters=True)


class Database:
    def __init__(self, settings: Settings):
        self.url = settings.effective_database_url
        self.engine = make_engine(self.url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        write_bind = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        self._write = sessionmaker(write_bind, expire_on_commit=False)
        # SQLite has one writer at a time. Threads of this process queue on this lock instead
        # of on SQLite's busy handler, which sleeps up to 100 ms between retries and turns a
        # burst of concurrent writes into seconds of latency. Other processes still queue
        # through busy_timeout.
        self._write_lock = threading.RLock() if self.is_sqlite else None
        self._probe_local = threading.local()
        self._probe_all: list = []
        self._probe_all_lock = threading.Lock()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A unit of work that writes: committed on success, rolled back on any exception."""
        if self._write_lock is None:
            with self._write() as session, session.begin():
                yield session
            return
        with self._write_lock, self._write() as session, session.begin():
            yield session

    def probe(self, sql: str, params: tuple) -> tuple | None:
        """One single-row SELECT on this thread's own autocommit DBAPI connection.

        For the hottest read (instance details, run on the event loop thread): a lone SELECT
        is a consistent snapshot by itself, and a pool checkout/reset per request cost as much
        as the query. The connection is dropped and replaced if it ever fails."""
        for attempt in (0, 1):
            conn = getattr(self._probe_local, "conn", None)
            if conn is None:
                conn = self.engine.raw_connection()
                if not self.is_sqlite:
                    conn.driver_connection.autocommit = True
                self._probe_local.conn = conn
                with self._probe_all_lock:
                    self._probe_all.append(conn)
            try:
                cur = conn.cursor()
                try:
                    cur.execute(sql, params)
                    return cur.fetchone()
                finally:
                    cur.close()
            except Exception:
                self._probe_local.conn = None
                conn.invalidate()
                if attempt:
                    raise
        return None

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as session, session.begin():
            yield session

    def dispose(self) -> None:
        with self._probe_all_lock:
            for conn in self._probe_all:
                try:
                    conn.invalidate()  # closes it; it must not go back to a disposed pool
                except Exception:  # already broken: nothing left to close
                    pass
            self._probe_all.clear()
        self.engine.dispose()
