"""The lifecycle's dispatcher: claimed rows go to the driver-call pool, leases are renewed while
their steps run, unchanged watches are rescheduled in bulk.

One per process (`rt.dispatcher`). The background worker calls `dispatch(wait=False)`: it claims
what the pool has room for, hands it over and returns at once, so a slow provider never holds
up the loop (and billing runs on a thread of its own, workers/runner.py). The manual clock's
drain and tests call `dispatch(wait=True)`, which also waits for the steps it started.

Leases: a claim lasts `lease_seconds` of wall time. While a step runs, a heartbeat thread
pushes the expiry forward every third of that, for exactly the rows this process still works
on; when the process dies the heartbeat dies with it and the lease expires as before.

Results: in the background (`wait=False`) a step gives its provider slot and its pool thread
back as soon as its driver calls return, and hands what to apply to the applier thread, which
applies everything that has come in since its last pass in one transaction
(`lifecycle.apply_many`). So the next driver call never waits for a commit, and a thousand
deploys finishing together cost a few transactions. The row stays leased (and renewed) until
its result is applied. `wait=True` applies each result in its step, as before.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from functools import partial

from sqlalchemy import and_, select, update

from gpucloud.clock import utcnow
from gpucloud.instances import lifecycle
from gpucloud.instances.models import Instance

log = logging.getLogger("gpucloud.lifecycle")
QUIET_BATCH = 200  # unchanged watches rescheduled in one UPDATE at the latest


class Dispatcher:
    def __init__(self, rt):
        self.rt = rt
        self.pool = rt.calls
        self._lock = threading.Lock()
        self._inflight: dict[str, str] = {}  # instance id → lease token
        self._quiet: list[lifecycle.Claim] = []
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._results: list[tuple[lifecycle.Claim, lifecycle.Apply]] = []
        self._results_ready = threading.Condition(self._lock)
        self._applier: threading.Thread | None = None
        self._backlog: list[lifecycle.Claim] = []  # claimed ahead, waiting for a slot
        self._flushed = 0.0  # when unchanged watches were last rescheduled (monotonic)

    # -- dispatch ------------------------------------------------------------------------------
    def dispatch(self, wait: bool) -> int:
        self._flush_quiet(force=wait)
        free = self.pool.free_steps()
        if free <= 0:
            return 0
        now = self.rt.clock.now()
        ready = self._from_backlog(free)
        claims: list[lifecycle.Claim] = []
        if len(ready) < free:
            # In the background, claim ahead (rows whose provider's slots are busy wait here,
            # leased, and start as slots free): one claim per batch of steps instead of one
            # per freed slot. A drain (wait=True) only takes what it can run now.
            ahead = 0 if wait else max(0, self.pool.size - self.backlog())
            claims = lifecycle._claim(self.rt, now, free - len(ready), self.pool, ahead,
                                      self._room)
        if not claims and not ready:
            return 0
        self._ensure_heartbeat()
        with self._lock:
            for c in claims:
                self._inflight[c.inst.id] = c.token
                if c.waiting:
                    self._backlog.append(c)
                else:
                    ready.append(c)
        if not wait:
            self._ensure_applier()
        claims = ready
        futures = [self.pool.submit(partial(self._run, c, now, wait)) for c in claims]
        if wait:
            for f in futures:
                f.result()
            self._flush_quiet(force=True)
        return len(claims)

    def _run(self, claim: lifecycle.Claim, now: dt.datetime, inline: bool) -> None:
        try:
            fn = lifecycle.call_step(self.rt, claim, now)
        except BaseException:
            self._done(claim)
            raise
        finally:
            if claim.slot is not None:
                claim.slot.drop()  # the provider's slot is free for its next call now
        if fn is None:
            self._done(claim)
            with self._lock:
                self._quiet.append(claim)
            return
        with self._lock:
            batched = not inline and not self._stop.is_set()
            if batched:
                self._results.append((claim, fn))
                self._results_ready.notify()
        if not batched:
            try:
                lifecycle.finish_step(self.rt, claim, fn, now)
            finally:
                self._done(claim)

    def _from_backlog(self, free: int) -> list[lifecycle.Claim]:
        """Rows claimed ahead whose provider has a free slot now (up to `free` of them)."""
        ready: list[lifecycle.Claim] = []
        with self._lock:
            keep = []
            for c in self._backlog:
                slot = self.pool.acquire(c.provider.id) if len(ready) < free else None
                if slot is None:
                    keep.append(c)
                else:
                    c.slot, c.waiting = slot, False
                    ready.append(c)
            self._backlog = keep
        return ready

    def _room(self, provider_id: str) -> int:
        """How many more rows of a busy provider may wait in the backlog: a provider's own
        slots' worth, so one slow provider never fills it and holds up the others' rows."""
        with self._lock:
            waiting = sum(1 for c in self._backlog if c.provider.id == provider_id)
        return max(0, self.pool.per_provider - waiting)

    def backlog(self) -> int:
        with self._lock:
            return len(self._backlog)

    def _done(self, claim: lifecycle.Claim) -> None:
        with self._lock:
            if self._inflight.get(claim.inst.id) == claim.token:
                del self._inflight[claim.inst.id]

    # -- results -------------------------------------------------------------------------------
    def _ensure_applier(self) -> None:
        with self._lock:
            if self._applier is None or not self._applier.is_alive():
                self._applier = threading.Thread(target=self._apply_loop, daemon=True,
                                                 name="gpucloud-lifecycle-apply")
                self._applier.start()

    def _apply_loop(self) -> None:
        while True:
            with self._lock:
                while not self._results and not self._stop.is_set():
                    self._results_ready.wait(1.0)
                batch, self._results = self._results, []
            if not batch:
                return  # stopped with nothing left
            try:
                lifecycle.apply_many(self.rt, batch)
            except Exception:  # their leases expire and the steps run again
                log.exception("could not apply %d results", len(batch))
            finally:
                for claim, _ in batch:
                    self._done(claim)
                self.rt.wake.set()  # applied rows may have new work due (a watch, a delete)

    def _flush_quiet(self, force: bool = False) -> None:
        """Reschedule unchanged watches in one UPDATE. In the background, only once enough
        have come in or a moment has passed: with 10,000 watched instances, an UPDATE per
        dispatch was a quarter of the worker's time (bench/lifecycle.py)."""
        with self._lock:
            if not self._quiet:
                return
            wall = time.monotonic()
            if not force and len(self._quiet) < QUIET_BATCH and wall - self._flushed < 0.25:
                return
            quiet, self._quiet, self._flushed = self._quiet, [], wall
        at = self.rt.clock.now() + dt.timedelta(seconds=self.rt.settings.watch_interval_seconds)
        try:
            lifecycle.reschedule_many(self.rt, quiet, at)
        except Exception:  # their leases expire and the watches simply run again
            log.exception("could not reschedule %d unchanged watches", len(quiet))

    # -- leases --------------------------------------------------------------------------------
    def _ensure_heartbeat(self) -> None:
        with self._lock:
            if self._heartbeat is None or not self._heartbeat.is_alive():
                self._heartbeat = threading.Thread(target=self._beat, daemon=True,
                                                   name="gpucloud-lease-heartbeat")
                self._heartbeat.start()

    def _beat(self) -> None:
        lease = self.rt.settings.lease_seconds
        while not self._stop.wait(max(0.05, lease / 3)):
            try:
                self.renew()
            except Exception:  # next beat tries again; the lease still has two thirds left
                log.exception("lease renewal failed")

    def renew(self) -> int:
        """Push the lease of every row whose step still runs here. Returns how many."""
        with self._lock:
            by_token: dict[str, list[str]] = {}
            for iid, token in self._inflight.items():
                by_token.setdefault(token, []).append(iid)
        if not by_token:
            return 0
        expires = utcnow() + dt.timedelta(seconds=self.rt.settings.lease_seconds)
        with self.rt.db.write() as s:
            for token, ids in by_token.items():
                mine = and_(Instance.id.in_(ids), Instance.lock_token == token)
                if not self.rt.db.is_sqlite:
                    # Never wait on a row: one that is locked is having its result applied
                    # right now (its lease is cleared at that commit), and waiting on it while
                    # holding the others could deadlock with the money paths' lock order.
                    mine = Instance.id.in_(select(Instance.id).where(mine)
                                           .with_for_update(skip_locked=True)
                                           .scalar_subquery())
                s.execute(update(Instance).where(mine).values(lock_expires_at=expires)
                          .execution_options(synchronize_session=False))
        return sum(len(ids) for ids in by_token.values())

    def busy(self) -> int:
        with self._lock:
            return len(self._inflight)

    def close(self) -> None:
        with self._lock:
            self._stop.set()
            self._results_ready.notify_all()
            backlog, self._backlog = self._backlog, []
            for c in backlog:
                self._inflight.pop(c.inst.id, None)
        applier = self._applier
        if applier is not None:
            applier.join(10)  # what has come in is applied before the process lets go
        if backlog:
            # Rows claimed ahead and never started: free them now rather than at lease expiry,
            # so another process (or this one restarted) takes them at once.
            try:
                with self.rt.db.write() as s:
                    for c in backlog:
                        s.execute(update(Instance)
                                  .where(Instance.id == c.inst.id, Instance.lock_token == c.token)
                                  .values(lock_token=None, lock_expires_at=None)
                                  .execution_options(synchronize_session=False))
            except Exception:  # their leases simply expire
                log.exception("could not release %d claimed rows", len(backlog))
