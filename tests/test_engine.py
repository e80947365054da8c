"""The engine under slow, hung and dying providers: real `gpucloud serve` processes, the real
(wall) clock where the issue says so, the simulated driver's `call_latency_seconds` and
`hang_calls` as the slow or dead far side.

Figures are upper bounds with a wide margin over what the engine needs (a slow provider holds
its own slots only), never timings of the machine: a busy machine stays well inside them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from gpucloud.billing.models import CHARGE, LedgerEntry
from gpucloud.db import Database
from gpucloud.drivers.simulated.models import SimWorkload
from gpucloud.instances.models import Instance, InstanceEvent
from tests.conftest import ADMIN_KEY, PG_DB, fresh_pg_database, make_settings
from tests.factories import Api
from tests.podman_env import wait_for
from tests.procs import ServerProcess

RUNNING = "Instance is running"


def _env(tmp_path: Path, backend: str, **extra: str) -> dict[str, str]:
    env = {"GPUCLOUD_CLOCK": "system", "GPUCLOUD_ADMIN_KEY": ADMIN_KEY, "GPUCLOUD_DEMO": "0",
           "GPUCLOUD_WORKERS": "1", "GPUCLOUD_DATA_DIR": str(tmp_path),
           "GPUCLOUD_WORKER_INTERVAL_SECONDS": "0.1", **extra}
    if backend == "postgres":
        env["GPUCLOUD_DATABASE_URL"] = fresh_pg_database(f"{PG_DB}_engine_proc").replace(
            "postgresql+psycopg://", "postgresql://")
    return env


@pytest.fixture(params=["sqlite", "postgres"])
def backend_name(request) -> str:
    return request.param


@pytest.fixture
def servers():
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


def _start(servers: list, cwd: Path, env: dict[str, str]) -> ServerProcess:
    server = ServerProcess(cwd, env)
    servers.append(server)
    return server.start()


def _api(server: ServerProcess) -> Api:
    return Api(httpx.Client(base_url=server.url, timeout=60), None, ADMIN_KEY)


def _db(env: dict[str, str], tmp_path: Path) -> Database:
    url = env.get("GPUCLOUD_DATABASE_URL") or f"sqlite:///{tmp_path / 'gpucloud.db'}"
    return Database(make_settings(url, tmp_path))


def _statuses(api: Api, headers: dict, ids: list[str]) -> list[str]:
    return [api.instance(headers, i)["instance_status"] for i in ids]


def _events(api: Api, headers: dict, iid: str) -> list[str]:
    return api.client.get(f"/gpu/instances/{iid}/events", headers=headers).json()


def test_a_slow_provider_does_not_hold_up_the_others(tmp_path, backend_name, servers):
    env = _env(tmp_path, backend_name)
    api = _api(_start(servers, tmp_path, env))
    _, headers = api.account(balance=10_000)
    slow = api.offer(api.provider("slow", call_latency_seconds=30, provision_seconds=0),
                     capacity=10)
    fast = api.offer(api.provider("fast", provision_seconds=1), capacity=20)
    slow_ids = [api.deploy(headers, slow, name=f"slow-{i}") for i in range(10)]
    time.sleep(0.5)  # the slow provider's creates are under way and hold its slots
    started = time.monotonic()
    fast_ids = [api.deploy(headers, fast, name=f"fast-{i}") for i in range(20)]
    wait_for(lambda: set(_statuses(api, headers, fast_ids)) == {"ACTIVE"}, timeout=10,
             every=0.2, what="20 deploys on the fast provider to be ACTIVE")
    assert time.monotonic() - started < 10
    # The slow provider's calls are still running: nothing of it is ACTIVE yet.
    assert set(_statuses(api, headers, slow_ids)) == {"INITIALIZED"}


def test_a_boundary_is_charged_while_a_slow_provider_is_busy(tmp_path, backend_name, servers):
    env = _env(tmp_path, backend_name, GPUCLOUD_CLOCK="manual")
    api = _api(_start(servers, tmp_path, env))
    _, headers = api.account(balance=10_000)
    fast = api.offer(api.provider("fast", provision_seconds=0))
    fast_ids = [api.deploy(headers, fast, name=f"fast-{i}") for i in range(5)]
    api.advance(1)  # the background worker may hold some of them: they settle at once
    wait_for(lambda: set(_statuses(api, headers, fast_ids)) == {"ACTIVE"}, timeout=10,
             what="the fast provider's instances to be ACTIVE")
    slow = api.offer(api.provider("slow", call_latency_seconds=30, provision_seconds=0))
    for i in range(10):
        api.deploy(headers, slow, name=f"slow-{i}")
    time.sleep(1)  # the slow provider's creates are in flight

    db = _db(env, tmp_path)

    def charges() -> int:
        with db.read() as s:
            return s.scalar(select(func.count()).select_from(LedgerEntry).where(
                LedgerEntry.kind == CHARGE, LedgerEntry.instance_id.in_(fast_ids)))

    try:
        assert charges() == 5  # the first hour, at activation
        started = time.monotonic()
        mover = threading.Thread(target=api.advance, args=(3600,), daemon=True)
        mover.start()
        wait_for(lambda: charges() == 10, timeout=2, every=0.05,
                 what="every ACTIVE instance charged for the next hour")
        assert time.monotonic() - started < 2
        mover.join(60)
    finally:
        db.dispose()


def test_a_hung_provider_fails_at_the_deadline_and_refunds(tmp_path, backend_name, servers):
    env = _env(tmp_path, backend_name, GPUCLOUD_PROVISION_DEADLINE_SECONDS="8")
    api = _api(_start(servers, tmp_path, env))
    hung_account, hung_headers = api.account(balance=100)
    _, headers = api.account(balance=1000)
    before = api.money(hung_account)["balance"]
    hung = api.offer(api.provider("hung", hang_calls=True, call_timeout_seconds=2))
    fast = api.offer(api.provider("fast", provision_seconds=1))
    hung_ids = [api.deploy(hung_headers, hung, name=f"hung-{i}") for i in range(6)]
    time.sleep(0.5)
    started = time.monotonic()
    fast_ids = [api.deploy(headers, fast, name=f"fast-{i}") for i in range(10)]
    wait_for(lambda: set(_statuses(api, headers, fast_ids)) == {"ACTIVE"}, timeout=6,
             every=0.2, what="the fast provider's deploys to be ACTIVE")
    assert time.monotonic() - started < 6  # nothing else slowed down
    wait_for(lambda: set(_statuses(api, hung_headers, hung_ids)) == {"FAILED"}, timeout=30,
             every=0.5, what="the hung provider's instances to FAIL at the deadline")
    for iid in hung_ids:
        lines = _events(api, hung_headers, iid)
        assert any("provider did not answer" in line for line in lines), lines
        assert any("deadline" in line for line in lines), lines
    assert api.money(hung_account)["balance"] == before  # every reserve refunded


def _create_calls(db: Database, iid: str) -> int | None:
    with db.read() as s:
        row = s.get(SimWorkload, iid)
        return None if row is None else row.config.get("create_calls")


def _running_events(db: Database, iid: str) -> int:
    with db.read() as s:
        return s.scalar(select(func.count()).select_from(InstanceEvent).where(
            InstanceEvent.instance_id == iid, InstanceEvent.message.startswith(RUNNING)))


def test_a_long_call_is_never_taken_over_by_a_second_process(tmp_path, servers):
    """A create of 40 s under an 8 s lease (five leases; renewed every third of one), two
    processes on one PostgreSQL database: the lease is renewed while the call runs, so only
    one create ever reaches the provider."""
    env = _env(tmp_path, "postgres", GPUCLOUD_LEASE_SECONDS="8")
    first = _start(servers, tmp_path / "one", env)
    _start(servers, tmp_path / "two", env)
    api = _api(first)
    _, headers = api.account(balance=100)
    offer = api.offer(api.provider("slow", call_latency_seconds=40, provision_seconds=0,
                                   call_timeout_seconds=120))
    iid = api.deploy(headers, offer)
    db = _db(env, tmp_path)
    try:
        wait_for(lambda: api.instance(headers, iid)["instance_status"] == "ACTIVE",
                 timeout=120, every=1, what="the instance to be ACTIVE after the long create")
        assert _create_calls(db, iid) == 1
        assert _running_events(db, iid) == 1
    finally:
        db.dispose()


def test_kill_during_a_long_create_leaves_one_workload(tmp_path, servers):
    """kill -9 of the process whose create is under way: the other process takes the row
    over once the lease expires, and exactly one workload comes up."""
    env = _env(tmp_path, "postgres", GPUCLOUD_LEASE_SECONDS="3")
    first = _start(servers, tmp_path / "one", env)
    api = _api(first)
    _, headers = api.account(balance=100)
    # 45 s: the second server must be up before the first's create ends, and starting one
    # took over 15 s on a loaded machine.
    offer = api.offer(api.provider("slow", call_latency_seconds=45, provision_seconds=0,
                                   call_timeout_seconds=120))
    iid = api.deploy(headers, offer)
    db = _db(env, tmp_path)
    try:
        def claimed() -> bool:
            with db.read() as s:
                return s.get(Instance, iid).lock_token is not None

        wait_for(claimed, timeout=10, every=0.05, what="the first process to claim the row")
        second = _start(servers, tmp_path / "two", env)
        first.kill()  # mid-create: the far side never heard the end of it
        assert _create_calls(db, iid) is None
        api = _api(second)
        wait_for(lambda: api.instance(headers, iid)["instance_status"] == "ACTIVE",
                 timeout=180, every=0.5, what="the second process to finish the create")
        with db.read() as s:
            workloads = s.scalar(select(func.count()).select_from(SimWorkload)
                                 .where(SimWorkload.instance_id == iid))
        assert workloads == 1 and _create_calls(db, iid) == 1
        assert _running_events(db, iid) == 1
    finally:
        db.dispose()


def test_logs_of_a_hung_provider_fail_in_time_and_hold_no_request_thread(tmp_path, backend_name,
                                                                         servers):
    """Logs and events ask the provider through the driver-call pool and await it on the event
    loop: twice as many log requests as the server has request threads, all at a provider
    that never answers (its calls block 31 s), each get the documented error once the read
    timeout (3 s) passes, events answer with gpucloud's own lines, and meanwhile requests that
    need a request thread (details, a deploy) are answered."""
    timeout = 3.0
    env = _env(tmp_path, backend_name, GPUCLOUD_DRIVER_READ_TIMEOUT_SECONDS=str(timeout),
               GPUCLOUD_THREADPOOL_SIZE="8")
    server = _start(servers, tmp_path, env)
    api = _api(server)
    _, headers = api.account(balance=1000)
    hung = api.offer(api.provider("hung", hang_calls=True, call_timeout_seconds=30))
    fast = api.offer(api.provider("fast", provision_seconds=0), capacity=5)
    stuck = api.deploy(headers, hung, name="stuck")  # its create hangs too: INITIALIZED
    ready = api.deploy(headers, fast, name="ready")
    wait_for(lambda: api.instance(headers, ready)["instance_status"] == "ACTIVE", timeout=10,
             what="the fast provider's instance to be ACTIVE")

    bound = httpx.Timeout(2 * timeout)  # "answers at all within twice the timeout"

    def read(what: str) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=4 * timeout + 10) as c:
            return c.get(f"/gpu/instances/{stuck}/{what}", headers=headers)

    results: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda w=w: results.append(read(w)), daemon=True)
               for w in ["logs"] * 16 + ["events"] * 2]
    for t in threads:
        t.start()
    time.sleep(0.3)  # the reads are in: every read slot of the hung provider is taken
    with httpx.Client(base_url=server.url, timeout=bound) as other:
        for _ in range(5):
            r = other.get(f"/gpu/instances/{ready}", headers=headers)
            assert r.status_code == 200 and r.json()["instance_status"] == "ACTIVE"
        r = other.get(f"/gpu/instances/{ready}/logs", headers=headers)
        assert r.status_code == 200 and r.json(), r.text  # a healthy provider still answers
        r = other.post("/gpu/instances/", headers=headers,
                       json=api.container_body(fast, name="meanwhile"))
        assert r.status_code == 201, r.text
    for t in threads:
        t.join(4 * timeout + 10)
    assert len(results) == 18
    logs = [r for r in results if r.request.url.path.endswith("/logs")]
    assert len(logs) == 16
    for r in logs:
        assert r.status_code == 400
        assert r.json() == {"detail": "Logs are temporarily unavailable from the provider"}
    for r in results:
        if r.request.url.path.endswith("/events"):
            assert r.status_code == 200
            assert any("scheduled" in line for line in r.json()), r.json()
    # And again, one at a time: each answers at all within twice the timeout.
    with httpx.Client(base_url=server.url, timeout=bound) as c:
        r = c.get(f"/gpu/instances/{stuck}/logs", headers=headers)
        assert r.status_code == 400 and "temporarily unavailable" in r.json()["detail"]
        r = c.get(f"/gpu/instances/{stuck}/events", headers=headers)
        assert r.status_code == 200 and any("scheduled" in line for line in r.json()), r.json()
        # Another account's id at the hung provider is unknown, not "unavailable".
        _, stranger = api.account(balance=10)
        for what in ("logs", "events"):
            r = c.get(f"/gpu/instances/{stuck}/{what}", headers=stranger)
            assert r.status_code == 404, r.text
    # A provider whose own call timeout is shorter than the read timeout: that is the deadline
    # (0.3 s; its calls hang 1.3 s, then fail, which would answer the same after 1.3 s).
    brief = api.offer(api.provider("brief", hang_calls=True, call_timeout_seconds=0.3))
    brief_one = api.deploy(headers, brief, name="brief")
    with httpx.Client(base_url=server.url, timeout=bound) as c:
        for what in ("logs", "events"):
            started = time.monotonic()
            r = c.get(f"/gpu/instances/{brief_one}/{what}", headers=headers)
            assert r.status_code == (400 if what == "logs" else 200), r.text
            assert time.monotonic() - started < 1.0, what


def test_operator_calls_at_a_hung_provider_hold_no_blocking_thread(tmp_path, servers):
    """On SQLite the blocking routes have one thread (the default). An operator reading the
    console of a VM at a provider that never answers, twice at once, gets the documented
    error at the read timeout (3 s), and meanwhile a customer's deploy, which needs that
    thread, is answered: the console read waits in the provider's driver-call slots."""
    timeout = 3.0
    env = _env(tmp_path, "sqlite", GPUCLOUD_DRIVER_READ_TIMEOUT_SECONDS=str(timeout))
    env.pop("GPUCLOUD_THREADPOOL_SIZE", None)
    server = _start(servers, tmp_path, env)
    api = _api(server)
    _, headers = api.account(balance=1000)
    hung = api.offer(api.provider("hung", hang_calls=True, call_timeout_seconds=30),
                     workload="vm")
    fast = api.offer(api.provider("fast", provision_seconds=0), capacity=5)
    vm = api.deploy_vm(headers, hung, name="stuck")

    def console() -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=4 * timeout + 10) as c:
            return c.get(f"/admin/instances/{vm}/console", headers=api.admin)

    results: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: results.append(console()), daemon=True)
               for _ in range(2)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(0.3)  # both console reads are in
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(timeout)) as other:
        r = other.post("/gpu/instances/", headers=headers,
                       json=api.container_body(fast, name="meanwhile"))
        assert r.status_code == 201, r.text
        assert time.monotonic() - started < timeout  # answered before the reads gave up
    for t in threads:
        t.join(4 * timeout + 10)
    assert [r.status_code for r in results] == [400, 400]
    assert all(r.json() == {"detail": "The console is temporarily unavailable from the "
                                      "provider"} for r in results)
    assert time.monotonic() - started < 2 * timeout + 2  # each gave up at its deadline
