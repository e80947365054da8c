"""Test harness: every test runs against the real app, over HTTP (ASGI), on a real database —
once on SQLite and once on PostgreSQL.

- `backend` (session): a migrated database per backend. GPUCLOUD_TEST_BACKENDS=sqlite limits it.
- `rt` (per test): all tables emptied, the manual clock set to START, a fresh Runtime.
- `client` (per test): an httpx-compatible TestClient on a fresh app; background workers are
  off, so time only moves through POST /admin/clock and every test is deterministic.
- `demo`: the demo catalog seeded; `api` gives factories (accounts, deploys, clock moves).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from xdist.scheduler import LoadScopeScheduling

from gpucloud.app import create_app
from gpucloud.clock import CLOCK_KEY
from gpucloud.db import Database
from gpucloud.migrations.run import upgrade
from gpucloud.models import Base
from gpucloud.runtime import Runtime
from gpucloud.settings import Settings
from tests.factories import Api

ADMIN_KEY = "test-admin-key"
START = dt.datetime(2026, 1, 5, 10, 0, 0, tzinfo=dt.timezone.utc)  # a Monday, on the hour
PG_ADMIN_URL = os.environ.get("GPUCLOUD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Several engineers (or CI jobs) can share one PostgreSQL server: each picks its own database,
# and under pytest-xdist (./scripts/test runs several workers) each worker its own.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
PG_DB = os.environ.get("GPUCLOUD_TEST_PG_DB", "gpucloud_test") + (f"_{_WORKER}" if _WORKER else "")

# Modules that drive one shared piece of real infrastructure form one unit of work each, which
# one xdist worker runs from start to end as in a serial run: the libvirt guests of
# test_libvirt_api share a host with the reconciler tests, the BMC emulator's machines are few
# and stateful, and the Podman tests count the engine's containers.
INFRA_GROUPS = {
    "tests/test_libvirt_api.py": "libvirt", "tests/test_libvirt_restart.py": "libvirt",
    "tests/test_libvirt_driver.py": "libvirt",
    "tests/test_redfish_api.py": "redfish", "tests/test_redfish_restart.py": "redfish",
    "tests/test_docker_api.py": "podman", "tests/test_docker_driver.py": "podman",
}


def _backends() -> list[str]:
    raw = os.environ.get("GPUCLOUD_TEST_BACKENDS", "sqlite,postgres")
    return [b.strip() for b in raw.split(",") if b.strip()]


def _pg_url(dbname: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname


def fresh_pg_database(name: str) -> str:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return _pg_url(name)


# For behaviour only PostgreSQL has (row locks other transactions can hold): the test runs on
# the PostgreSQL backend alone.
postgres_only = pytest.mark.parametrize(
    "backend", [b for b in _backends() if b == "postgres"], indirect=True)


@pytest.fixture(scope="session", params=_backends())
def backend(request, tmp_path_factory) -> dict:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "test.db"
        url = f"sqlite:///{path}"
    else:
        url = fresh_pg_database(PG_DB)
    data_dir = tmp_path_factory.mktemp(f"data-{request.param}")
    settings = make_settings(url, data_dir)
    db = Database(settings)
    upgrade(db)
    db.dispose()
    return {"name": request.param, "url": url, "data_dir": data_dir}


def make_settings(url: str, data_dir: Path, **overrides) -> Settings:
    # Rate limits off: tests send requests as fast as they can; test_limits.py turns them on.
    values = dict(database_url=url, data_dir=data_dir, admin_key=ADMIN_KEY, clock="manual",
                  demo=False, workers=False, secret_key=None, local_provider=False,
                  plans_cache_seconds=0.0, rate_limits=False)
    values.update(overrides)
    return Settings(**values)


def reset_database(db: Database, now: dt.datetime = START) -> None:
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with db.write() as s:
        if db.is_sqlite:
            for name in tables:
                s.execute(text(f"DELETE FROM {name}"))
        else:
            s.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        s.execute(text("INSERT INTO meta (key, value) VALUES (:k, :v)"),
                  {"k": CLOCK_KEY, "v": now.isoformat()})


@pytest.fixture
def settings_overrides() -> dict:
    """Override in a test module to change server settings for its tests."""
    return {}


@pytest.fixture
def rt(backend, settings_overrides):
    settings = make_settings(backend["url"], backend["data_dir"], **settings_overrides)
    db = Database(settings)
    reset_database(db)
    db.dispose()
    runtime = Runtime.build(settings, migrate=False)
    yield runtime
    runtime.close()


@pytest.fixture
def client(rt):
    app = create_app(rt=rt)
    with TestClient(app) as c:
        yield c


@pytest.fixture
def api(client, rt) -> Api:
    return Api(client, rt, ADMIN_KEY)


@pytest.fixture
def demo(api) -> Api:
    """The demo catalog seeded (providers, offers, default images)."""
    from gpucloud.catalog.demo import seed_demo_catalog

    with api.rt.db.write() as s:
        seed_demo_catalog(s, api.rt.clock.now())
    api.rt.invalidate("plans")
    return api


def pg_available() -> bool:
    return subprocess.call(["pg_isready", "-h", "127.0.0.1", "-q"]) == 0


class LiveServer:
    """The real app served by uvicorn on a free loopback port, in a thread of the test process."""

    def __init__(self, app):
        import threading

        import uvicorn

        from tests.procs import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("live server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def live_server(rt):
    """A real HTTP server on the per-test runtime (same database and manual clock as `api`)."""
    server = LiveServer(create_app(rt=rt)).start()
    yield server
    server.stop()


@pytest.fixture
def engine():
    """The real container engine (Podman here); fails, never skips, when it does not answer."""
    from tests import podman_env

    return podman_env.require_engine()


class InfraGroupScheduling(LoadScopeScheduling):
    """xdist's load scheduling with INFRA_GROUPS as units; every other test is a unit of its
    own. (xdist's `loadgroup` marks do this by renaming items, which pytest 9.2 ignores.)
    Larger units are handed out first, so the groups start at once, one per worker."""

    def _split_scope(self, nodeid: str) -> str:
        return INFRA_GROUPS.get(nodeid.split("::", 1)[0], nodeid)


def pytest_xdist_make_scheduler(config, log):
    return InfraGroupScheduling(config, log)
