"""Benchmark: the lifecycle engine with slow providers (simulated call latency, real clock).

    .venv/bin/python bench/lifecycle.py [--backend sqlite|postgres] [--deploys 1000]
        [--providers 10] [--latency 0.2] [--watched 10000] [--status-latency 0.005]
        [--watch-seconds 65] [--pool N] [--per-provider N]

1. Deploys: `--deploys` containers spread over `--providers` simulated providers whose calls
   take `--latency` s (provision_seconds 0: one create per instance). The deploys are
   committed first (through the instances service, as the route does); then the background
   worker starts and the wall time until every instance is ACTIVE is measured, against the
   ideal for the configured pool: calls × latency ÷ concurrency, where concurrency is
   min(driver_pool_size, providers × driver_calls_per_provider). Target: within 1.5×.
2. Watch: `--watched` ACTIVE instances (bulk-inserted, with their simulated workloads) on
   the same number of providers, status calls of `--status-latency` s, watched every
   `watch_interval_seconds` (30). For `--watch-seconds` of wall time, twice a second, the
   watch lag is sampled: how late the oldest due watch is. Target: under 30 s.

Prints the settings used and both figures. The machine may be shared: say so with the numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, func, insert, select, text

from gpucloud.accounts import service as accounts
from gpucloud.catalog import service as catalog
from gpucloud.catalog.models import OfferZone
from gpucloud.catalog.schemas import OfferCreate
from gpucloud.clock import utcnow
from gpucloud.drivers.simulated.models import SimWorkload
from gpucloud.instances import service
from gpucloud.instances.models import ACTIVE, OP_WATCH, Instance
from gpucloud.instances.schemas import ContainerDeploy
from gpucloud.runtime import Runtime
from gpucloud.settings import Settings
from gpucloud.workers.runner import BackgroundWorker

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_DB = "gpucloud_bench_lifecycle"
PRICE = "1.5"


def _url(backend: str, tmp: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'lifecycle.db'}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{PG_DB}"'))
    admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + PG_DB


def _runtime(args, url: str, tmp: Path) -> Runtime:
    overrides = {}
    if args.pool:
        overrides["driver_pool_size"] = args.pool
    if args.per_provider:
        overrides["driver_calls_per_provider"] = args.per_provider
    settings = Settings(database_url=url, data_dir=tmp, demo=False, workers=False,
                        admin_key="bench", local_provider=False, clock="system",
                        **overrides)
    return Runtime.build(settings)


def _catalog(rt, providers: int, latency: float, capacity: int) -> tuple[str, list[str]]:
    now = utcnow()
    with rt.db.write() as s:
        account, _ = accounts.create_account(s, "bench", 10**15, now)
        offers = []
        for i in range(providers):
            p = catalog.create_provider(s, f"sim-{i}", "simulated", {
                "provision_seconds": 0, "call_latency_seconds": latency}, True, now,
                rt.secrets.seal_text)
            offers.append(catalog.create_offer(s, OfferCreate.model_validate({
                "provider_id": p.id, "workload": "container",
                "gpu": {"vendor": "nvidia", "model": "h100", "vram": "80Gi",
                        "interface": "SXM"},
                "gpu_count": 1, "vcpu": 4, "memory_gib": 16, "storage_gib": 50,
                "price_hour": PRICE, "countries": ["US"], "capacity": capacity}), now).id)
        return account.id, offers


def _load() -> str:
    """The machine's load average (1, 5, 15 min): the machine may be shared."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _count(rt, *where) -> int:
    with rt.db.read() as s:
        return s.scalar(select(func.count()).select_from(Instance).where(*where))


def bench_deploys(args, tmp: Path) -> None:
    rt = _runtime(args, _url(args.backend, tmp), tmp)
    try:
        account_id, offers = _catalog(rt, args.providers, args.latency, args.deploys)
        for i in range(args.deploys):
            body = ContainerDeploy.model_validate({
                "plan_id": offers[i % len(offers)], "name": f"b{i}",
                "container_settings": {"image": "ubuntu:22.04",
                                       "expose": [{"port": 80, "protocol": "http"}]}})
            with rt.db.write() as s:
                service.deploy_container(s, rt, account_id, body, rt.clock.now())
        s_ = rt.settings
        concurrency = min(s_.driver_pool_size, args.providers * s_.driver_calls_per_provider)
        ideal = args.deploys * args.latency / concurrency
        worker = BackgroundWorker(rt)
        started, cpu = time.monotonic(), time.process_time()
        worker.start()
        while _count(rt, Instance.status == ACTIVE) < args.deploys:
            time.sleep(0.1)
        wall = time.monotonic() - started
        cpu = time.process_time() - cpu
        worker.stop()
        print(f"deploys: {args.deploys} over {args.providers} providers, {args.latency:g} s "
              f"per call, pool {s_.driver_pool_size}, {s_.driver_calls_per_provider} per "
              f"provider ({args.backend})")
        print(f"  all ACTIVE after {wall:.2f} s; ideal {ideal:.2f} s "
              f"(calls × latency ÷ {concurrency}); ratio {wall / ideal:.2f} (target ≤ 1.5)")
        print(f"  CPU of this process meanwhile {cpu:.2f} s ({cpu / args.deploys * 1000:.1f} ms "
              f"per deploy, the simulated provider's own database writes included); "
              f"load average {_load()}")
    finally:
        rt.close()


def _populate_watched(rt, providers: list[str], offers: list[str], account_id: str,
                      n: int, interval: int) -> None:
    now = utcnow()
    with rt.db.read() as s:
        zones = dict(s.execute(select(OfferZone.offer_id, OfferZone.id)).all())
    inst_rows, sim_rows = [], []
    for i in range(n):
        iid = str(uuid.uuid4())
        k = i % len(providers)
        inst_rows.append({
            "id": iid, "account_id": account_id, "offer_id": offers[k], "zone_id": zones[offers[k]],
            "provider_id": providers[k], "workload": "container", "name": f"w{i}",
            "status": ACTIVE, "location": "US", "resources": {}, "price_hour": 1_500_000,
            "reserve": 3_000_000, "spent": 1_500_000, "attempts": 0, "op": OP_WATCH,
            "container_started": True,
            # Spread over one watch interval, as a steady state would be; billing is far off.
            "next_check_at": now + dt.timedelta(seconds=interval * i / n),
            "billed_until": now + dt.timedelta(hours=2),
            "created_at": now, "updated_at": now, "activated_at": now})
        sim_rows.append({
            "instance_id": iid, "provider_id": providers[k], "created_at": now, "ready_at": now,
            "domain": f"{iid[:8]}.us.sim", "ports": [], "generation": 1, "updated_at": now,
            "config": {"workload": "container", "node": "gpu-node-01", "fail": None,
                       "history": []}})
    for table, rows in ((Instance.__table__, inst_rows), (SimWorkload.__table__, sim_rows)):
        for k in range(0, len(rows), 5000):
            with rt.db.write() as s:
                s.execute(insert(table), rows[k:k + 5000])


def bench_watch(args, tmp: Path) -> None:
    rt = _runtime(args, _url(args.backend, tmp / "watch"), tmp / "watch") \
        if args.backend == "postgres" else None
    if rt is None:
        (tmp / "watch").mkdir(exist_ok=True)
        rt = _runtime(args, f"sqlite:///{tmp / 'watch' / 'lifecycle.db'}", tmp / "watch")
    try:
        account_id, offers = _catalog(rt, args.providers, args.status_latency, args.watched)
        with rt.db.read() as s:
            from_offer = dict(s.execute(text("SELECT id, provider_id FROM offers")).all())
        providers = [from_offer[o] for o in offers]
        interval = rt.settings.watch_interval_seconds
        _populate_watched(rt, providers, offers, account_id, args.watched, interval)
        worker = BackgroundWorker(rt)
        worker.start()
        started = time.monotonic()
        worst = 0.0
        samples = []
        stop = threading.Event()
        while time.monotonic() - started < args.watch_seconds and not stop.is_set():
            now = utcnow()
            with rt.db.read() as s:
                oldest = s.scalar(select(func.min(Instance.next_check_at)).where(
                    Instance.op == OP_WATCH, Instance.next_check_at <= now))
            lag = (now - oldest).total_seconds() if oldest is not None else 0.0
            samples.append(lag)
            worst = max(worst, lag)
            time.sleep(0.5)
        worker.stop()
        ended = _count(rt, Instance.status != ACTIVE)
        s_ = rt.settings
        print(f"watch: {args.watched} ACTIVE over {args.providers} providers, "
              f"{args.status_latency * 1000:g} ms per status call, every {interval} s, "
              f"pool {s_.driver_pool_size}, {s_.driver_calls_per_provider} per provider, "
              f"{args.watch_seconds:g} s observed ({args.backend})")
        print(f"  watch lag: max {worst:.1f} s, median "
              f"{sorted(samples)[len(samples) // 2]:.1f} s (target < 30 s); "
              f"{ended} instance(s) no longer ACTIVE (expected 0)")
    finally:
        rt.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--deploys", type=int, default=1000)
    ap.add_argument("--providers", type=int, default=10)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--watched", type=int, default=10_000)
    ap.add_argument("--status-latency", type=float, default=0.005)
    ap.add_argument("--watch-seconds", type=float, default=65)
    ap.add_argument("--pool", type=int, default=None, help="driver_pool_size (default 16)")
    ap.add_argument("--per-provider", type=int, default=None,
                    help="driver_calls_per_provider (default 4)")
    ap.add_argument("--skip", choices=["deploys", "watch"], default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip != "deploys":
            bench_deploys(args, Path(tmp))
        if args.skip != "watch":
            bench_watch(args, Path(tmp))


if __name__ == "__main__":
    main()
