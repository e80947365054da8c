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
from collections import deque, namedtuple
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    String,
    create_engine,
    event,
    func,
    literal_column,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from gpucloud import pgexec
from gpucloud.pgpipe import Pipeline
from gpucloud.pipes import Pipelines
from gpucloud.settings import Settings
from gpucloud.sqlitepipe import ReadProcess


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
        return as_utc(value)

    def result_processor(self, dialect, coltype):
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        # SQLite stores ISO text; the generic processor parses it with a regular expression,
        # which was a third of the cost of listing 100 instances. fromisoformat is C, and
        # given the offset it makes the aware value itself (~0.7 µs against ~3 µs for
        # parsing then `replace(tzinfo=…)`, whose keyword arguments are the slow part).
        parse = dt.datetime.fromisoformat

        def process(value):
            if value is None:
                return None
            try:
                return parse(value + "+00:00")
            except ValueError:  # text that carries an offset of its own (not ours)
                return as_utc(parse(value))

        return process


def as_utc(value: dt.datetime) -> dt.datetime:
    """A naive UTC value made aware: `value.replace(tzinfo=timezone.utc)`, in a fifth of the
    time (`replace` parses keyword arguments; this is measured on every timestamp a read
    returns)."""
    return _COMBINE(value, value.time(), dt.timezone.utc)


_COMBINE = dt.datetime.combine


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
        try:
            if sibling.stat().st_mode & 0o077:
                sibling.chmod(0o600)
        except FileNotFoundError:
            continue  # not there, or removed meanwhile (SQLite drops -wal at the last close)


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


# --- the API's reads: statements compiled once, run on a raw driver connection -----------------


class _Compiled:
    """One statement compiled for one dialect: its SQL text, how to order and convert its
    parameters, and how to convert each column of a row (the same processors SQLAlchemy's
    own result would apply: UTC datetimes, JSON, booleans).

    Only public API: the compiled form's text, binds and positions, and each type's
    `dialect_impl(dialect)` processors, which are what SQLAlchemy caches and applies itself
    (tests/test_parity.py and test_read_path.py compare the bytes on both databases)."""

    __slots__ = ("sql", "positional", "binds", "bind_procs", "procs", "row", "packed")

    def __init__(self, stmt, dialect):
        compiled = stmt.compile(dialect=dialect)
        if any(b.expanding or b.literal_execute for b in compiled.binds.values()):
            raise ValueError("expanding parameters are not supported by Database.query()")
        self.sql = str(compiled)
        self.positional = list(compiled.positiontup) if compiled.positional else None
        # name → default (None when the caller must give it)
        self.binds = {name: (None if b.required else b.effective_value)
                      for name, b in compiled.binds.items()}
        self.bind_procs = {}
        for name, b in compiled.binds.items():
            proc = b.type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                self.bind_procs[name] = proc
        # A textual statement has no typed columns: its rows stay plain tuples.
        columns = getattr(stmt, "selected_columns", None) or ()
        self.procs = [(i, c.type.dialect_impl(dialect).result_processor(dialect, None))
                      for i, c in enumerate(columns)]
        self.procs = [(i, p) for i, p in self.procs if p is not None]
        self.packed = _packed_sql(stmt, dialect, self.positional, columns)
        self.row = namedtuple("Row", list(columns.keys()) if columns else [], rename=True)

    def parameters(self, params: dict | None):
        values = dict(self.binds)
        if params:
            values.update(params)
        for name, proc in self.bind_procs.items():
            values[name] = proc(values[name])
        if self.positional is not None:
            return [values[name] for name in self.positional]
        return values

    def rows(self, fetched: list) -> Rows:
        make, procs = self.row._make, self.procs
        if not self.row._fields:  # textual SQL: no typed columns known, plain tuples
            return Rows(map(tuple, fetched))
        if not procs:
            return Rows(map(make, fetched))
        out = Rows()
        for raw in fetched:
            raw = list(raw)
            for i, proc in procs:
                value = raw[i]
                # Every result processor gives None for NULL; a feed's union of the instance
                # row and its event rows is mostly NULLs (JSON columns among them).
                if value is not None:
                    raw[i] = proc(value)
            out.append(make(raw))
        return out


# SQLite, `Reader.keys`: all rows of a statement as one text, each row a JSON array, joined by
# the ASCII record separator (JSON escapes control characters, so no row's text holds it).
_ROW_SEPARATOR = "\x1e"
# Types whose SQLite values a JSON array gives back unchanged. Not floats (SQLite prints 15
# digits) and not bytes (no JSON for them): a statement with such a column is read row by row.
_JSON_SAFE = (Integer, String, DateTime, Boolean)


def _packed_sql(stmt, dialect, positional, columns) -> str | None:
    """SQLite: `SELECT group_concat(json_array(<columns>), char(30)) FROM (<stmt>)`, one row
    and one step for the whole result, in the statement's order (SQLite never flattens an
    ordered subquery into an aggregate, so the aggregate reads the rows as the subquery sorts
    them; tests/test_read_path.py checks a descending order against the table's own)."""
    if dialect.name != "sqlite" or not columns:
        return None
    if not all(isinstance(getattr(c.type, "impl", c.type), _JSON_SAFE) for c in columns):
        return None
    sub = stmt.subquery()
    packed = select(func.group_concat(func.json_array(*sub.c), literal_column("char(30)")))
    compiled = packed.compile(dialect=dialect)
    if (list(compiled.positiontup) if compiled.positional else None) != positional:
        return None  # its parameters in another order: not worth translating
    return str(compiled)


class Rows(list):
    """A statement's rows (named tuples), with the few methods of SQLAlchemy's Result that
    the API's reads use."""

    def all(self) -> list:
        return self

    def one_or_none(self):
        if len(self) > 1:
            raise ValueError("more than one row")
        return self[0] if self else None

    def one(self):
        if len(self) != 1:
            raise ValueError(f"expected one row, got {len(self)}")
        return self[0]

    def first(self):
        return self[0] if self else None

    def scalar(self):
        return self[0][0] if self else None


class Reader:
    """What `Database.query()` yields: `execute(statement, params)` for pre-built SELECTs.

    Each statement is compiled once per process and run on a raw driver connection taken
    from a small free list (at most `limit`, borrowed from the engine's pool for good), in
    autocommit: on SQLite no BEGIN/ROLLBACK around the SELECT, on PostgreSQL a prepared
    statement and no transaction. Measured on this project's machine, a details read went
    from ~250 µs of CPU through a pooled SQLAlchemy connection (checkout, BEGIN, statement
    execution, ROLLBACK, checkin) to ~15 µs. Each statement sees its own snapshot; use
    `Database.read()` when several must agree. When every raw connection is busy, the read
    goes through a pooled SQLAlchemy connection instead (same rows).

    `fetch` reads without a thread of this process, from the event loop: on PostgreSQL on
    pipelined connections of its own (`pgpipe`), on SQLite from a read process of its own
    (`sqlitepipe`; not for an in-memory database, which no other process can open).
    `Runtime.read` picks the way."""

    _MAX_STATEMENTS = 512  # bound: a caller building statements per call must not leak

    # Connections (PostgreSQL) or read processes (SQLite) the event loop reads on. One served
    # as many as two (docs/api-speed.md, "PostgreSQL reads from the event loop"); with two,
    # one slow read does not hold up every read queued behind it.
    PIPELINES = 2

    def __init__(self, engine: Engine, fallback: Engine, limit: int):
        self.engine = engine
        self.fallback = fallback
        self.dialect = engine.dialect
        self.is_sqlite = engine.dialect.name == "sqlite"
        self.limit = limit
        self._compiled: dict = {}
        self._free: deque = deque()
        self._count = 0
        self._lock = threading.Lock()
        self._closed = False
        self.pipes = self._pipelines(engine)

    def _pipelines(self, engine: Engine) -> Pipelines | None:
        if not self.is_sqlite:
            args, kwargs = self.dialect.create_connect_args(engine.url)
            return Pipelines(lambda: Pipeline.open(args, kwargs), self.PIPELINES)
        path = engine.url.database
        if not path or path == ":memory:" or path.startswith("file:"):
            return None  # no file another process could open: the read thread reads
        path = os.path.abspath(path)
        return Pipelines(lambda: ReadProcess.start(path), self.PIPELINES)

    def _prepared(self, stmt) -> _Compiled:
        compiled = self._compiled.get(stmt)
        if compiled is None:
            if len(self._compiled) >= self._MAX_STATEMENTS:
                self._compiled.clear()
            compiled = self._compiled[stmt] = _Compiled(stmt, self.dialect)
        return compiled

    def _checkout(self):
        try:
            return self._free.pop()
        except IndexError:
            pass
        with self._lock:
            if self._closed or self._count >= self.limit:
                return None
            self._count += 1
        try:
            fairy = self.engine.raw_connection()
            raw = fairy.dbapi_connection
            if self.is_sqlite:
                # One cursor per connection, reused: creating one per statement is measurable.
                return fairy, raw.cursor()
            raw.autocommit = True
            return fairy, pgexec.Statements(raw)
        except BaseException:
            with self._lock:
                self._count -= 1
            raise

    def _discard(self, held) -> None:
        with self._lock:
            self._count -= 1
        try:
            held[0].invalidate()
        except Exception:  # already broken: nothing left to close
            pass

    def execute(self, stmt, params: dict | None = None, raw: bool = False) -> Rows | list:
        """The statement's rows; with `raw`, the driver's own tuples, unconverted (what
        `convert` turns into a row later, e.g. only for rows not rendered before)."""
        compiled = self._prepared(stmt)
        fetched = self._fetch(compiled, params, False)
        return fetched if raw else compiled.rows(fetched)

    def keys(self, stmt, params: dict | None = None) -> list:
        """Each row as a hashable key for what is rendered from it, which `convert` turns
        into the row. On SQLite each row's JSON text, the whole result read in one step:
        SQLite releases the interpreter lock around every step, and under load the lock
        changing hands around each of a list's 100 rows cost more than the rows did
        (docs/api-speed.md). Elsewhere, and for columns JSON would change, the driver's
        tuples (as `execute(raw=True)`)."""
        compiled = self._prepared(stmt)
        if compiled.packed is None:
            return self._fetch(compiled, params, False)
        text = self._fetch(compiled, params, True)[0][0]
        return text.split(_ROW_SEPARATOR) if text else []

    def _fetch(self, compiled: _Compiled, params: dict | None, packed: bool) -> list:
        held = self._checkout()
        if held is None:
            # Every raw connection is busy: borrow a pooled one's driver connection.
            with self.fallback.connect() as conn:
                cur = conn.connection.dbapi_connection.cursor()
                try:
                    cur.execute(compiled.packed if packed else compiled.sql,
                                compiled.parameters(params))
                    return cur.fetchall()
                finally:
                    cur.close()
        try:
            fetched = self._run(held[1], compiled, params, packed)
        except self.dialect.loaded_dbapi.Error:
            # A broken connection (a database restart) is dropped and the read, which
            # changes nothing, is tried once more on a new one. A statement error leaves an
            # autocommit connection usable, but it is not worth telling the two apart on
            # this rare path; it fails again on the retry.
            self._discard(held)
            held = self._checkout()
            if held is None:
                return self._fetch(compiled, params, packed)
            try:
                fetched = self._run(held[1], compiled, params, packed)
            except BaseException:
                self._discard(held)
                raise
        except BaseException:
            self._discard(held)
            raise
        self._free.append(held)
        return fetched

    def _run(self, cur, compiled: _Compiled, params: dict | None, packed: bool) -> list:
        if self.is_sqlite:
            cur.execute(compiled.packed if packed else compiled.sql, compiled.parameters(params))
            return cur.fetchall()
        return cur.rows(compiled.sql, compiled.parameters(params))

    async def fetch(self, stmt, params: dict | None = None) -> list:
        """On the event loop (when `pipes`): the statement's driver tuples, as
        `execute(raw=True)` gives them (`convert` makes a row of one), read without blocking
        the loop."""
        compiled = self._prepared(stmt)
        return await self.pipes.rows(compiled.sql, compiled.parameters(params))

    def convert(self, stmt, key):
        """One key of `keys(stmt)`, or one raw row of `execute(stmt, raw=True)`, as
        `execute(stmt)` would have given the row."""
        if isinstance(key, str):
            key = orjson.loads(key)
        return self._prepared(stmt).rows([key])[0]

    def convert_all(self, stmt, raw_rows: list) -> Rows:
        """`convert` for every raw row of a read, at once."""
        return self._prepared(stmt).rows(raw_rows)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        if self.pipes is not None:
            self.pipes.close()
        while self._free:
            self._discard(self._free.pop())


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
        # Raw connections for the API's reads: about one per thread that runs them.
        self.reader = Reader(self.engine, self._query_bind,
                             max(2, settings.blocking_threads(self.is_sqlite)))
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
    def query(self) -> Iterator[Reader]:
        """The API's reads: `conn.execute(statement, params)` for SELECTs built once (module
        constants with bind parameters), each statement its own snapshot (see `Reader`).
        Use `read()` when several statements must agree with each other."""
        yield self.reader

    def dispose(self) -> None:
        self.reader.close()
        self.engine.dispose()
