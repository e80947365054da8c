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
from functools import partial

from sqlalchemy import and_, select, update

from gpucloud.clock import utcnow
from gpucloud.instances import lifecycle
from gpucloud.instances.models import Instance

log = logging.getLogger("gpucloud.lifecycle")


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

    # -- dispatch ------------------------------------------------------------------------------
    def dispatch(self, wait: bool) -> int:
        self._flush_quiet()
        free = self.pool.free_steps()
        if free <= 0:
            return 0
        now = self.rt.clock.now()
        claims = lifecycle._claim(self.rt, now, free, self.pool)
        if not claims:
            return 0
        self._ensure_heartbeat()
        with self._lock:
            for c in claims:
                self._inflight[c.inst.id] = c.token
        if not wait:
            self._ensure_applier()
        futures = [self.pool.submit(partial(self._run, c, now, wait)) for c in claims]
        if wait:
            for f in futures:
                f.result()
            self._flush_quiet()
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

    def _flush_quiet(self) -> None:
        with self._lock:
            quiet, self._quiet = self._quiet, []
        if not quiet:
            return
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
        applier = self._applier
        if applier is not None:
            applier.join(10)  # what has come in is applied before the process lets go
