"""Set-based statements over one batch of instances, shared by hour boundaries and top-up
retries (see `boundaries.py` for the passes and docs/billing.md for the rules).

A batch lives in a per-connection temporary table `billing_batch`: the instances taken (locked
on PostgreSQL), with what this pass decided for each (`ends`, `missing`, `topup`). Every
statement below then works on the whole batch at once — INSERT … SELECT, UPDATE … FROM,
window sums for the running `balance_after` — so a boundary for 100,000 instances is a few
dozen statements, not 100,000 transactions.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    case,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from gpucloud.accounts.models import Account
from gpucloud.billing import ledger
from gpucloud.billing.models import CHARGE, REFUND, TOPUP, LedgerEntry
from gpucloud.catalog.models import OfferZone
from gpucloud.db import NEW_WORK, PLANS_CHANGED, UTCDateTime, after_commit
from gpucloud.instances import allocations, transitions
from gpucloud.instances.models import ACTIVE, ENDED, Instance, InstanceEvent

A = Account.__table__
I = Instance.__table__
L = LedgerEntry.__table__
Z = OfferZone.__table__
E = InstanceEvent.__table__

EXHAUSTED_REASON = "Funds exhausted: the reserve could not pay the next hour"
# The set-based form of transitions.end: the same row, an event that says why.
EXHAUSTED_EVENT = "Ended by billing: funds exhausted; the unused reserve was refunded"

# Not part of the application's metadata: never migrated, created per connection.
B = Table(
    "billing_batch", MetaData(),
    Column("id", String(36), primary_key=True),
    Column("account_id", String(36)),
    Column("zone_id", BigInteger),
    Column("price", BigInteger),
    Column("reserve", BigInteger),  # the reserve when the batch was taken
    Column("period_start", UTCDateTime),  # the hour this pass charges (boundaries only)
    Column("next_until", UTCDateTime),
    Column("ends", Integer),  # 1: the reserve cannot pay the hour → the instance ends
    Column("missing", BigInteger),  # what the reserve lacks after this pass's charge
    Column("topup", BigInteger),  # what the set-based top-up moves (0: none / greedy path)
)

_DDL = """CREATE TEMPORARY TABLE IF NOT EXISTS billing_batch (
  id VARCHAR(36) PRIMARY KEY, account_id VARCHAR(36) NOT NULL, zone_id BIGINT,
  price BIGINT NOT NULL, reserve BIGINT NOT NULL, period_start {ts}, next_until {ts},
  ends INTEGER NOT NULL DEFAULT 0, missing BIGINT NOT NULL DEFAULT 0,
  topup BIGINT NOT NULL DEFAULT 0){suffix}"""

_INSERT_COLS = ["at", "account_id", "instance_id", "kind", "amount", "balance_after",
                "period_start"]


def prepare(s: Session) -> None:
    """An empty batch table on this transaction's connection."""
    if s.get_bind().dialect.name == "postgresql":
        # The batch's sorts and window sums (running balance_after) over tens of thousands of
        # rows spill to disk at PostgreSQL's stock 4 MB: measured 13.7 s → 9.3 s for one
        # boundary of 100,000 instances. Local to this transaction.
        s.execute(text("SET LOCAL work_mem = '64MB'"))
        # Rows vanish at commit; the table itself is reused by the pooled connection.
        s.execute(text(_DDL.format(ts="TIMESTAMP", suffix=" ON COMMIT DELETE ROWS")))
    else:
        s.execute(text(_DDL.format(ts="TEXT", suffix="")))
    s.execute(B.delete())


def _count(s: Session, *where) -> int:
    # Not `rowcount`: psycopg reports -1 for INSERT … SELECT through SQLAlchemy here.
    return s.execute(select(func.count()).select_from(B).where(*where)).scalar_one()


def _is_pg(s: Session) -> bool:
    return s.get_bind().dialect.name == "postgresql"


def fill_due(s: Session, now: dt.datetime, limit: int) -> int:
    """Take up to `limit` ACTIVE instances whose next boundary has passed, oldest boundary
    first. On PostgreSQL rows another worker holds are skipped, so two workers split the
    work instead of queueing on it."""
    price, reserve = I.c.price_hour, I.c.reserve
    ends = case((reserve < price, 1), else_=0)
    # After the charge the reserve is `reserve - price`; the target is 2 × price.
    missing = case((reserve < price, 0),
                   (reserve - price < ledger.RESERVE_HOURS * price,
                    ledger.RESERVE_HOURS * price - (reserve - price)), else_=0)
    cols = [I.c.id, I.c.account_id, I.c.zone_id, price, reserve, I.c.billed_until, ends, missing]
    names = ["id", "account_id", "zone_id", "price", "reserve", "period_start", "ends", "missing"]
    if _is_pg(s):  # the next boundary in the same pass (SQLite: `set_next_until`)
        cols.append(I.c.billed_until + literal_column("interval '1 hour'"))
        names.append("next_until")
    # Ordered by the boundary first: that keeps an instance's missed hours in order. Then by
    # account, so one account's instances land in the same batch: each batch updates and
    # locks an account once, and parallel batches (`boundaries.process_due`) rarely share one.
    due = (select(*cols).where(I.c.status == ACTIVE, I.c.billed_until <= now)
           .order_by(I.c.billed_until, I.c.account_id).limit(limit)
           .with_for_update(skip_locked=True))
    s.execute(insert(B).from_select(names, due))
    return _count(s)


def fill_short(s: Session, limit: int) -> int:
    """Take ACTIVE instances whose reserve is short and whose account could cover that one
    instance now (the others cannot be helped), grouped by account."""
    short = ledger.RESERVE_HOURS * I.c.price_hour - I.c.reserve
    rows = (select(I.c.id, I.c.account_id, I.c.zone_id, I.c.price_hour, I.c.reserve,
                   I.c.billed_until, literal(0), short)
            .join_from(I, A, A.c.id == I.c.account_id)
            .where(I.c.status == ACTIVE, short > 0, A.c.balance >= short)
            .order_by(I.c.account_id, I.c.created_at, I.c.id).limit(limit)
            .with_for_update(skip_locked=True, of=I))
    s.execute(insert(B).from_select(
        ["id", "account_id", "zone_id", "price", "reserve", "period_start", "ends", "missing"],
        rows))
    return _count(s)


def analyze(s: Session) -> None:
    """PostgreSQL plans the joins below from statistics, and a fresh temporary table has
    none (autovacuum never sees it): without this, account updates take nested loops."""
    if _is_pg(s):
        s.execute(text("ANALYZE billing_batch"))


_LOCK_OR_DEFER = text("""
WITH locked AS (
  SELECT id FROM accounts WHERE id IN (SELECT account_id FROM billing_batch)
  ORDER BY id FOR UPDATE SKIP LOCKED)
DELETE FROM billing_batch WHERE account_id NOT IN (SELECT id FROM locked)""")


def lock_accounts(s: Session) -> int:
    """PostgreSQL: lock the batch's accounts before reading any balance, so the decisions and
    every `balance_after` below see balances nobody else is moving. An account another
    transaction holds (a parallel batch, a deploy, a deposit) is skipped, never waited for,
    and its instances leave this batch: they stay due, still locked by us until commit, and
    the next batch takes them again. Never waiting here is what lets batches run side by side
    without deadlocks, whatever order the other paths lock in. Returns how many instances
    were deferred. SQLite's write transaction already excludes every other writer."""
    if not _is_pg(s):
        return 0
    before = _count(s)
    s.execute(_LOCK_OR_DEFER)
    return before - _count(s)


def set_next_until(s: Session) -> None:
    """SQLite: billed_until + 1 hour. A timestamp is text there, and date arithmetic in SQL
    would change its format (the unique (instance, period_start) constraint compares those
    strings), so the value is bound from Python per distinct hour — a batch holds one, or a
    few after downtime. PostgreSQL computed it exactly in `fill_due`."""
    if _is_pg(s):
        return
    for (start,) in s.execute(select(B.c.period_start).distinct()).all():
        s.execute(update(B).where(B.c.period_start == start)
                  .values(next_until=start + ledger.HOUR))


def _order():
    return (B.c.period_start, B.c.id)


def insert_charges(s: Session, now: dt.datetime) -> None:
    rows = (select(literal(now, UTCDateTime()), B.c.account_id, B.c.id, literal(CHARGE),
                   B.c.price, A.c.balance, B.c.period_start)
            .join_from(B, A, A.c.id == B.c.account_id).where(B.c.ends == 0)
            .order_by(*_order()))
    s.execute(insert(L).from_select(_INSERT_COLS, rows))


def apply_charges(s: Session) -> None:
    """One UPDATE per batch: charge the hour, move the boundary, add the decided top-up.
    The accounts' side (balance and running totals) moves in `write_topups(charged=True)`."""
    s.execute(update(I).where(I.c.id == B.c.id, B.c.ends == 0).values(
        reserve=I.c.reserve - B.c.price + B.c.topup, spent=I.c.spent + B.c.price,
        billed_until=B.c.next_until))


def end_exhausted(s: Session, now: dt.datetime) -> int:
    """Instances whose reserve cannot pay the hour: ENDED, reserve refunded, capacity
    released, the workload handed to the lifecycle worker for deletion at the provider."""
    ended = _count(s, B.c.ends == 1)
    if not ended:
        return 0
    running = func.sum(B.c.reserve).over(partition_by=B.c.account_id, order_by=_order(),
                                         rows=(None, 0))
    refunds = (select(literal(now, UTCDateTime()), B.c.account_id, B.c.id, literal(REFUND),
                      B.c.reserve, A.c.balance + running, literal(None, UTCDateTime()))
               .join_from(B, A, A.c.id == B.c.account_id)
               .where(B.c.ends == 1, B.c.reserve > 0).order_by(*_order()))
    s.execute(insert(L).from_select(_INSERT_COLS, refunds))
    per_account = (select(B.c.account_id, func.sum(B.c.reserve).label("amount"))
                   .where(B.c.ends == 1, B.c.reserve > 0).group_by(B.c.account_id).subquery())
    s.execute(update(A).where(A.c.id == per_account.c.account_id)
              .values(balance=A.c.balance + per_account.c.amount,
                      reserved=A.c.reserved - per_account.c.amount))
    ended_ids = select(B.c.id).where(B.c.ends == 1)
    # The row of transitions.end (closed_columns clears the lease: a lifecycle step in flight
    # on this row drops its result instead of overwriting the ENDED state).
    s.execute(update(I).where(I.c.id.in_(ended_ids)).values(
        reserve=0, **transitions.closed_columns(ENDED, EXHAUSTED_REASON, now)))
    after_commit(s, PLANS_CHANGED)
    after_commit(s, NEW_WORK)
    s.execute(insert(E).from_select(
        ["instance_id", "at", "message"],
        select(B.c.id, literal(now, UTCDateTime()), literal(EXHAUSTED_EVENT))
        .where(B.c.ends == 1).order_by(*_order())))
    if _is_pg(s):
        # Zones are shared between batches running side by side: each takes the ones it
        # releases capacity in, in id order, so two of them can queue here but never deadlock.
        s.execute(select(Z.c.id).where(Z.c.id.in_(select(B.c.zone_id).where(B.c.ends == 1)))
                  .order_by(Z.c.id).with_for_update()).all()
    per_zone = (select(B.c.zone_id, func.count().label("n")).where(B.c.ends == 1)
                .group_by(B.c.zone_id).subquery())
    s.execute(update(Z).where(Z.c.id == per_zone.c.zone_id)
              .values(in_use=case((Z.c.in_use >= per_zone.c.n, Z.c.in_use - per_zone.c.n),
                                  else_=0)))  # never below zero, like release_capacity
    # After the zones: a machine-backed offer's capacity is re-derived from in_use there.
    allocations.release(s, ended_ids)
    return ended


def decide_topups(s: Session) -> None:
    """Set-based top-up for every account that covers ALL its short batch instances (the
    common case); the others go through the greedy path (`greedy_topups`)."""
    covering = (select(B.c.account_id).join_from(B, A, A.c.id == B.c.account_id)
                .group_by(B.c.account_id, A.c.balance)
                .having(and_(func.sum(B.c.ends) == 0, func.sum(B.c.missing) <= A.c.balance)))
    s.execute(update(B).where(B.c.missing > 0, B.c.account_id.in_(covering))
              .values(topup=B.c.missing))


def apply_topups(s: Session) -> None:
    s.execute(update(I).where(I.c.id == B.c.id, B.c.topup > 0)
              .values(reserve=I.c.reserve + B.c.topup))


def write_topups(s: Session, now: dt.datetime, charged: bool = False) -> int:
    """Ledger entries (running balance per account) and the balances for decided top-ups,
    with the accounts' running totals. `charged`: this batch also charged its rows that did
    not end (an hour boundary, not a retry); their charges move `reserved` into `spent` in
    the same UPDATE, so each account row is written once per batch."""
    running = func.sum(B.c.topup).over(partition_by=B.c.account_id, order_by=_order(),
                                       rows=(None, 0))
    rows = (select(literal(now, UTCDateTime()), B.c.account_id, B.c.id, literal(TOPUP),
                   B.c.topup, A.c.balance - running, literal(None, UTCDateTime()))
            .join_from(B, A, A.c.id == B.c.account_id).where(B.c.topup > 0)
            .order_by(*_order()))
    s.execute(insert(L).from_select(_INSERT_COLS, rows))
    done = _count(s, B.c.topup > 0)
    if charged:
        per_account = (select(B.c.account_id, func.sum(B.c.topup).label("amount"),
                              func.sum(B.c.price).label("charged"))
                       .where(B.c.ends == 0).group_by(B.c.account_id).subquery())
        s.execute(update(A).where(A.c.id == per_account.c.account_id).values(
            balance=A.c.balance - per_account.c.amount,
            reserved=A.c.reserved + per_account.c.amount - per_account.c.charged,
            spent=A.c.spent + per_account.c.charged))
        return done
    per_account = (select(B.c.account_id, func.sum(B.c.topup).label("amount"))
                   .where(B.c.topup > 0).group_by(B.c.account_id).subquery())
    s.execute(update(A).where(A.c.id == per_account.c.account_id)
              .values(balance=A.c.balance - per_account.c.amount,
                      reserved=A.c.reserved + per_account.c.amount))
    return done


def greedy_topups(s: Session, now: dt.datetime) -> int:
    """The rare path: accounts that ended an instance in this batch (their balance grew, so
    short instances outside the batch may now be coverable) or could not cover all their
    batch instances. Each goes through `ledger.retry_topups` (oldest instance first, as far
    as the balance reaches) — but only if some short instance of it fits the balance."""
    candidates = s.scalars(select(B.c.account_id).group_by(B.c.account_id)
                           .having(or_(func.sum(B.c.ends) > 0,
                                       func.sum(B.c.topup) < func.sum(B.c.missing)))).all()
    if not candidates:
        return 0
    short = ledger.RESERVE_HOURS * I.c.price_hour - I.c.reserve
    fixable = s.scalars(
        select(I.c.account_id).distinct().join_from(I, A, A.c.id == I.c.account_id)
        .where(I.c.account_id.in_(candidates), I.c.status == ACTIVE, short > 0,
               short <= A.c.balance)
        .order_by(I.c.account_id)).all()
    return sum(ledger.retry_topups(s, account_id, now) for account_id in fixable)
