"""Hour boundaries, set-based, on rows built the way deploy/activation build them — both
backends, manual clock. (The same rules through the HTTP API: test_billing_api.py.)"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from gpucloud.accounts.models import Account
from gpucloud.billing import boundaries, ledger
from gpucloud.billing.models import CHARGE, LedgerEntry
from gpucloud.catalog.models import OfferZone
from gpucloud.instances.models import ACTIVE, ENDED, OP_DELETE, Instance, InstanceEvent
from gpucloud.money import to_micro
from tests.conftest import START
from tests.test_billing_support import (
    balance,
    charges,
    check_money,
    check_topup_invariant,
    count,
    credit_without_retry,
    deploy_row,
    instance,
    make_account,
    seed_catalog,
)

H = dt.timedelta(hours=1)


def at(rt, when: dt.datetime) -> int:
    rt.clock.set(when)
    done = boundaries.process_due(rt)
    check_money(rt)
    check_topup_invariant(rt)
    return done


def test_activation_charges_current_hour_and_keeps_two(rt):
    cat = seed_catalog(rt, price="1.5")
    acct = make_account(rt, "100")
    rt.clock.set(START + dt.timedelta(minutes=7))
    iid = deploy_row(rt, acct, cat)
    inst = instance(rt, iid)
    assert (inst.reserve, inst.spent) == (to_micro("3"), to_micro("1.5"))
    assert inst.billed_until == START + H
    assert charges(rt, iid) == [START]
    assert balance(rt, acct) == to_micro("95.5")
    assert boundaries.next_due(rt) == START + H
    assert at(rt, START + H - dt.timedelta(seconds=1)) == 0  # not due yet
    check_money(rt)


def test_one_boundary_charges_and_tops_up(rt):
    cat = seed_catalog(rt, price="1.5")
    acct = make_account(rt, "100")
    iid = deploy_row(rt, acct, cat)
    assert at(rt, START + H) == 1
    inst = instance(rt, iid)
    assert (inst.reserve, inst.spent) == (to_micro("3"), to_micro("3"))
    assert inst.billed_until == START + 2 * H
    assert charges(rt, iid) == [START, START + H]
    assert balance(rt, acct) == to_micro("94")
    assert at(rt, START + H + dt.timedelta(minutes=30)) == 0  # same hour: nothing


def test_several_missed_boundaries_each_once_in_order(rt):
    cat = seed_catalog(rt, price="2")
    acct = make_account(rt, "1000")
    ids = [deploy_row(rt, acct, cat) for _ in range(3)]
    rt.settings.billing_batch_size = 2  # several batches per pass, several passes
    assert at(rt, START + 5 * H + dt.timedelta(minutes=1)) == 15
    for iid in ids:
        assert charges(rt, iid) == [START + k * H for k in range(6)]
        inst = instance(rt, iid)
        assert inst.spent == to_micro("12") and inst.reserve == to_micro("4")
        assert inst.billed_until == START + 6 * H
    assert at(rt, START + 5 * H + dt.timedelta(minutes=2)) == 0


def test_topup_fails_then_succeeds_after_deposit(rt):
    cat = seed_catalog(rt, price="1")
    acct = make_account(rt, "3.5")  # 3 upfront + 0.5: a top-up of 1 cannot be paid
    iid = deploy_row(rt, acct, cat)
    at(rt, START + H)
    assert instance(rt, iid).reserve == to_micro("1")
    assert balance(rt, acct) == to_micro("0.5")
    with rt.db.write() as s:
        ledger.deposit(s, acct, to_micro("0.4"), rt.clock.now())  # still short: 0.9 < 1
    assert instance(rt, iid).reserve == to_micro("1")
    with rt.db.write() as s:
        ledger.deposit(s, acct, to_micro("0.1"), rt.clock.now())  # right after a deposit
    assert instance(rt, iid).reserve == to_micro("2")
    assert balance(rt, acct) == 0
    check_money(rt)
    check_topup_invariant(rt)


def test_topup_retry_runs_every_minute_at_most(rt):
    cat = seed_catalog(rt, price="1")
    acct = make_account(rt, "3.5")
    iid = deploy_row(rt, acct, cat)
    at(rt, START + H)
    assert boundaries.retry_topups_due(rt) == 0  # first run: nothing the account can pay
    # Money that arrived while the instance row was held by another transaction (the deposit
    # skipped it): credited here without the deposit's immediate retry.
    credit_without_retry(rt, acct, to_micro("1"))
    assert boundaries.retry_topups_due(rt) == 0  # within the minute: not retried yet
    rt.clock.set(START + H + dt.timedelta(seconds=60))
    assert boundaries.retry_topups_due(rt) == 1
    assert instance(rt, iid).reserve == to_micro("2")
    assert balance(rt, acct) == to_micro("0.5")
    check_money(rt)
    check_topup_invariant(rt)


def test_exhaustion_ends_instance_refunds_and_releases(rt):
    cat = seed_catalog(rt, price="1", capacity=5)
    acct = make_account(rt, "3")  # exactly the upfront: no top-up ever
    iid = deploy_row(rt, acct, cat)
    at(rt, START + H)
    assert instance(rt, iid).reserve == to_micro("1")
    at(rt, START + 2 * H)
    assert instance(rt, iid).reserve == 0 and instance(rt, iid).status == ACTIVE
    assert at(rt, START + 3 * H) == 1
    inst = instance(rt, iid)
    assert inst.status == ENDED and inst.ended_at == START + 3 * H
    assert inst.op == OP_DELETE and inst.next_check_at == START + 3 * H
    assert inst.spent == to_micro("3") and inst.reserve == 0
    assert charges(rt, iid) == [START, START + H, START + 2 * H]
    assert count(rt, InstanceEvent, InstanceEvent.instance_id == iid) == 1
    with rt.db.read() as s:
        assert s.get(OfferZone, cat["zone_id"]).in_use == 0
    assert boundaries.next_due(rt) is None
    assert at(rt, START + 9 * H) == 0


def test_exhaustion_refunds_what_is_left_and_tops_up_siblings(rt):
    cat = seed_catalog(rt, price="1")
    acct = make_account(rt, "6")
    a = deploy_row(rt, acct, cat)
    b = deploy_row(rt, acct, cat)
    # a's reserve below one hour (possible only through a price the reserve no longer
    # matches); b short of its top-up: ending a refunds 0.6, which lets b top up.
    with rt.db.write() as s:
        s.get(Instance, a).reserve -= to_micro("1.4")
        s.add(LedgerEntry(at=rt.clock.now(), account_id=acct, instance_id=a, kind="refund",
                          amount=to_micro("1.4"), balance_after=to_micro("1.4")))
        account = s.get(Account, acct)
        account.balance += to_micro("1.4")
        account.reserved -= to_micro("1.4")
    check_money(rt)
    at(rt, START + H)
    assert instance(rt, a).status == ENDED
    assert instance(rt, b).reserve == to_micro("2")  # 1 after the charge + 1 topped up
    assert balance(rt, acct) == to_micro("1.0")  # 1.4 + 0.6 refunded - 1 top-up


def test_greedy_topups_oldest_first_when_balance_covers_some(rt):
    cat = seed_catalog(rt, price="1")
    acct = make_account(rt, "9")
    ids = []
    for k in range(3):  # balance 0 afterwards; created a second apart: a clear age order
        rt.clock.set(START + dt.timedelta(seconds=k))
        ids.append(deploy_row(rt, acct, cat))
    with rt.db.write() as s:
        ledger.deposit(s, acct, to_micro("2.5"), rt.clock.now())
    at(rt, START + H)  # three reserves short by 1 each, 2.5 available
    reserves = [instance(rt, i).reserve for i in ids]
    assert reserves == [to_micro("2"), to_micro("2"), to_micro("1")]
    assert balance(rt, acct) == to_micro("0.5")


def test_prices_without_drift_over_many_hours(rt):
    for price in ("0.37", "1.22"):
        cat = seed_catalog(rt, price=price)
        acct = make_account(rt, "1000", name=price)
        iid = deploy_row(rt, acct, cat)
        rt.settings.billing_batch_size = 7
        before = balance(rt, acct)
        at(rt, rt.clock.now() + 100 * H)
        inst = instance(rt, iid)
        assert len(charges(rt, iid)) == 101
        assert inst.spent == 101 * to_micro(price)
        assert before - balance(rt, acct) == 100 * to_micro(price)
        assert inst.reserve == 2 * to_micro(price)


def test_second_charge_for_a_period_is_refused_by_the_database(rt):
    cat = seed_catalog(rt)
    acct = make_account(rt)
    iid = deploy_row(rt, acct, cat)
    with pytest.raises(IntegrityError), rt.db.write() as s:
        s.add(LedgerEntry(at=rt.clock.now(), account_id=acct, instance_id=iid, kind=CHARGE,
                          amount=1, balance_after=0, period_start=START))
    check_money(rt)


def test_refund_rereads_a_stale_instance(rt):
    """A request holding an Instance loaded before a boundary committed must not write its
    stale reserve back (that would create money): ledger functions re-read the row."""
    cat = seed_catalog(rt, price="1")
    acct = make_account(rt, "100")
    iid = deploy_row(rt, acct, cat)
    with rt.db.write() as s:
        stale = s.get(Instance, iid)
        assert stale.reserve == to_micro("2")
        # What a boundary committed in between would have done to the row, behind the ORM.
        s.execute(Instance.__table__.update().where(Instance.__table__.c.id == iid)
                  .values(reserve=to_micro("1")))
        ledger.refund_reserve(s, stale, rt.clock.now())
        assert stale.reserve == 0
        refunded = s.scalar(select(LedgerEntry.amount).where(LedgerEntry.kind == "refund"))
    assert refunded == to_micro("1")
