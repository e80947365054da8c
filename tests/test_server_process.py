"""The server as a newcomer and an operator run it: `gpucloud serve` processes, restarts."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import ADMIN_KEY, PG_DB, fresh_pg_database
from tests.factories import money
from tests.procs import ServerProcess

ADMIN = {"X-ADMIN-KEY": ADMIN_KEY}


def test_embedded_default_prints_keys_and_serves_demo_plans(tmp_path):
    """No configuration at all: SQLite file in the working directory, demo catalog, keys."""
    server = ServerProcess(tmp_path).start()
    try:
        admin_keys = server.printed(r"Admin key \(shown once, keep it\): (adm_\S+)")
        demo_keys = server.printed(r"API key: (gpc_\S+)")
        assert len(admin_keys) == 1 and len(demo_keys) == 1
        r = httpx.get(server.url + "/gpu/plans/", headers={"X-API-KEY": demo_keys[0]})
        assert r.status_code == 200 and len(r.json()) >= 5
        vms = httpx.get(server.url + "/gpu/plans/vms", headers={"X-API-KEY": demo_keys[0]})
        assert vms.status_code == 200 and vms.json()["data"]
        assert (tmp_path / "gpucloud.db").exists()
        me = httpx.get(server.url + "/admin/clock", headers={"X-ADMIN-KEY": admin_keys[0]})
        assert me.status_code == 200
    finally:
        server.stop()
    # Second start: the admin key is not printed again (it is stored hashed), a new demo
    # key is, and both old and new demo keys work.
    again = ServerProcess(tmp_path).start()
    try:
        assert again.printed(r"Admin key") == []
        new_keys = again.printed(r"API key: (gpc_\S+)")
        assert len(new_keys) == 1 and new_keys[0] != demo_keys[0]
        for key in (demo_keys[0], new_keys[0]):
            r = httpx.get(again.url + "/gpu/account", headers={"X-API-KEY": key})
            assert r.status_code == 200 and r.json()["name"] == "demo"
    finally:
        again.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def server_env(request, tmp_path):
    # A short lease: the killed process may hold one on the instance (the worker starts a
    # deploy at once), and the next process may only take the work over once it expires.
    env = {"GPUCLOUD_CLOCK": "manual", "GPUCLOUD_ADMIN_KEY": ADMIN_KEY, "GPUCLOUD_DEMO": "0",
           "GPUCLOUD_WORKERS": "1", "GPUCLOUD_DATA_DIR": str(tmp_path),
           "GPUCLOUD_LEASE_SECONDS": "1"}
    if request.param == "postgres":
        env["GPUCLOUD_DATABASE_URL"] = fresh_pg_database(f"{PG_DB}_proc").replace(
            "postgresql+psycopg://", "postgresql://")
    return env


def test_state_survives_a_hard_restart(tmp_path, server_env):
    server = ServerProcess(tmp_path, server_env).start()
    try:
        c = httpx.Client(base_url=server.url, timeout=30)
        acct = c.post("/admin/accounts", json={"name": "a", "balance": "100"}, headers=ADMIN).json()
        key = {"X-API-KEY": acct["api_key"]}
        pid = c.post("/admin/providers", json={"name": "sim", "driver": "simulated",
                                               "config": {"provision_seconds": 5}},
                     headers=ADMIN).json()["id"]
        offer = c.post("/admin/offers", headers=ADMIN, json={
            "provider_id": pid, "workload": "container",
            "gpu": {"vendor": "nvidia", "model": "a100", "vram": "80Gi", "interface": "SXM"},
            "gpu_count": 1, "vcpu": 8, "memory_gib": 64, "storage_gib": 100,
            "price_hour": "1.22", "countries": ["US"], "capacity": 3}).json()
        r = c.post("/gpu/instances/", headers=key, json={
            "plan_id": offer["id"], "name": "survivor",
            "container_settings": {"image": "docker.io/library/ubuntu:22.04",
                                   "expose": [{"port": 22, "protocol": "tcp"}]}})
        assert r.status_code == 201, r.text
        iid = r.json()["instance_id"]
        # Killed while the instance is still provisioning: the work must resume after restart.
    finally:
        server.kill()

    server = ServerProcess(tmp_path, server_env).start()
    try:
        c = httpx.Client(base_url=server.url, timeout=30)
        before = c.get(f"/gpu/instances/{iid}", headers=key).json()
        assert before["instance_status"] == "INITIALIZED"
        time.sleep(1.2)  # any lease of the killed process has expired (wall clock)
        c.post("/admin/clock", json={"advance_seconds": 30}, headers=ADMIN)
        after = c.get(f"/gpu/instances/{iid}", headers=key).json()
        assert after["instance_status"] == "ACTIVE"
        assert after["billing"]["total_spendings"] == 1.22
        acct_now = c.get(f"/admin/accounts/{acct['id']}", headers=ADMIN).json()
        # 100 - 3 × 1.22 reserved at deploy; the reserve now holds two hours.
        assert str(money(acct_now["balance"])) == "96.34"
        assert str(money(acct_now["reserved"])) == "2.44"
    finally:
        server.stop()


def test_openapi_and_swagger_are_served(tmp_path):
    server = ServerProcess(tmp_path, {"GPUCLOUD_DEMO": "0", "GPUCLOUD_ADMIN_KEY": ADMIN_KEY}).start()
    try:
        spec = httpx.get(server.url + "/gpu/api-docs/openapi.json").json()
        paths = spec["paths"]
        for path in ["/gpu/plans/", "/gpu/plans/vms", "/gpu/plans/baremetal", "/gpu/default-images/",
                     "/gpu/instances/", "/gpu/instances/{instance_id}", "/gpu/instances/vms",
                     "/gpu/instances/baremetal", "/gpu/account", "/gpu/account/transactions",
                     "/admin/accounts", "/admin/providers", "/admin/offers", "/admin/clock"]:
            assert any(p.rstrip("/") == path.rstrip("/") or p == path for p in paths), path
        op_ids = [op.get("operationId") for item in paths.values() for op in item.values()]
        assert all(op_ids) and len(op_ids) == len(set(op_ids))
        ui = httpx.get(server.url + "/gpu/api-docs")
        assert ui.status_code == 200 and "swagger" in ui.text.lower()
    finally:
        server.stop()
