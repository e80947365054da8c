"""Everything one server process shares: settings, database, clock, drivers, caches.

Built once by `create_app` and reachable from routes as `request.app.state.rt`, from workers
as their argument. Tests build their own with other settings.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson

from gpucloud.clock import Clock, ManualClock, SystemClock
from gpucloud.db import NEW_WORK, PLANS_CHANGED, Database
from gpucloud.drivers.base import DriverContext
from gpucloud.drivers.instrumented import Instrumented
from gpucloud.drivers.pool import CallPool
from gpucloud.drivers.registry import driver_class
from gpucloud.instances.engine import Dispatcher
from gpucloud.migrations.run import upgrade
from gpucloud.secrets import SecretBox, load_or_create_key
from gpucloud.settings import Settings
from gpucloud.threads import RequestThreads


def read_threads(settings: Settings, is_sqlite: bool) -> int:
    """How many threads run the requests' reads (the setting explains the defaults)."""
    if settings.read_threads:
        return settings.read_threads
    return 1 if is_sqlite else min(4, settings.blocking_threads(is_sqlite))


def _read(reader, stmt, params: dict | None, keys: bool, then):
    """`Runtime.read` on a read thread."""
    rows = reader.keys(stmt, params) if keys else reader.execute(stmt, params, True)
    return rows if then is None else then(rows)


def config_key(config: dict[str, Any]) -> bytes:
    """A provider config as canonical JSON: the key of its driver object. orjson (~1 µs) and
    not json.dumps (~7 µs): the polled feeds look their driver up on every request."""
    try:
        return orjson.dumps(config, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
                            default=str)
    except TypeError:  # an integer past 64 bits, which orjson does not write
        return json.dumps(config, sort_keys=True, default=str).encode()


@dataclass
class Runtime:
    settings: Settings
    db: Database
    clock: Clock
    secrets: SecretBox
    # Serializes this process's background ticks with POST /admin/clock drains.
    work_lock: threading.RLock = field(default_factory=threading.RLock)
    # Set after committing new work (a deploy, update, terminate) so this process's idle
    # background worker starts it now instead of at its next poll.
    wake: threading.Event = field(default_factory=threading.Event)
    caches: dict[str, Any] = field(default_factory=dict)
    _drivers: dict[tuple[str, bytes], Any] = field(default_factory=dict)
    _drivers_lock: threading.Lock = field(default_factory=threading.Lock)
    # Driver calls: a bounded pool with per-provider slots; the lifecycle's dispatcher.
    calls: CallPool = field(init=False)
    dispatcher: Dispatcher = field(init=False)
    # The requests' blocking work: their database reads (`offload`) and the API's writes
    # (deploys, updates, terminations: `offload_write`).
    requests: RequestThreads = field(init=False)
    writes: RequestThreads = field(init=False)

    def __post_init__(self) -> None:
        self.calls = CallPool(self.settings.driver_pool_size,
                              self.settings.driver_calls_per_provider)
        # A freed slot is new room for work: the idle lifecycle loop looks again at once.
        self.calls.changed = self.wake
        self.dispatcher = Dispatcher(self)
        self.requests = RequestThreads(read_threads(self.settings, self.db.is_sqlite))
        self.writes = RequestThreads(self.settings.blocking_threads(self.db.is_sqlite),
                                     name="gpucloud-write")
        # What committed changes mean for this process (registered where they are made).
        self.db.on_effect(PLANS_CHANGED, lambda: self.invalidate("plans"))
        self.db.on_effect(NEW_WORK, self.wake.set)

    @classmethod
    def build(cls, settings: Settings, migrate: bool = True) -> Runtime:
        db = Database(settings)
        if migrate:
            upgrade(db)
        clock: Clock = ManualClock(db) if settings.clock == "manual" else SystemClock()
        return cls(settings=settings, db=db, clock=clock,
                   secrets=SecretBox(load_or_create_key(settings)))

    async def offload(self, fn, *args):
        """Run blocking `fn(*args)` on the request threads and wait for it without blocking
        the event loop, in a copy of the caller's context (the request id and account reach
        the thread's log lines). `RequestThreads`, not `run_in_executor` or anyio's
        `to_thread`: measured with 32 concurrent callers, a hop with a one-row SQLite read
        in it cost ~20–34 µs of CPU against ~80 and (anyio, earlier) more
        (docs/api-speed.md)."""
        return await self.requests.run(fn, *args)

    async def read(self, stmt, params: dict | None = None, keys: bool = False, then=None):
        """One SELECT of the API's reads (`Database.query()`'s statements) without blocking the
        event loop: its raw rows, or with `keys` what `Reader.keys` gives (`db.reader.convert`
        turns one into a row), or what `then(rows)` makes of them. The loop sends it itself,
        with no thread and no hand-over of the interpreter lock: on PostgreSQL on a pipelined
        connection (`pgpipe`), on SQLite to a read process of ours (`sqlitepipe`), and
        `then` runs on the loop. Only an in-memory SQLite database, which no other process
        can open, has a read thread run it, and `then` there too."""
        reader = self.db.reader
        if self.reads_on_loop:
            rows = await reader.fetch(stmt, params)
            return rows if then is None else then(rows)
        return await self.requests.run(_read, reader, stmt, params, keys, then)

    @property
    def reads_on_loop(self) -> bool:
        """Whether `read` is sent from the event loop itself rather than run on a thread."""
        return self.db.reader.pipes is not None

    async def offload_write(self, fn, *args):
        """`offload` for a request's write transaction, on threads of its own
        (`GPUCLOUD_THREADPOOL_SIZE` of them): a deploy queued behind the database's write
        lock must not hold up the reads. What a plain `def` route would get from FastAPI
        (anyio's `to_thread`) cost a deploy 200–400 µs more of the event loop's CPU with 32
        callers on SQLite (docs/api-speed.md, "writes on threads of their own")."""
        return await self.writes.run(fn, *args)

    def driver_for(self, provider_id: str, driver_name: str, config: dict[str, Any]):
        """One driver object per provider (and config version), reused across calls."""
        key = (provider_id, config_key(config))
        with self._drivers_lock:
            drv = self._drivers.get(key)
            if drv is None:
                cls = driver_class(driver_name)
                # Only a driver that keeps its own far side in the database gets it.
                ctx = DriverContext(clock=self.clock, db=self.db if cls.uses_database else None)
                # Sealed secrets of the stored config (BMC passwords) opened for the driver.
                drv = Instrumented(cls(provider_id, cls.open_config(config,
                                                                    self.secrets.open_text), ctx),
                                   driver_name)
                self._drivers[key] = drv
            return drv

    def invalidate(self, *names: str) -> None:
        """Drop in-process caches after a change made through this process."""
        for name in names:
            cache = self.caches.get(name)
            if cache is not None:
                cache.clear()

    def close(self) -> None:
        self.requests.shutdown()
        self.writes.shutdown()
        self.dispatcher.close()
        self.calls.shutdown()
        with self._drivers_lock:
            for drv in self._drivers.values():
                drv.close()
            self._drivers.clear()
        self.db.dispose()
