"""The background workers of a server process, each on a thread of its own:

- lifecycle: provisioning, updates, terminations, watching ACTIVE workloads
  (instances/lifecycle). It only claims rows and hands them to the driver-call pool
  (instances/engine.py), so it never waits for a provider;
- billing: hour boundaries, set-based in batches, and top-up retries (billing/boundaries). It
  never calls a driver and never waits for the lifecycle: a slow provider cannot delay a charge;
- reconciliation of provider workloads no instance owns (instances/reconcile), once a minute.

Every step claims its rows itself, so several processes can run them concurrently.

`drain()` is what POST /admin/clock runs with a manual clock: it walks time forward from due
point to due point, so an instance that activates at 10:00:05 is charged at 10:00:05 even when
the clock is moved ten hours in one call.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from gpucloud.billing import boundaries
from gpucloud.instances import lifecycle, reconcile

log = logging.getLogger("gpucloud.worker")
RECONCILE_SECONDS = 60.0


def run_billing(rt) -> int:
    return boundaries.process_due(rt) + boundaries.retry_topups_due(rt)


def run_once(rt) -> int:
    # Billing first: the boundary of this instant is charged before the lifecycle waits for
    # any provider.
    done = run_billing(rt)
    done += lifecycle.process_due(rt)
    return done


def next_due(rt) -> dt.datetime | None:
    candidates = [t for t in (lifecycle.next_due(rt), boundaries.next_due(rt)) if t is not None]
    return min(candidates) if candidates else None


def drain(rt, target: dt.datetime, max_steps: int = 100_000) -> dt.datetime:
    """Advance the manual clock to `target`, running every step due on the way, in order."""
    with rt.work_lock:
        rt.clock.refresh()
        for _ in range(max_steps):
            run_once(rt)
            due = next_due(rt)
            if due is None or due > target:
                break
            if due > rt.clock.now():
                rt.clock.set(due)
            elif run_once(rt) == 0:
                # Due now but nothing could be done (another process holds the lease, or
                # the provider's slots are busy): don't spin; the work is already under way.
                break
        if target > rt.clock.now():
            rt.clock.set(target)
        while run_once(rt):
            pass
        return rt.clock.now()


class BackgroundWorker:
    def __init__(self, rt):
        self.rt = rt
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for name, loop in (("lifecycle", self._lifecycle), ("billing", self._billing),
                           ("reconcile", self._reconcile)):
            thread = threading.Thread(target=loop, name=f"gpucloud-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.rt.wake.set()
        for thread in self._threads:
            thread.join(timeout)

    def _lifecycle(self) -> None:
        interval = self.rt.settings.worker_interval_seconds
        while not self._stop.is_set():
            # Cleared before the pass: work committed (or a slot freed) while it runs keeps
            # the event set, so the wait below returns at once instead of after an interval.
            self.rt.wake.clear()
            try:
                with self.rt.work_lock:  # not while a manual-clock drain walks the clock
                    self.rt.clock.refresh()
                    busy = self.rt.dispatcher.dispatch(wait=False)
            except Exception:  # keep the worker alive; the step is retried next tick
                log.exception("lifecycle dispatch failed")
                busy = 0
            if not busy:
                self.rt.wake.wait(interval)

    def _billing(self) -> None:
        """Not under `work_lock`: a drain waiting for a provider must not delay a boundary,
        and billing is safe to run beside it (rows are claimed, each hour charged once)."""
        interval = self.rt.settings.worker_interval_seconds
        while not self._stop.is_set():
            try:
                self.rt.clock.refresh()
                busy = run_billing(self.rt)
            except Exception:
                log.exception("billing step failed")
                busy = 0
            if not busy:
                self._stop.wait(interval)

    def _reconcile(self) -> None:
        """At start (what a crash left behind is cleaned up first), then every minute."""
        while True:
            try:
                reconcile.run(self.rt)
            except Exception:
                log.exception("reconciliation failed")
            if self._stop.wait(RECONCILE_SECONDS):
                return
