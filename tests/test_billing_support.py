"""Helpers for the billing tests (no tests here): rows built directly in the database the way
deploy and activation build them (through billing/ledger.py), and the money checks every
billing test runs — conservation, derivability from the ledger, the top-up invariant."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from sqlalchemy import func, select

from gpucloud.accounts.models import Account
from gpucloud.billing import ledger
from gpucloud.billing.models import CHARGE, DEPOSIT, REFUND, RESERVE, TOPUP, LedgerEntry
from gpucloud.catalog.models import Offer, OfferZone, Provider
from gpucloud.instances.models import ACTIVE, INITIALIZED, Instance
from gpucloud.money import to_micro


def seed_catalog(rt, price="1.5", capacity=1000) -> dict:
    now = rt.clock.now()
    with rt.db.write() as s:
        provider = Provider(name=f"sim-{price}", driver="simulated", config={}, created_at=now)
        s.add(provider)
        s.flush()
        offer = Offer(provider_id=provider.id, workload="container", gpu_vendor="nvidia",
                      gpu_model="h100", gpu_vram="80Gi", gpu_interface="SXM", gpu_count=1,
                      vcpu=16, memory_gib=128, storage_gib=200, price_hour=to_micro(price),
                      created_at=now)
        s.add(offer)
        s.flush()
        zone = OfferZone(offer_id=offer.id, country="US", capacity=capacity, in_use=0)
        s.add(zone)
        s.flush()
        return {"provider_id": provider.id, "offer_id": offer.id, "zone_id": zone.id,
                "price": offer.price_hour}


def make_account(rt, balance="100", name="acct") -> str:
    now = rt.clock.now()
    with rt.db.write() as s:
        account = Account(name=name, balance=0, created_at=now)
        s.add(account)
        s.flush()
        if to_micro(balance) > 0:
            ledger.deposit(s, account.id, to_micro(balance), now)
        return account.id


def deploy_row(rt, account_id: str, cat: dict, activate: bool = True) -> str:
    """What deploy + activation do to money: 3 hours reserved, then the current hour charged."""
    now = rt.clock.now()
    with rt.db.write() as s:
        inst = Instance(account_id=account_id, offer_id=cat["offer_id"], zone_id=cat["zone_id"],
                        provider_id=cat["provider_id"], workload="container", name="box",
                        status=INITIALIZED, location="US", resources={},
                        price_hour=cat["price"], reserve=0, spent=0, created_at=now,
                        updated_at=now)
        s.add(inst)
        ledger.reserve_upfront(s, inst, now)
        s.execute(OfferZone.__table__.update().where(OfferZone.id == cat["zone_id"])
                  .values(in_use=OfferZone.in_use + 1))
        s.flush()
        if activate:
            inst.status = ACTIVE
            inst.activated_at = now
            ledger.activate(s, inst, now)
        return inst.id


def credit_without_retry(rt, account_id: str, amount: int) -> None:
    """A deposit whose immediate top-up retry did not reach an instance (on PostgreSQL: the
    row was held by another transaction and skipped) — left to the periodic retry."""
    with rt.db.write() as s:
        account = s.get(Account, account_id)
        account.balance += amount
        s.add(LedgerEntry(at=rt.clock.now(), account_id=account_id, kind=DEPOSIT,
                          amount=amount, balance_after=account.balance))


def instance(rt, instance_id: str) -> Instance:
    with rt.db.read() as s:
        return s.get(Instance, instance_id)


def balance(rt, account_id: str) -> int:
    with rt.db.read() as s:
        return s.scalar(select(Account.balance).where(Account.id == account_id))


def charges(rt, instance_id: str) -> list[dt.datetime]:
    with rt.db.read() as s:
        return list(s.scalars(select(LedgerEntry.period_start)
                              .where(LedgerEntry.instance_id == instance_id,
                                     LedgerEntry.kind == CHARGE).order_by(LedgerEntry.id)))


def check_money(rt) -> None:
    """Conservation, and every stored total derivable from the ledger, exactly (the accounts'
    running totals of reserved and spent included)."""
    with rt.db.read() as s:
        entries = s.execute(select(LedgerEntry.id, LedgerEntry.account_id,
                                   LedgerEntry.instance_id, LedgerEntry.kind,
                                   LedgerEntry.amount, LedgerEntry.balance_after,
                                   LedgerEntry.period_start).order_by(LedgerEntry.id)).all()
        accounts = dict(s.execute(select(Account.id, Account.balance)).all())
        totals = {r.id: (r.reserved, r.spent)
                  for r in s.execute(select(Account.id, Account.reserved, Account.spent))}
        instances = {r.id: r for r in s.execute(
            select(Instance.id, Instance.account_id, Instance.reserve, Instance.spent,
                   Instance.status))}
    deposits = sum(e.amount for e in entries if e.kind == DEPOSIT)
    charged = sum(e.amount for e in entries if e.kind == CHARGE)
    assert deposits == (sum(accounts.values()) + sum(i.reserve for i in instances.values())
                        + charged), "conservation: deposits = balances + reserves + charges"

    acct = defaultdict(int)
    reserve = defaultdict(int)
    spent = defaultdict(int)
    periods = set()
    for e in entries:
        assert e.amount > 0, e
        sign = {DEPOSIT: 1, REFUND: 1, RESERVE: -1, TOPUP: -1, CHARGE: 0}[e.kind]
        acct[e.account_id] += sign * e.amount
        # Each entry records the balance right after it: the running sum, in id order.
        assert e.balance_after == acct[e.account_id], ("balance_after", e)
        if e.kind in (RESERVE, TOPUP):
            reserve[e.instance_id] += e.amount
        elif e.kind in (CHARGE, REFUND):
            reserve[e.instance_id] -= e.amount
        if e.kind == CHARGE:
            spent[e.instance_id] += e.amount
            assert (e.instance_id, e.period_start) not in periods, ("charged twice", e)
            periods.add((e.instance_id, e.period_start))
    for account_id, bal in accounts.items():
        assert bal >= 0 and bal == acct[account_id], ("balance", account_id)
    for inst in instances.values():
        assert inst.reserve >= 0 and inst.reserve == reserve[inst.id], ("reserve", inst)
        assert inst.spent == spent[inst.id], ("spent", inst)
        if inst.status not in (ACTIVE, INITIALIZED):
            assert inst.reserve == 0, ("reserve left after the end", inst)
    for account_id, (reserved, spent_total) in totals.items():
        mine = [i for i in instances.values() if i.account_id == account_id]
        assert reserved == sum(i.reserve for i in mine), ("account reserved", account_id)
        assert spent_total == sum(i.spent for i in mine), ("account spent", account_id)


def check_topup_invariant(rt) -> None:
    """Every ACTIVE reserve is two hours, or its account could not top it up."""
    with rt.db.read() as s:
        rows = s.execute(select(Instance.id, Instance.reserve, Instance.price_hour,
                                Account.balance)
                         .join(Account, Account.id == Instance.account_id)
                         .where(Instance.status == ACTIVE)).all()
    for r in rows:
        missing = ledger.RESERVE_HOURS * r.price_hour - r.reserve
        assert missing == 0 or (missing > 0 and r.balance < missing), r


def count(rt, model, *where) -> int:
    with rt.db.read() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))
