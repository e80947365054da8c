"""Hour boundaries and top-up retries for every ACTIVE instance, set-based and in batches.

A pass takes the ACTIVE instances whose `billed_until` (the next boundary) has passed,
ordered by (billed_until, account_id), `billing_batch_size` at a time, ONE transaction per
batch (on PostgreSQL `billing_parallel` batches side by side), and processes one boundary for
each: charge the hour from the reserve, or end the instance when
the reserve cannot pay it; then top reserves back up to two hours. An instance several hours
behind (the server was down) gets one boundary per batch and is taken again by the next
batch, so missed boundaries are processed in order, each exactly once.

Exactly once, across crashes and processes: the charge and `billed_until += 1h` commit
together, so a batch either happened or not; PostgreSQL workers take disjoint batches
(`FOR UPDATE SKIP LOCKED`); SQLite's write transaction serializes them; and the unique
constraint on (instance_id, period_start) refuses a second charge for an hour whatever
happens.

Invariant kept for every ACTIVE instance (checked by tests/test_billing_property.py):
reserve == 2 × price, or the account's balance < 2 × price − reserve (it could not be
topped up). It can lapse only while another transaction holds the row; the periodic retry
(`retry_topups_due`) restores it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gpucloud.billing import batch_sql as q
from gpucloud.instances.models import ACTIVE, Instance

log = logging.getLogger("gpucloud.billing")
DEFER_PAUSE_SECONDS = 0.02


@dataclass(frozen=True)
class BatchResult:
    taken: int  # due instances the batch took
    processed: int  # of which had their boundary processed (charged or ended)
    ended: int  # of which ended for lack of funds
    # taken - processed were deferred: their account was held elsewhere (lock_accounts)


def process_batch(s: Session, now: dt.datetime, limit: int) -> BatchResult:
    """One batch of due boundaries in the caller's transaction."""
    q.prepare(s)
    taken = q.fill_due(s, now, limit)
    if taken == 0:
        return BatchResult(0, 0, 0)
    deferred = q.lock_accounts(s)
    if deferred == taken:
        return BatchResult(taken, 0, 0)
    q.analyze(s)
    q.set_next_until(s)
    q.insert_charges(s, now)
    ended = q.end_exhausted(s, now)
    q.decide_topups(s)
    q.apply_charges(s)
    q.write_topups(s, now, charged=True)
    q.greedy_topups(s, now)
    return BatchResult(taken, taken - deferred, ended)


def process_due(rt) -> int:
    """Every boundary due at the server clock's now, batch after batch. Returns how many
    instance-boundaries were processed.

    On PostgreSQL, when more than one batch is due, `billing_parallel` threads drain them side
    by side, each batch in its own transaction on its own connection: one backend per core
    instead of one core for the whole boundary. They cannot take the same instance (SKIP
    LOCKED) or wait on each other's accounts (`lock_accounts` defers)."""
    now = rt.clock.now()
    limit = rt.settings.billing_batch_size
    workers = 1 if rt.db.is_sqlite else rt.settings.billing_parallel
    if workers == 1 or not _more_than_one_batch(rt, now, limit):
        return _drain(rt, now, limit)
    with ThreadPoolExecutor(workers - 1, thread_name_prefix="billing") as pool:
        others = [pool.submit(_drain, rt, now, limit) for _ in range(workers - 1)]
        total = _drain(rt, now, limit)
        return total + sum(f.result() for f in others)


def _more_than_one_batch(rt, now: dt.datetime, limit: int) -> bool:
    with rt.db.read() as s:
        return s.execute(select(Instance.id).where(Instance.status == ACTIVE,
                                                   Instance.billed_until <= now)
                         .offset(limit).limit(1)).first() is not None


def _run_batch(rt, now: dt.datetime, limit: int) -> BatchResult:
    with rt.db.write() as s:
        result = process_batch(s, now, limit)
    if result.ended:  # capacity released: the plans cache hears of it after commit
        log.info("billing ended %d instance(s) for lack of funds", result.ended)
    return result


def _drain(rt, now: dt.datetime, limit: int) -> int:
    """Batches until none is due. A batch whose accounts were all held elsewhere is tried
    again after a short pause: like a lock wait, but one that cannot deadlock."""
    total = 0
    while True:
        result = _run_batch(rt, now, limit)
        if result.taken == 0:
            return total
        total += result.processed
        if result.processed == 0:
            # Everything this batch took belongs to accounts held elsewhere for the moment
            # (a parallel batch, a deposit): give the holder time to commit.
            time.sleep(DEFER_PAUSE_SECONDS)


def next_due(rt) -> dt.datetime | None:
    """The earliest boundary still to process (None: no ACTIVE instance)."""
    with rt.db.read() as s:
        return s.scalar(select(func.min(Instance.billed_until))
                        .where(Instance.status == ACTIVE))


def retry_batch(s: Session, now: dt.datetime, limit: int) -> tuple[int, int]:
    """Top up short reserves their accounts can now cover. Returns (taken, topped up)."""
    q.prepare(s)
    taken = q.fill_short(s, limit)
    if taken == 0:
        return 0, 0
    if q.lock_accounts(s) == taken:
        return taken, 0
    q.analyze(s)
    q.decide_topups(s)
    q.apply_topups(s)
    return taken, q.write_topups(s, now) + q.greedy_topups(s, now)


def retry_topups_due(rt) -> int:
    """Retry top-ups that failed for lack of balance, at most every `topup_retry_seconds` of
    server-clock time (deposits retry at once through `ledger.deposit`). Returns how many
    reserves were topped up."""
    now = rt.clock.now()
    state = rt.caches.setdefault("topup_retry", {})
    last = state.get("last")
    if last is not None and now - last < dt.timedelta(seconds=rt.settings.topup_retry_seconds):
        return 0
    state["last"] = now
    total = 0
    while True:
        with rt.db.write() as s:
            taken, done = retry_batch(s, now, rt.settings.billing_batch_size)
        total += done
        # Stop when nothing moved: what is left is short because its account is.
        if taken == 0 or done == 0:
            return total
