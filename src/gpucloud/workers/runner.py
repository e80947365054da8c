"""The background worker: one thread per server process that runs every due step.

Steps (each claims its rows itself, so several processes can run this concurrently):
- lifecycle: provisioning, updates, terminations, watching ACTIVE workloads (instances/lifecycle)
- billing: hour boundaries, set-based in batches (billing/boundaries)
- top-up retries for reserves the account could not cover (billing/boundaries)
- reconciliation of provider workloads no instance owns (instances/reconcile)

`drain()` is what POST /admin/clock runs with a manual clock: it walks time forward from due
point to due point, so an instance that activates at 10:00:05 is charged at 10:00:05 even when
the clock is moved ten hours in one call.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from gpucloud.billing import boundaries
from gpucloud.instances import lifecycle, reconcile

log = logging.getLogger("gpucloud.worker")


def run_once(rt) -> int:
    done = lifecycle.process_due(rt)
    done += boundaries.process_due(rt)
    done += boundaries.retry_topups_due(rt)
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
                # Due now but nothing could be done (another process holds the lease):
                # don't spin; the work is that process's.
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
        self._thread: threading.Thread | None = None
        self._last_reconcile = 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gpucloud-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.rt.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        interval = self.rt.settings.worker_interval_seconds
        while not self._stop.is_set():
            # Cleared before the pass: work committed while it runs keeps the event set, so
            # the wait below returns at once instead of after a whole interval.
            self.rt.wake.clear()
            try:
                with self.rt.work_lock:
                    self.rt.clock.refresh()
                    busy = run_once(self.rt)
                    if time.monotonic() - self._last_reconcile > 60:
                        reconcile.run(self.rt)
                        self._last_reconcile = time.monotonic()
            except Exception:  # keep the worker alive; the step is retried next tick
                log.exception("worker step failed")
                busy = 0
            if not busy:
                self.rt.wake.wait(interval)
