"""The simulated provider's log tail by uptime: what a console's `logs?last=20` poll costs it.

    .venv/bin/python bench/sim_logs.py [--n 300] [--last 20]

Creates one simulated container in a temporary SQLite database and reads its logs at several
uptimes (a heartbeat line every 10 minutes, at most 2,000 kept), through the driver's own
`logs()` and, as the baseline in the same process, the way it was read before 2026-12-01:
every line made and formatted, then the tail taken. Prints µs of CPU per call.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

from gpucloud.db import Database
from gpucloud.drivers.base import DriverContext, WorkloadSpec
from gpucloud.drivers.simulated import text as simulated_text
from gpucloud.drivers.simulated.driver import MAX_HEARTBEATS, SimulatedDriver
from gpucloud.jsonresp import isoformat_z
from gpucloud.migrations.run import upgrade
from gpucloud.settings import Settings


class _Clock:
    def __init__(self, now: dt.datetime):
        self.at = now

    def now(self) -> dt.datetime:
        return self.at


def _before(driver: SimulatedDriver, instance_id: str, last: int | None) -> list[str]:
    row = driver._row(instance_id)
    lines = [f"{isoformat_z(at)} {msg}"
             for at, msg in simulated_text.logs(row, driver._now(), MAX_HEARTBEATS)]
    return lines[-last:] if last else lines


def _cpu(fn, n: int) -> float:
    fn()
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--last", type=int, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gpucloud-bench-"))
    db = Database(Settings(data_dir=tmp, database_url=f"sqlite:///{tmp / 'bench.db'}"))
    upgrade(db)
    start = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    clock = _Clock(start)
    driver = SimulatedDriver("00000000-0000-4000-8000-000000000001", {},
                             DriverContext(clock=clock, db=db))
    iid = "00000000-0000-4000-8000-0000000000aa"
    driver.create(WorkloadSpec(
        instance_id=iid, provider_id=driver.provider_id, workload="container", name="box",
        gpu_count=1, gpu_model="rtx4090", vcpu=8, memory_gib=32, storage_gib=100,
        location="FI", image="docker.io/library/ubuntu:22.04",
        startup_command="sleep infinity"))
    print(f"logs?last={args.last}, µs of CPU per call (SQLite, one simulated container)")
    print(f"{'uptime':>10} {'lines':>6} {'before':>8} {'now':>8} {'ratio':>6}")
    for label, uptime in (("1 hour", 3600), ("1 day", 86400), ("7 days", 7 * 86400),
                          ("30 days", 30 * 86400)):
        clock.at = start + dt.timedelta(seconds=5 + uptime)
        assert driver.logs(iid, None, args.last) == _before(driver, iid, args.last)
        lines = len(driver.logs(iid, None, None))
        old = _cpu(lambda: _before(driver, iid, args.last), args.n)
        new = _cpu(lambda: driver.logs(iid, None, args.last), args.n)
        print(f"{label:>10} {lines:6} {old:8.0f} {new:8.0f} {old / new:5.1f}×")
    db.dispose()


if __name__ == "__main__":
    main()
