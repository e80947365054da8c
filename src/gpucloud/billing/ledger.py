"""Single-instance money movements. Each function writes the ledger entry in the caller's
transaction, together with the balance/reserve change it records, and never commits.

Concurrency rules (several server processes on one PostgreSQL database):
- Balances move only through conditional UPDATEs (`balance >= amount`) with RETURNING, so two
  concurrent requests can never overdraw an account and `balance_after` is exact.
- Before an instance's reserve moves, its row is locked and its money columns re-read
  (`_lock`): an Instance object loaded earlier in the transaction may be stale (an hour
  boundary may have charged it meanwhile), and writing a stale reserve back would create or
  destroy money.
- Lock order is instance → account everywhere, except paths that start from the account
  (deposit, refund → `retry_topups`): those take instance rows with SKIP LOCKED and never
  wait on them, so the two orders cannot deadlock. A skipped instance is topped up by whoever
  holds it, or by the periodic retry (`boundaries.retry_topups_due`).
Set-based processing of hour boundaries for many instances lives in `boundaries.py`.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import bindparam, insert, inspect, select, text, update
from sqlalchemy.orm import Session

from gpucloud.accounts.models import Account
from gpucloud.billing.models import CHARGE, DEPOSIT, REFUND, RESERVE, TOPUP, LedgerEntry
from gpucloud.clock import floor_hour
from gpucloud.db import plausible_id
from gpucloud.errors import INSUFFICIENT_BALANCE, BadRequest, NotFound
from gpucloud.instances.models import ACTIVE, Instance

HOUR = dt.timedelta(hours=1)
UPFRONT_HOURS = 3
RESERVE_HOURS = 2  # what the reserve is topped back up to while ACTIVE
_MONEY_COLUMNS = ["status", "reserve", "spent", "billed_until"]


# Built once: deploy and every money movement run these, and building a statement per call
# (plus its cache key) cost more than executing it.
_INSERT_ENTRY = insert(LedgerEntry.__table__)
# Each statement that moves an instance's reserve or spend moves the account's running totals
# (`reserved`, `spent`) by the same amount, on the row it already updates or locks.
_DEBIT = text("UPDATE accounts SET balance = balance - :amount, reserved = reserved + :amount "
              "WHERE id = :id AND balance >= :amount RETURNING balance")
_CHARGE = text("UPDATE accounts SET reserved = reserved - :amount, spent = spent + :amount "
               "WHERE id = :id RETURNING balance")


# PostgreSQL: the debit and its ledger entry in one statement. A deploy holds its account's row
# from the debit to its commit, so every round trip after the debit is time the account's
# other deploys wait; the entry rides on the UPDATE's RETURNING instead of following it.
# (SQLite has no UPDATE inside WITH, and one writer at a time anyway.)
_DEBIT_WITH_ENTRY = text(
    "WITH moved AS (UPDATE accounts SET balance = balance - :amount, "
    "reserved = reserved + :amount WHERE id = :id AND balance >= :amount RETURNING balance) "
    "INSERT INTO ledger_entries (at, account_id, instance_id, kind, amount, balance_after) "
    "SELECT :at, :id, :instance_id, :kind, :amount, balance FROM moved RETURNING balance_after"
).bindparams(bindparam("at", type_=LedgerEntry.at.type))


def _entry(s: Session, *, at, account_id, kind, amount, balance_after, instance_id=None,
           period_start=None) -> None:
    s.connection().execute(_INSERT_ENTRY, {
        "at": at, "account_id": account_id, "instance_id": instance_id, "kind": kind,
        "amount": amount, "balance_after": balance_after, "period_start": period_start})


_HELD = "gpucloud.ledger.held"


def held(s: Session, instance: Instance) -> None:
    """The caller loaded `instance` in this transaction with a locking SELECT (or under
    SQLite's single writer): its money columns are fresh and stay so until commit, so
    `_lock` need not read them again. The lifecycle's apply marks the rows it locked; for a
    thousand activations the re-reads were a third of the statements."""
    s.info.setdefault(_HELD, set()).add(instance.id)


def _lock(s: Session, instance: Instance) -> None:
    """Lock the instance row and reload its money columns (see the module docstring).
    Pending changes are flushed first so the reload cannot discard them."""
    if instance.id in s.info.get(_HELD, ()):
        return
    if inspect(instance).persistent:
        s.flush()
        s.refresh(instance, attribute_names=_MONEY_COLUMNS, with_for_update=True)


def deposit(s: Session, account_id: str, amount: int, now: dt.datetime) -> int:
    if amount <= 0:
        raise BadRequest("Deposit amount must be positive")
    new_balance = s.execute(
        update(Account).where(Account.id == account_id)
        .values(balance=Account.balance + amount).returning(Account.balance)
    ).scalar_one_or_none() if plausible_id(account_id) else None
    if new_balance is None:
        raise NotFound("Account not found")
    _entry(s, at=now, account_id=account_id, kind=DEPOSIT, amount=amount,
           balance_after=new_balance)
    s.flush()
    retry_topups(s, account_id, now)
    return new_balance


def debit_to_reserve(s: Session, instance: Instance, amount: int, now: dt.datetime,
                     kind: str = RESERVE) -> bool:
    """Move `amount` from the account into the instance's reserve if the account holds it all.
    The caller holds the instance row (new instance, `_lock`, or a locking select)."""
    if inspect(instance).pending:
        s.flush()  # a new ORM instance gets its id (and row) before entries name it
    conn = s.connection()
    if conn.dialect.name == "postgresql":
        moved = conn.execute(_DEBIT_WITH_ENTRY, {
            "amount": amount, "id": instance.account_id, "at": now,
            "instance_id": instance.id, "kind": kind}).scalar_one_or_none() is not None
    else:
        new_balance = conn.execute(
            _DEBIT, {"amount": amount, "id": instance.account_id}).scalar_one_or_none()
        moved = new_balance is not None
        if moved:
            _entry(s, at=now, account_id=instance.account_id, instance_id=instance.id,
                   kind=kind, amount=amount, balance_after=new_balance)
    if moved:
        instance.reserve += amount
    return moved


def reserve_upfront(s: Session, instance: Instance, now: dt.datetime) -> None:
    """Deploy: `upfront_hours × hour` from the balance into the reserve, or a 400.
    `instance` is new (not yet visible to anyone else), so no row lock is needed."""
    if instance.reserve is None:
        instance.reserve = 0
    if not debit_to_reserve(s, instance, UPFRONT_HOURS * instance.price_hour, now, RESERVE):
        raise BadRequest(INSUFFICIENT_BALANCE)


def charge_hour(s: Session, instance: Instance, period_start: dt.datetime,
                now: dt.datetime) -> None:
    """Reserve → spent for one hour. The unique (instance, period) constraint makes a second
    charge for the same hour fail the whole transaction instead of taking money twice."""
    _lock(s, instance)
    price = instance.price_hour
    if instance.reserve < price:
        raise ValueError("the reserve does not cover the hour; the caller must end the instance")
    instance.reserve -= price
    instance.spent += price
    instance.billed_until = period_start + HOUR
    # The UPDATE also locks the account row, so no other movement interleaves before our entry
    # is written (keeps each account's `balance_after` sequence exact in id order).
    balance = s.connection().execute(
        _CHARGE, {"amount": price, "id": instance.account_id}).scalar_one()
    _entry(s, at=now, account_id=instance.account_id, instance_id=instance.id, kind=CHARGE,
           amount=price, balance_after=balance, period_start=period_start)
    s.flush()


def activate(s: Session, instance: Instance, now: dt.datetime) -> None:
    """Activation charges the current (partial) UTC hour; the reserve keeps the rest."""
    charge_hour(s, instance, floor_hour(now), now)
    topup(s, instance, now)


def refund_reserve(s: Session, instance: Instance, now: dt.datetime) -> int:
    """The whole remaining reserve back to the account (failure, termination, exhaustion).
    Safe to call twice: the second call finds an empty reserve and does nothing."""
    _lock(s, instance)
    amount = instance.reserve
    if amount <= 0:
        return 0
    new_balance = s.execute(
        update(Account).where(Account.id == instance.account_id)
        .values(balance=Account.balance + amount, reserved=Account.reserved - amount)
        .returning(Account.balance)
    ).scalar_one()
    instance.reserve = 0
    _entry(s, at=now, account_id=instance.account_id, instance_id=instance.id, kind=REFUND,
           amount=amount, balance_after=new_balance)
    s.flush()
    retry_topups(s, instance.account_id, now, exclude=instance.id)
    return amount


def missing_reserve(instance: Instance) -> int:
    return max(0, RESERVE_HOURS * instance.price_hour - instance.reserve)


def topup(s: Session, instance: Instance, now: dt.datetime) -> bool:
    """Top the reserve up to two hours if the account covers the whole missing amount."""
    _lock(s, instance)
    missing = missing_reserve(instance)
    if missing == 0:
        return True
    done = debit_to_reserve(s, instance, missing, now, TOPUP)
    s.flush()
    return done


def retry_topups(s: Session, account_id: str, now: dt.datetime, exclude: str | None = None) -> int:
    """After the balance grew (deposit, refund): top up every ACTIVE instance of the account
    whose reserve is short, oldest first, as far as the balance reaches."""
    rows = s.scalars(
        select(Instance)
        .where(Instance.account_id == account_id, Instance.status == ACTIVE,
               Instance.reserve < RESERVE_HOURS * Instance.price_hour)
        .order_by(Instance.created_at, Instance.id)
        # Fresh values for objects already in the session; never wait on a row another
        # transaction holds (see the module docstring).
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).all()
    done = 0
    for inst in rows:
        if inst.id == exclude:
            continue
        missing = missing_reserve(inst)
        if missing and debit_to_reserve(s, inst, missing, now, TOPUP):
            done += 1
    if rows:
        s.flush()
    return done
