"""`gpucloud serve --workers N`: N server processes on PostgreSQL, refused on SQLite."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from tests.conftest import ADMIN_KEY, PG_DB, fresh_pg_database, postgres_only
from tests.podman_env import wait_for
from tests.procs import GPUCLOUD, ServerProcess

ADMIN = {"X-ADMIN-KEY": ADMIN_KEY}


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_several_processes_on_sqlite_are_refused_with_a_reason(tmp_path):
    r = subprocess.run([GPUCLOUD, "serve", "--workers", "2", "--port", "1"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "GPUCLOUD_LOCAL_PROVIDER": "0"})
    assert r.returncode == 2
    assert "needs PostgreSQL" in r.stderr
    assert not (tmp_path / "gpucloud.db").exists()  # refused before touching anything


@postgres_only
def test_two_processes_serve_and_share_the_background_work(backend, tmp_path):
    url = fresh_pg_database(PG_DB + "_procs").replace("postgresql+psycopg://", "postgresql://")
    server = ServerProcess(tmp_path, {
        "GPUCLOUD_DATABASE_URL": url, "GPUCLOUD_PROCESSES": "2", "GPUCLOUD_CLOCK": "manual",
        "GPUCLOUD_ADMIN_KEY": ADMIN_KEY, "GPUCLOUD_DATA_DIR": str(tmp_path),
        "GPUCLOUD_LOG_FORMAT": "json"}).start()
    try:
        workers = [p for p in _children(server.proc.pid)
                   if b"gpucloud" in Path(f"/proc/{p}/cmdline").read_bytes()
                   or b"spawn" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) >= 2, workers
        c = httpx.Client(base_url=server.url, timeout=30)
        acct = c.post("/admin/accounts", json={"name": "a", "balance": "1000"},
                      headers=ADMIN).json()
        key = {"X-API-KEY": acct["api_key"]}
        # Running at once: the two processes' workers activate the deploys in wall time, and
        # the clock moves once they are all ACTIVE. (Moved while a create is still under way,
        # the create would finish an hour late, past its deadline: POST /admin/clock does not
        # wait for a step in flight, docs/api.md.)
        pid = c.post("/admin/providers", json={"name": "sim", "driver": "simulated",
                                               "config": {"provision_seconds": 0}},
                     headers=ADMIN).json()["id"]
        offer = c.post("/admin/offers", headers=ADMIN, json={
            "provider_id": pid, "workload": "container",
            "gpu": {"vendor": "nvidia", "model": "a100", "vram": "80Gi", "interface": "SXM"},
            "gpu_count": 1, "vcpu": 8, "memory_gib": 64, "storage_gib": 100,
            "price_hour": "1", "countries": ["US"], "capacity": 50}).json()
        ids = []
        for i in range(12):
            r = c.post("/gpu/instances/", headers=key, json={
                "plan_id": offer["id"], "name": f"box{i}",
                "container_settings": {"image": "docker.io/library/ubuntu:22.04",
                                       "expose": [{"port": 22, "protocol": "tcp"}]}})
            assert r.status_code == 201, r.text
            ids.append(r.json()["instance_id"])
        wait_for(lambda: {c.get(f"/gpu/instances/{i}", headers=key).json()["instance_status"]
                          for i in ids} == {"ACTIVE"},
                 timeout=120, every=0.5, what="the 12 deploys to be ACTIVE")
        assert c.post("/admin/clock", json={"advance_seconds": 3700},
                      headers=ADMIN).status_code == 200
        spent = set()
        for iid in ids:
            r = c.get(f"/gpu/instances/{iid}", headers=key).json()
            assert r["instance_status"] == "ACTIVE", r
            spent.add(r["billing"]["total_spendings"])
        audit = c.get("/admin/audit", headers=ADMIN).json()
        assert audit["ok"] is True, audit
        # Same plan, same times: every instance charged the same, exactly once per hour,
        # whichever process did the work.
        assert len(spent) == 1 and spent.pop() > 0
        assert c.get("/gpu/account", headers=key).json()["spent"] == 12 * \
            c.get(f"/gpu/instances/{ids[0]}", headers=key).json()["billing"]["total_spendings"]
        metrics = c.get("/metrics", headers=ADMIN)
        assert metrics.status_code == 200
        assert 'gpucloud_instances{state="ACTIVE",workload="container"} 12.0' in metrics.text
    finally:
        server.stop()
