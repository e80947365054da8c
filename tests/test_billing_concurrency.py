"""Exactly once under concurrency and crashes: two workers on one boundary, and a process
killed between batches / inside a batch, then resumed."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
from pathlib import Path

import httpx
from sqlalchemy import func, select

from gpucloud.accounts.models import Account
from gpucloud.billing import boundaries
from gpucloud.billing.models import CHARGE, LedgerEntry
from gpucloud.catalog.models import OfferZone
from gpucloud.instances.models import ENDED, Instance
from gpucloud.runtime import Runtime
from tests.conftest import ADMIN_KEY, START, make_settings, postgres_only
from tests.procs import ServerProcess
from tests.test_billing_support import (
    check_money,
    check_topup_invariant,
    deploy_row,
    make_account,
    seed_catalog,
)

H = dt.timedelta(hours=1)
ROOT = Path(__file__).resolve().parents[1]


def populate(rt, n_accounts: int, per_account: int) -> list[str]:
    cat = seed_catalog(rt, price="0.37")
    ids = []
    for k in range(n_accounts):
        acct = make_account(rt, "50", name=f"a{k}")
        ids += [deploy_row(rt, acct, cat) for _ in range(per_account)]
    return ids


def charge_counts(rt) -> dict:
    with rt.db.read() as s:
        return dict(s.execute(select(LedgerEntry.period_start, func.count())
                              .where(LedgerEntry.kind == CHARGE)
                              .group_by(LedgerEntry.period_start)).all())


def test_two_workers_charge_each_instance_once(rt, backend):
    ids = populate(rt, n_accounts=20, per_account=6)
    rt.clock.set(START + 3 * H + dt.timedelta(minutes=1))
    other = Runtime.build(make_settings(backend["url"], backend["data_dir"],
                                        billing_batch_size=7), migrate=False)
    rt.settings.billing_batch_size = 7
    other.clock.refresh()
    results: list = []
    barrier = threading.Barrier(2)

    def work(runtime):
        barrier.wait()
        try:
            results.append(boundaries.process_due(runtime))
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=work, args=(r,)) for r in (rt, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    other.close()
    assert all(isinstance(r, int) for r in results), results
    assert sum(results) == 3 * len(ids)  # every instance-boundary processed once in total
    assert charge_counts(rt) == {START + k * H: len(ids) for k in range(4)}
    check_money(rt)
    check_topup_invariant(rt)


def test_parallel_batches_charge_each_instance_once(rt, backend, monkeypatch):
    """One process, `billing_parallel` batches side by side on PostgreSQL (SQLite: one at a
    time, the same result), three boundaries behind."""
    ids = populate(rt, n_accounts=12, per_account=5)
    rt.clock.set(START + 3 * H + dt.timedelta(minutes=1))
    rt.settings.billing_batch_size = 4
    rt.settings.billing_parallel = 3
    threads: set[str] = set()
    real = boundaries.process_batch

    def recording(s, now, limit):
        threads.add(threading.current_thread().name)
        return real(s, now, limit)

    monkeypatch.setattr(boundaries, "process_batch", recording)
    assert boundaries.process_due(rt) == 3 * len(ids)
    assert len(threads) == (1 if backend["name"] == "sqlite" else 3)
    assert charge_counts(rt) == {START + k * H: len(ids) for k in range(4)}
    check_money(rt)
    check_topup_invariant(rt)


def test_parallel_batches_end_exhausted_instances_across_shared_zones(rt, backend):
    """Parallel batches that end instances in the same zones (capacity released in each):
    every instance ends exactly once, every unit of capacity comes back, the books balance."""
    zones = [seed_catalog(rt, price=price, capacity=50) for price in ("1.0", "1.1", "1.2")]
    ids = []
    for k in range(15):
        # exactly the upfront three hours of each of its three instances (3 × 3.3): never a
        # top-up, so each instance is charged twice at boundaries and ended at the third
        acct = make_account(rt, "9.9", name=f"x{k}")
        ids += [deploy_row(rt, acct, cat) for cat in zones]
    check_money(rt)
    rt.settings.billing_batch_size = 4
    rt.settings.billing_parallel = 3
    rt.clock.set(START + 3 * H + dt.timedelta(seconds=1))
    assert boundaries.process_due(rt) == 3 * len(ids)  # two charged hours + the ending one
    with rt.db.read() as s:
        statuses = s.execute(select(Instance.status, func.count())
                             .group_by(Instance.status)).all()
        in_use = s.scalars(select(OfferZone.in_use)).all()
    assert statuses == [(ENDED, len(ids))]
    assert in_use == [0, 0, 0]
    assert charge_counts(rt) == {START + k * H: len(ids) for k in range(3)}
    check_money(rt)


@postgres_only
def test_batch_defers_the_instances_of_an_account_held_elsewhere(rt, backend):
    """PostgreSQL: a batch never waits for an account another transaction holds; it leaves
    that account's instances due (locked until it commits) and charges the others."""
    ids = populate(rt, n_accounts=3, per_account=4)
    rt.clock.set(START + H + dt.timedelta(seconds=5))
    with rt.db.read() as s:
        held = s.scalar(select(Instance.account_id).where(Instance.id == ids[0]))
    with rt.db.engine.connect() as other:
        other.execute(select(Account.id).where(Account.id == held).with_for_update())
        with rt.db.write() as s:
            result = boundaries.process_batch(s, rt.clock.now(), 100)
        assert (result.taken, result.processed) == (len(ids), len(ids) - 4)
        other.rollback()
    assert charge_counts(rt)[START + H] == len(ids) - 4
    check_money(rt)
    assert boundaries.process_due(rt) == 4  # the deferred ones, once the account is free
    assert charge_counts(rt) == {START: len(ids), START + H: len(ids)}
    check_money(rt)
    check_topup_invariant(rt)


CRASHER = """
import datetime as dt, os, sys
sys.path.insert(0, {root!r})
from gpucloud.billing import batch_sql as q
from gpucloud.billing.boundaries import process_batch
from gpucloud.runtime import Runtime
from tests.conftest import make_settings

rt = Runtime.build(make_settings({url!r}, {data_dir!r}), migrate=False)
now = rt.clock.now()
if {mode!r} == "between":
    for _ in range(2):  # two batches commit, then the process dies without cleanup
        with rt.db.write() as s:
            process_batch(s, now, 5)
    os._exit(1)
# "inside": die in the middle of a batch, after the charges were written, before commit
real = q.apply_charges
def die_after_charges(s):
    real(s)
    s.flush()
    os._exit(1)
q.apply_charges = die_after_charges
with rt.db.write() as s:
    process_batch(s, now, 5)
"""


def run_crasher(backend, mode: str) -> int:
    code = CRASHER.format(root=str(ROOT), url=backend["url"],
                          data_dir=str(backend["data_dir"]), mode=mode)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120,
                          check=False).returncode


def test_kill_between_batches_loses_and_duplicates_nothing(rt, backend):
    ids = populate(rt, n_accounts=6, per_account=4)
    rt.clock.set(START + H + dt.timedelta(seconds=5))
    assert run_crasher(backend, "between") == 1
    assert charge_counts(rt)[START + H] == 10  # two batches of 5 made it
    check_money(rt)
    assert boundaries.process_due(rt) == len(ids) - 10
    assert charge_counts(rt) == {START: len(ids), START + H: len(ids)}
    check_money(rt)
    check_topup_invariant(rt)


def test_kill_inside_a_batch_rolls_it_back(rt, backend):
    ids = populate(rt, n_accounts=3, per_account=4)
    rt.clock.set(START + H + dt.timedelta(seconds=5))
    assert run_crasher(backend, "inside") == 1
    assert START + H not in charge_counts(rt)  # nothing of the dead batch survived
    check_money(rt)
    assert boundaries.process_due(rt) == len(ids)
    assert charge_counts(rt) == {START: len(ids), START + H: len(ids)}
    check_money(rt)
    check_topup_invariant(rt)


def test_two_server_processes_drain_the_same_boundaries(api, backend, tmp_path):
    """Two real `gpucloud serve` processes on one database, both moving the manual clock to
    the same time at once: every (instance, hour) is charged exactly once."""
    provider = api.provider()
    plan = api.offer(provider, price="0.37", capacity=100)
    for k in range(4):
        _, headers = api.account("100", name=f"s{k}")
        for _ in range(5):
            api.deploy(headers, plan)
    api.advance(10)  # all 20 ACTIVE, activation hour charged
    env = {"GPUCLOUD_DATABASE_URL": backend["url"], "GPUCLOUD_CLOCK": "manual",
           "GPUCLOUD_ADMIN_KEY": ADMIN_KEY, "GPUCLOUD_DEMO": "0",
           "GPUCLOUD_DATA_DIR": str(backend["data_dir"]), "GPUCLOUD_BILLING_BATCH_SIZE": "3",
           "GPUCLOUD_LOG_LEVEL": "warning"}
    # ServerProcess.start fails with the server's own log when a process exits or does not
    # answer (a start here once waited out its bound with nothing to show).
    servers = [ServerProcess(tmp_path / f"server{i}", env) for i in range(2)]
    admin = {"X-ADMIN-KEY": ADMIN_KEY}
    try:
        for server in servers:
            server.start()
        target = "2026-01-05T16:00:30Z"  # boundaries 11:00 … 16:00
        replies: list = []

        def move(url):
            replies.append(httpx.post(f"{url}/admin/clock", json={"now": target},
                                      headers=admin, timeout=120).status_code)

        threads = [threading.Thread(target=move, args=(s.url,)) for s in servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        assert replies == [200, 200]
    finally:
        for server in servers:
            server.stop()
    assert charge_counts(api.rt) == {START + k * H: 20 for k in range(7)}
    check_money(api.rt)
    check_topup_invariant(api.rt)
