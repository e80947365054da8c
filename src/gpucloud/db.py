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

import orjson
from sqlalchemy import BigInteger, DateTime, Integer, String, create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
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

    def result_processor(self, dialect, coltype):
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        # SQLite stores ISO text; the generic processor parses it with a regular expression,
        # which was a third of the cost of listing 100 instances. fromisoformat is C.
        parse, utc = dt.datetime.fromisoformat, dt.timezone.utc

        def process(value):
            if value is None:
                return None
            return parse(value).replace(tzinfo=utc)

        return process


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


# orjson instead of the stdlib for JSON columns: lists decode one document per row.
def make_engine(url: str) -> Engine:
    # hide_parameters: a failed statement's message (which reaches the log) must not carry the
    # values it was given — environment values, SSH keys, names a client typed.
    if url.startswith("sqlite"):
        private_sqlite_file(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=20, max_overflow=20, hide_parameters=True,
                               json_deserializer=orjson.loads)

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
    # No pool_pre_ping: it costs a round trip on every checkout, i.e. on every request. A
    # connection broken by a database restart fails one statement; SQLAlchemy then sees the
    # disconnect and replaces every connection of the pool opened before it.
    return create_engine(url, pool_size=20, max_overflow=20, hide_parameters=True,
                         json_deserializer=orjson.loads)


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
        # PostgreSQL: a read of single statements needs no transaction around them (each is its
        # own snapshot), and BEGIN and ROLLBACK are a network round trip each.
        self._query_bind = self.engine if self.is_sqlite else \
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
        # SQLite has one writer at a time. Threads of this process queue on this lock instead
        # of on SQLite's busy handler, which sleeps up to 100 ms between retries and turns a
        # burst of concurrent writes into seconds of latency. Other processes still queue
        # through busy_timeout.
        self._write_lock = threading.RLock() if self.is_sqlite else None

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

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A unit of work that only reads, through the ORM, on one snapshot."""
        with self._read() as session, session.begin():
            yield session

    @contextmanager
    def query(self) -> Iterator[Connection]:
        """A Core connection for the API's reads, each statement its own snapshot.

        What the public GETs use. Measured per request on this project's 2-core machine: a
        pre-built Core statement on a plain connection costs ~140 µs of CPU where the same
        read through an ORM session with a statement built per call costs ~750 µs (session
        bookkeeping, statement construction and cache-key generation). Statements executed
        here should be built once, with bind parameters. Use `read()` when several
        statements must agree with each other."""
        with self._query_bind.connect() as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()
