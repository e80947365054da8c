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
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import BigInteger, DateTime, Integer, String, create_engine, event
from sqlalchemy.engine import Engine
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


UUIDStr = String(36)


class Base(DeclarativeBase):
    pass


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=20, max_overflow=20)

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
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


# --- after-commit effects ----------------------------------------------------------------------
# What a change means outside the database (the plans cache is stale, the lifecycle worker has
# new work) is registered by the code that makes the change, on its session, by name; the
# process's handlers run once per name after the transaction commits, and never when it rolls
# back. No route has to remember them.
PLANS_CHANGED = "plans_changed"
NEW_WORK = "new_work"
_EFFECTS = "gpucloud_effects"


def after_commit(s: Session, effect: str) -> None:
    """Run the `effect` handlers once after `s` commits (dropped on rollback)."""
    s.info.setdefault(_EFFECTS, set()).add(effect)


def _run_effects(session: Session) -> None:
    effects = session.info.pop(_EFFECTS, None)
    db = session.info.get("db")
    if not effects or db is None:
        return
    for effect in sorted(effects):
        for handler in db.effect_handlers.get(effect, ()):
            handler()


def _drop_effects(session: Session) -> None:
    session.info.pop(_EFFECTS, None)


class Database:
    def __init__(self, settings: Settings):
        self.url = settings.effective_database_url
        self.engine = make_engine(self.url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self.effect_handlers: dict[str, list] = {}
        self._read = sessionmaker(self.engine, expire_on_commit=False, info={"db": self})
        write_bind = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        self._write = sessionmaker(write_bind, expire_on_commit=False, info={"db": self})
        for maker in (self._read, self._write):
            event.listen(maker, "after_commit", _run_effects)
            event.listen(maker, "after_rollback", _drop_effects)
        # SQLite has one writer at a time. Threads of this process queue on this lock instead
        # of on SQLite's busy handler, which sleeps up to 100 ms between retries and turns a
        # burst of concurrent writes into seconds of latency. Other processes still queue
        # through busy_timeout.
        self._write_lock = threading.RLock() if self.is_sqlite else None
        self._probe_local = threading.local()
        self._probe_all: list = []
        self._probe_all_lock = threading.Lock()

    def on_effect(self, effect: str, handler) -> None:
        """Call `handler()` after every commit that registered `effect` (see after_commit)."""
        self.effect_handlers.setdefault(effect, []).append(handler)

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
