"""Hour boundaries and top-up retries for every ACTIVE instance, set-based and in batches.

A pass takes the ACTIVE instances whose `billed_until` (the next boundary) has passed,
ordered by (billed_until, id), `billing_batch_size` at a time, ONE transaction per batch, and
processes one boundary for each: charge the hour from the reserve, or end the instance when
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
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gpucloud.billing import batch_sql as q
from gpucloud.instances.models import ACTIVE, Instance

log = logging.getLogger("gpucloud.billing")


@dataclass(frozen=True)
class BatchResult:
    processed: int  # instances whose boundary was processed (charged or ended)
    ended: int  # of which ended for lack of funds


def process_batch(s: Session, now: dt.datetime, limit: int) -> BatchResult:
    """One batch of due boundaries in the caller's transaction."""
    q.prepare(s)
    taken = q.fill_due(s, now, limit)
    if taken == 0:
        return BatchResult(0, 0)
    q.analyze(s)
    q.lock_accounts(s)
    q.set_next_until(s)
    q.insert_charges(s, now)
    ended = q.end_exhausted(s, now)
    q.decide_topups(s)
    q.apply_charges(s)
    q.write_topups(s, now)
    q.greedy_topups(s, now)
    return BatchResult(taken, ended)


def process_due(rt) -> int:
    """Every boundary due at the server clock's now, batch after batch. Returns how many
    instance-boundaries were processed."""
    now = rt.clock.now()
    total = 0
    while True:
        with rt.db.write() as s:
            result = process_batch(s, now, rt.settings.billing_batch_size)
        if result.ended:
            rt.invalidate("plans")  # capacity was released
            log.info("billing ended %d instance(s) for lack of funds", result.ended)
        if result.processed == 0:
            return total
        total += result.processed


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
    q.analyze(s)
    q.lock_accounts(s)
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
