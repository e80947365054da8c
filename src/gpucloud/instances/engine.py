"""The lifecycle's dispatcher: claimed rows go to the driver-call pool, leases are renewed while
their steps run, unchanged watches are rescheduled in bulk.

One per process (`rt.dispatcher`). The background worker calls `dispatch(wait=False)`: it claims
what the pool has room for, hands it over and returns at once, so a slow provider never holds
up the loop (and billing runs on a thread of its own, workers/runner.py). The manual clock's
drain and tests call `dispatch(wait=True)`, which also waits for the steps it started.

Leases: a claim lasts `lease_seconds` of wall time. While a step runs, a heartbeat thread
pushes the expiry forward every third of that, for exactly the rows this process still works
on; when the process dies the heartbeat dies with it and the lease expires as before.
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
        futures = [self.pool.submit(partial(self._run, c, now)) for c in claims]
        if wait:
            for f in futures:
                f.result()
            self._flush_quiet()
        return len(claims)

    def _run(self, claim: lifecycle.Claim, now: dt.datetime) -> None:
        try:
            changed = lifecycle.run_step(self.rt, claim, now)
        finally:
            with self._lock:
                if self._inflight.get(claim.inst.id) == claim.token:
                    del self._inflight[claim.inst.id]
            if claim.slot is not None:
                claim.slot.drop()
        if not changed:
            with self._lock:
                self._quiet.append(claim)

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
        self._stop.set()
