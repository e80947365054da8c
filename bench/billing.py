"""Benchmark: one hour boundary for N ACTIVE instances, set-based, against a bare UPDATE.

    .venv/bin/python bench/billing.py [--sizes 10000,100000] [--backends sqlite,postgres]
                                      [--repeat 3] [--batch-size N] [--parallel N]

For each backend and N: a migrated database with N/10 accounts with plenty of balance, one
provider/offer/zone, N ACTIVE instances with a two-hour reserve and `billed_until` on a
boundary (bulk inserts), built once as a template (SQLite: a file; PostgreSQL: database
`gpucloud_bench_tpl`). Each repeat gets a fresh copy of it and a CHECKPOINT (PostgreSQL: the
first write to every page after a checkpoint logs the whole page, as it does in production
where checkpoints come every few minutes and boundaries every hour), then times
`boundaries.process_due` with the manual clock just past the boundary, and a bare
`UPDATE instances SET spent = spent + price_hour WHERE status = 'ACTIVE'` on the same rows,
and checks afterwards: N charges in the ledger, conservation exact. Every run is printed,
then the median of the repeats.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, func, insert, select, text

from gpucloud.accounts.models import Account, Meta
from gpucloud.billing import boundaries
from gpucloud.billing.models import CHARGE, DEPOSIT, LedgerEntry
from gpucloud.catalog.models import Offer, OfferZone, Provider
from gpucloud.clock import CLOCK_KEY
from gpucloud.db import Database
from gpucloud.instances.models import ACTIVE, Instance
from gpucloud.migrations.run import upgrade
from gpucloud.runtime import Runtime
from gpucloud.settings import Settings

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_DB = "gpucloud_bench"
PG_TEMPLATE = "gpucloud_bench_tpl"
BOUNDARY = dt.datetime(2026, 1, 5, 11, 0, tzinfo=dt.UTC)
PRICE = 1_370_000  # 1.37 USDC/hour
PER_ACCOUNT = 10
CHUNK = 10_000


def _pg_admin(*statements: str) -> None:
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for sql in statements:
            conn.execute(text(sql))
    admin.dispose()


def _pg_url(name: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def build_template(backend: str, n: int, tmp: Path) -> str:
    """A migrated, populated database to copy for each run; returns its URL."""
    if backend == "sqlite":
        path = tmp / "template.db"
        path.unlink(missing_ok=True)
        url = f"sqlite:///{path}"
    else:
        _pg_admin(f'DROP DATABASE IF EXISTS "{PG_TEMPLATE}" WITH (FORCE)',
                  f'CREATE DATABASE "{PG_TEMPLATE}"')
        url = _pg_url(PG_TEMPLATE)
    db = Database(Settings(database_url=url, data_dir=tmp, demo=False, workers=False,
                           admin_key="bench", local_provider=False))
    upgrade(db)
    populate(db, n)
    db.dispose()
    return url


def fresh_copy(backend: str, tmp: Path) -> str:
    if backend == "sqlite":
        path = tmp / "bench.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(tmp / "template.db", path)
        return f"sqlite:///{path}"
    _pg_admin(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)',
              f'CREATE DATABASE "{PG_DB}" TEMPLATE "{PG_TEMPLATE}"', "CHECKPOINT")
    return _pg_url(PG_DB)


def populate(db: Database, n: int) -> None:
    start = BOUNDARY - dt.timedelta(minutes=30)
    n_accounts = max(1, n // PER_ACCOUNT)
    balance = 1_000 * PRICE
    accounts = [str(uuid.uuid4()) for _ in range(n_accounts)]
    with db.write() as s:
        s.add(Meta(key=CLOCK_KEY, value=start.isoformat()))  # the manual clock starts here
        s.add(Provider(id="p-bench", name="bench", driver="simulated", config={},
                       created_at=start))
        s.flush()
        s.add(Offer(id="o-bench", provider_id="p-bench", workload="container",
                    gpu_vendor="nvidia", gpu_model="h100", gpu_vram="80Gi", gpu_interface="SXM",
                    gpu_count=1, vcpu=16, memory_gib=128, storage_gib=200, price_hour=PRICE,
                    created_at=start))
        s.flush()
        zone = OfferZone(offer_id="o-bench", country="US", capacity=n, in_use=n)
        s.add(zone)
        s.flush()
        zone_id = zone.id
    # Each account: a deposit, then per instance a reserve of 3 hours and the activation
    # charge — the ledger the real flow leaves, so conservation can be checked afterwards.
    per_account_spend = PER_ACCOUNT * 3 * PRICE
    acct_rows, entries, inst_rows = [], [], []
    for a in accounts:
        acct_rows.append({"id": a, "name": "bench", "balance": balance - per_account_spend,
                          "created_at": start})
        entries.append({"at": start, "account_id": a, "instance_id": None, "kind": DEPOSIT,
                        "amount": balance, "balance_after": balance, "period_start": None})
    for i in range(n):
        a = accounts[i % n_accounts]
        iid = str(uuid.uuid4())
        inst_rows.append({
            "id": iid, "account_id": a, "offer_id": "o-bench", "zone_id": zone_id,
            "provider_id": "p-bench", "workload": "container", "name": f"b{i}",
            "status": ACTIVE, "location": "US", "resources": {}, "price_hour": PRICE,
            "reserve": 2 * PRICE, "spent": PRICE, "billed_until": BOUNDARY, "attempts": 0,
            "created_at": start, "updated_at": start, "activated_at": start})
        entries.append({"at": start, "account_id": a, "instance_id": iid, "kind": "reserve",
                        "amount": 3 * PRICE, "balance_after": 0, "period_start": None})
        entries.append({"at": start, "account_id": a, "instance_id": iid, "kind": CHARGE,
                        "amount": PRICE, "balance_after": 0,
                        "period_start": BOUNDARY - dt.timedelta(hours=1)})
    for table, rows in ((Account.__table__, acct_rows), (Instance.__table__, inst_rows),
                        (LedgerEntry.__table__, entries)):
        for k in range(0, len(rows), CHUNK):
            with db.write() as s:
                s.execute(insert(table), rows[k:k + CHUNK])
    if not db.is_sqlite:
        with db.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))


def conservation(db: Database) -> tuple[int, int]:
    with db.read() as s:
        charges = s.scalar(select(func.count()).select_from(LedgerEntry)
                           .where(LedgerEntry.kind == CHARGE,
                                  LedgerEntry.period_start == BOUNDARY))
        deposits = s.scalar(select(func.sum(LedgerEntry.amount)).where(LedgerEntry.kind == DEPOSIT))
        charged = s.scalar(select(func.sum(LedgerEntry.amount)).where(LedgerEntry.kind == CHARGE))
        balances = s.scalar(select(func.sum(Account.balance)))
        reserves = s.scalar(select(func.sum(Instance.reserve)))
        spent = s.scalar(select(func.sum(Instance.spent)))
    assert deposits == balances + reserves + charged, "conservation broken"
    assert spent == charged, "spent is not the sum of charges"
    return charges, deposits - (balances + reserves + charged)


def run(backend: str, n: int, tmp: Path, batch_size: int | None = None,
        parallel: int | None = None) -> dict:
    url = fresh_copy(backend, tmp)
    overrides = {k: v for k, v in (("billing_batch_size", batch_size),
                                   ("billing_parallel", parallel)) if v}
    settings = Settings(database_url=url, data_dir=tmp, clock="manual", demo=False,
                        workers=False, admin_key="bench", local_provider=False, **overrides)
    rt = Runtime.build(settings, migrate=False)
    rt.clock.set(BOUNDARY + dt.timedelta(seconds=1))
    t0 = time.perf_counter()
    processed = boundaries.process_due(rt)
    billing_s = time.perf_counter() - t0
    charges, diff = conservation(rt.db)
    assert processed == n and charges == n, (processed, charges)
    with rt.db.write() as s:
        t0 = time.perf_counter()
        s.execute(text("UPDATE instances SET spent = spent + price_hour WHERE status = 'ACTIVE'"))
    bare_s = time.perf_counter() - t0
    rt.close()
    return {"backend": backend, "n": n, "billing_s": billing_s, "rate": n / billing_s,
            "bare_s": bare_s, "ratio": billing_s / bare_s, "charges": charges, "diff": diff}


def _line(label: str, r: dict) -> str:
    return (f"{label:<10}{r['n']:>9}{r['billing_s']:>12.2f}{r['rate']:>11.0f}"
            f"{r['bare_s']:>15.3f}{r['ratio']:>7.1f}x{r['charges']:>9}  "
            f"{'exact' if r['diff'] == 0 else r['diff']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--repeat", type=int, default=3, help="runs per backend and size")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="GPUCLOUD_BILLING_BATCH_SIZE (default: the setting's default)")
    parser.add_argument("--parallel", type=int, default=None,
                        help="GPUCLOUD_BILLING_PARALLEL (default: the setting's default)")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    backends = [x.strip() for x in args.backends.split(",") if x.strip()]
    print(f"{'backend':<10}{'N':>9}{'boundary s':>12}{'inst/s':>11}{'bare UPDATE s':>15}"
          f"{'ratio':>8}{'charges':>9}  conservation")
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            for n in sizes:
                build_template(backend, n, Path(tmp))
                runs = []
                for _ in range(args.repeat):
                    runs.append(run(backend, n, Path(tmp), args.batch_size, args.parallel))
                    print(_line(backend, runs[-1]), flush=True)
                if len(runs) > 1:
                    median = {k: statistics.median(r[k] for r in runs)
                              for k in ("billing_s", "rate", "bare_s", "ratio")}
                    worst = max(r["billing_s"] for r in runs)
                    print(_line("median", {**runs[0], **median})
                          + f"  (slowest {worst:.2f} s)", flush=True)
        if "postgres" in backends:
            _pg_admin(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)',
                      f'DROP DATABASE IF EXISTS "{PG_TEMPLATE}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
