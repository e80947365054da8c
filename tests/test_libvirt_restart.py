"""A server killed with SIGKILL while it creates a VM: after a restart the work resumes and
finds the domain it already made — exactly one domain, the instance ACTIVE.

The guest boots once, on PostgreSQL. A restart during a deploy is
tested on both SQLite and PostgreSQL with the simulated driver in test_server_process.py, and
real guests run on SQLite in test_libvirt_api.py; a second boot here would test no other code."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from tests import libvirt_env as le
from tests.conftest import ADMIN_KEY, PG_DB, fresh_pg_database
from tests.procs import ServerProcess, free_port

ADMIN = {"X-ADMIN-KEY": ADMIN_KEY}


@pytest.fixture
def server_env(tmp_path):
    # A short lease: the killed process holds one on the instance (its worker was creating),
    # and the next process may only take the work over once it expires.
    return {"GPUCLOUD_CLOCK": "manual", "GPUCLOUD_ADMIN_KEY": ADMIN_KEY, "GPUCLOUD_DEMO": "0",
            "GPUCLOUD_WORKERS": "1", "GPUCLOUD_DATA_DIR": str(tmp_path),
            "GPUCLOUD_LEASE_SECONDS": "1",
            "GPUCLOUD_DATABASE_URL": fresh_pg_database(f"{PG_DB}_libvirt_proc").replace(
                "postgresql+psycopg://", "postgresql://")}


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_during_create_then_restart_gives_one_domain_and_active(tmp_path, server_env):
    le.require_libvirt()
    storage = le.storage_dir()
    lo = free_port()
    iid = None
    server = ServerProcess(tmp_path, server_env).start()
    try:
        c = httpx.Client(base_url=server.url, timeout=30)
        acct = c.post("/admin/accounts", json={"name": "a", "balance": "100"},
                      headers=ADMIN).json()
        key = {"X-API-KEY": acct["api_key"]}
        r = c.post("/admin/providers", headers=ADMIN, json={
            "name": "vm-host", "driver": "libvirt", "config": le.config(storage, (lo, lo))})
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        offer = c.post("/admin/offers", headers=ADMIN, json={
            "provider_id": pid, "workload": "vm", "location": "here",
            "country": "US", "os_options": [le.IMAGE],
            "gpu": {"vendor": "nvidia", "model": "h100", "vram": "80Gi", "interface": "SXM"},
            "gpu_count": 1, "vcpu": 1, "memory_gib": 1, "storage_gib": 3,
            "price_hour": "1", "capacity": 2}).json()
        r = c.post("/gpu/instances/vms", headers=key, json={
            "plan_id": offer["id"], "name": "survivor", "ssh_key": le.Key().public,
            "os_image": le.IMAGE})
        assert r.status_code == 201, r.text
        iid = r.json()["instance_id"]
        # The worker starts the create at once; kill the server as soon as the domain exists,
        # while the instance is still provisioning.
        wait_for(lambda: f"gpucloud-{iid}" in le.domain_names(), 60, "the domain")
    finally:
        server.kill()

    server = ServerProcess(tmp_path, server_env).start()
    try:
        c = httpx.Client(base_url=server.url, timeout=30)
        assert c.get(f"/gpu/instances/vms/{iid}", headers=key).json()["status"] == "INITIALIZED"
        time.sleep(1.2)  # the killed process's lease has expired (wall clock)

        def settled():
            c.post("/admin/clock", json={"advance_seconds": 2}, headers=ADMIN)
            d = c.get(f"/gpu/instances/vms/{iid}", headers=key).json()
            return d if d["status"] != "INITIALIZED" else None

        d = wait_for(settled, le.BOOT_TIMEOUT, "the VM to settle")
        events = c.get(f"/gpu/instances/vms/{iid}/events", headers=key).json()
        assert d["status"] == "ACTIVE", events
        assert d["ssh_connection"] == f"ssh -p {lo} debian@127.0.0.1"
        assert le.domains_of(pid) == [iid]  # exactly one domain for the provider
    finally:
        server.stop()
        le.remove_domains([iid] if iid else [])
        shutil.rmtree(storage, ignore_errors=True)
