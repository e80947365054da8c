"""kill -9 of a real `gpucloud serve` process while it deploys a bare-metal machine, and again
while it wipes it: after each restart the sequence resumes from the machine's real state (the
BMC's power and media), the machine is never rented twice and never offered again unwiped.

Runs on SQLite only: what is tested is the driver's resumption against a real BMC after a
crash, which does not depend on the database; the machine table's behaviour on both backends is
tested in test_redfish_api.py, and process kills on PostgreSQL in test_libvirt_restart.py."""

from __future__ import annotations

import time

import httpx

from tests import libvirt_env as le
from tests import redfish_env as re_
from tests.conftest import ADMIN_KEY
from tests.procs import ServerProcess, free_port

ADMIN = {"X-ADMIN-KEY": ADMIN_KEY}
LEASE = 3  # seconds


def wait_for(check, timeout: float, what: str, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_mid_deploy_and_mid_wipe_resume_from_the_machines_state(tmp_path):
    found = re_.systems()
    # A short lease: the killed process holds one on the instance (its worker was busy), and
    # the next process takes the work over once it expires. LEASE seconds, not one: the live
    # process renews its own lease every third of it with a write, and on a loaded two-core
    # machine a 1 s lease lapsed under a running wipe (its result dropped, the wipe run again).
    env = {"GPUCLOUD_CLOCK": "manual", "GPUCLOUD_ADMIN_KEY": ADMIN_KEY, "GPUCLOUD_DEMO": "0",
           "GPUCLOUD_WORKERS": "1", "GPUCLOUD_DATA_DIR": str(tmp_path),
           "GPUCLOUD_LEASE_SECONDS": str(LEASE)}
    cfg = re_.config(free_port(), [re_.machine(1, found), re_.machine(2, found)])
    key = le.Key()
    server = ServerProcess(tmp_path, env).start()
    try:
        c = httpx.Client(base_url=server.url, timeout=60)
        acct = c.post("/admin/accounts", json={"name": "a", "balance": "100"},
                      headers=ADMIN).json()
        user = {"X-API-KEY": acct["api_key"]}
        r = c.post("/admin/providers", headers=ADMIN, json={
            "name": "rack", "driver": "redfish", "config": cfg})
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        offer = c.post("/admin/offers", headers=ADMIN, json={
            "provider_id": pid, "workload": "baremetal", "location": "here", "country": "US",
            "os_options": [re_.IMAGE],
            "gpu": {"vendor": "nvidia", "model": "h100", "vram": "80Gi", "interface": "SXM"},
            "gpu_count": 1, "vcpu": 1, "memory_gib": 1, "storage_gib": 1,
            "price_hour": "1", "capacity": 2}).json()
        r = c.post("/gpu/instances/baremetal", headers=user, json={
            "plan_id": offer["id"], "name": "phoenix", "ssh_key": key.public,
            "os_image": re_.IMAGE})
        assert r.status_code == 201, r.text
        iid = r.json()["instance_id"]
        base = f"/gpu/instances/baremetal/{iid}"

        def log() -> list[str]:
            return c.get(f"{base}/events", headers=user).json()

        # The worker starts the deploy at once: kill as soon as the BMC sequence began.
        wait_for(lambda: any("Deploying on machine" in e for e in log()), 120,
                 "the deploy to start")
    finally:
        server.kill()

    def machines(c) -> dict[str, tuple[str, str | None]]:
        return {m["name"]: (m["state"], m["instance_id"])
                for m in c.get("/admin/machines", headers=ADMIN).json()}

    def settled(c, want: str):
        def check():
            c.post("/admin/clock", json={"advance_seconds": re_.CLOCK_STEP}, headers=ADMIN)
            d = c.get(base, headers=user).json()
            return d if d["status"] == want else None
        return check

    server = ServerProcess(tmp_path, env).start()
    try:
        c = httpx.Client(base_url=server.url, timeout=60)
        m = machines(c)
        [mine] = [n for n, (_, owner) in m.items() if owner == iid]
        other = "bm2" if mine == "bm1" else "bm1"
        assert m[mine] == ("rented", iid) and m[other] == ("free", None)
        time.sleep(LEASE + 0.2)  # the killed process's lease has expired (wall clock)
        d = wait_for(settled(c, "ACTIVE"), 700, "ACTIVE after the restart", step=1)
        i = int(mine[-1])
        assert d["ssh_connection"] == f"ssh -p {re_.SSH_BASE + i} root@127.0.0.1"
        assert le.ssh_run(key, "127.0.0.1", re_.SSH_BASE + i, "root",
                          "hostname; dd if=/dev/urandom of=/dev/vda bs=1M count=4 conv=fsync "
                          "2>/dev/null").strip() == "phoenix"
        events = log()
        # Resumed, not restarted from scratch: at most the one power-on the kill may have cut.
        assert sum("Booting" in e for e in events) <= 2, events
        assert machines(c) == {mine: ("rented", iid), other: ("free", None)}  # rented once
        assert c.delete(base, headers=user).status_code == 204
        wait_for(lambda: any("Wiping" in e for e in log()), 120, "the wipe to start")
    finally:
        server.kill()

    server = ServerProcess(tmp_path, env).start()
    try:
        c = httpx.Client(base_url=server.url, timeout=60)
        # Not offered again: the wipe did not finish.
        assert machines(c)[mine] == ("dirty", iid)
        time.sleep(LEASE + 0.2)

        def wiped():
            c.post("/admin/clock", json={"advance_seconds": re_.CLOCK_STEP}, headers=ADMIN)
            return machines(c)[mine] == ("free", None)

        wait_for(wiped, 600, "the wipe to finish after the restart", step=1)
        assert re_.domstate(i) == "shut off"
        assert set(re_.disk_bytes(i, tmp_path)) == {0}
        events = log()
        assert any("wiped and offered again" in e for e in events), events
        assert sum("Wiping" in e for e in events) == 2, events  # the cut wipe, then a whole one
        assert machines(c) == {"bm1": ("free", None), "bm2": ("free", None)}
    finally:
        server.stop()
