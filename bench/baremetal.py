"""Bare metal through gpucloud vs the same Redfish sequence run directly with sushy.

    scripts/setup-redfish.sh          # once: machines behind sushy-emulator, images cached
    .venv/bin/python bench/baremetal.py [--runs 3]

Starts `gpucloud serve` (SQLite in a temp dir, system clock, workers on) with a `redfish`
provider of one machine (gpucloud-bm-1), then alternates, `--runs` times:
- direct: the driver's own collaborators (the same ISO, media server and BMC calls) run by
  hand: force off, eject, insert, boot CD, power on, SSH banner polled every 0.2 s; then the
  release: force off, eject, insert the wipe ISO, boot CD, power on, wait for power off, eject,
  boot disk;
- gpucloud: POST /gpu/instances/baremetal until ACTIVE (polled every 0.2 s), then DELETE until
  GET /admin/machines shows the machine free again.
Prints every run, the medians and the overheads (target: under 2 s each at the median). The
boot and the wipe dominate both and vary with the host's load: say how loaded it was.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from servers import free_port, wait_ready  # noqa: E402

from gpucloud.drivers.redfish.bmc import Bmc  # noqa: E402
from gpucloud.drivers.redfish.driver import meta_data, user_data  # noqa: E402
from gpucloud.drivers.redfish.media import (  # noqa: E402
    MediaServer,
    MediaStore,
    build_iso,
    seed_initrd,
)
from gpucloud.drivers.ssh_probe import ssh_banner  # noqa: E402
from tests import redfish_env as kit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "bench-admin-key"
KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl "
       "bench@gpucloud")
POLL = 0.2
TIMEOUT = 600.0


def start_server(tmp: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, GPUCLOUD_DATA_DIR=str(tmp), GPUCLOUD_ADMIN_KEY=ADMIN,
               GPUCLOUD_LOCAL_PROVIDER="0", GPUCLOUD_DEMO="0", GPUCLOUD_LOG_LEVEL="warning",
               GPUCLOUD_WORKER_INTERVAL_SECONDS="0.2")
    env.pop("GPUCLOUD_DATABASE_URL", None)
    proc = subprocess.Popen([str(ROOT / ".venv/bin/gpucloud"), "serve", "--port", str(port)],
                            env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}/gpu/api-docs/openapi.json")
    except RuntimeError:
        proc.kill()
        raise
    return proc


def direct(cfg: dict, n: int) -> tuple[float, float]:
    """(deploy to SSH banner, release to clean), the driver's steps run by hand."""
    m = cfg["machines"][0]
    bmc = Bmc(m["bmc"]["url"], m["bmc"]["system"], "admin", kit.password(), False)
    port = free_port()  # its own media server: gpucloud's holds the provider's port
    store = MediaStore(cfg["media_dir"] + "-direct", f"http://127.0.0.1:{port}", 3600)
    server = MediaServer(store, f"127.0.0.1:{port}")
    image, wipe = cfg["images"][kit.IMAGE], cfg["wipe"]
    iid = str(uuid.uuid4())
    server.start()
    try:
        t0 = time.perf_counter()
        url = store.ensure(iid, lambda iso: build_iso(
            iso, image["kernel"], image["initrd"], "console=ttyS0,115200",
            seed_initrd(user_data(KEY), meta_data(iid, f"direct-{n}"))))
        bmc.force_off()
        bmc.insert(url)
        bmc.boot_from("cd")
        bmc.power_on()
        while ssh_banner(m["ssh"]["host"], m["ssh"]["port"], timeout=1.0) is None:
            if time.perf_counter() - t0 > TIMEOUT:
                raise RuntimeError("direct deploy never answered SSH")
            time.sleep(POLL)
        deploy = time.perf_counter() - t0
        t0 = time.perf_counter()
        bmc.force_off()
        bmc.eject()
        store.drop(iid)
        bmc.insert(store.ensure("wipe", lambda iso: build_iso(
            iso, wipe["kernel"], wipe["initrd"], "console=ttyS0,115200", None)))
        bmc.boot_from("cd")
        bmc.power_on()
        while bmc.power() != "off":
            if time.perf_counter() - t0 > TIMEOUT:
                raise RuntimeError("direct wipe never powered off")
            time.sleep(POLL)
        bmc.eject()
        bmc.boot_from("hdd")
        return deploy, time.perf_counter() - t0
    finally:
        server.stop()


def via_gpucloud(c: httpx.Client, headers: dict, offer: str, n: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    r = c.post("/gpu/instances/baremetal", headers=headers, json={
        "plan_id": offer, "name": f"bench-{n}", "ssh_key": KEY, "os_image": kit.IMAGE})
    r.raise_for_status()
    iid = r.json()["instance_id"]
    while (status := c.get(f"/gpu/instances/baremetal/{iid}",
                           headers=headers).json()["status"]) != "ACTIVE":
        if status != "INITIALIZED" or time.perf_counter() - t0 > TIMEOUT:
            events = c.get(f"/gpu/instances/baremetal/{iid}/events", headers=headers).json()
            raise RuntimeError(f"{iid} is {status}: {events[-3:]}")
        time.sleep(POLL)
    deploy = time.perf_counter() - t0
    t0 = time.perf_counter()
    c.delete(f"/gpu/instances/baremetal/{iid}", headers=headers).raise_for_status()
    admin = {"X-ADMIN-KEY": ADMIN}
    while c.get("/admin/machines", headers=admin).json()[0]["state"] != "free":
        if time.perf_counter() - t0 > TIMEOUT:
            raise RuntimeError("the machine never came back free")
        time.sleep(POLL)
    return deploy, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    found = kit.systems()
    cfg = kit.config(free_port(), [kit.machine(1, found)], graceful_off_seconds=0)
    tmp = Path(tempfile.mkdtemp(prefix="gpucloud-bench-bm-"))
    port = free_port()
    server = start_server(tmp, port)
    rows = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            admin = {"X-ADMIN-KEY": ADMIN}
            acct = c.post("/admin/accounts", json={"name": "bench", "balance": "100000"},
                          headers=admin).json()
            prov = c.post("/admin/providers", headers=admin, json={
                "name": "bench-bm", "driver": "redfish", "config": cfg})
            prov.raise_for_status()
            offer = c.post("/admin/offers", headers=admin, json={
                "provider_id": prov.json()["id"], "workload": "baremetal",
                "location": "bench", "country": "US", "os_options": [kit.IMAGE],
                "gpu": {"vendor": "nvidia", "model": "h100", "vram": "80Gi",
                        "interface": "SXM"}, "gpu_count": 1, "vcpu": 1, "memory_gib": 1,
                "storage_gib": 1, "price_hour": "0.1", "capacity": 1})
            offer.raise_for_status()
            headers = {"X-API-KEY": acct["api_key"]}
            for n in range(args.runs):
                d = direct(cfg, n)
                g = via_gpucloud(c, headers, offer.json()["id"], n)
                rows.append((d, g))
                print(f"run {n + 1}: deploy direct {d[0]:5.1f} s gpucloud {g[0]:5.1f} s   "
                      f"release direct {d[1]:5.1f} s gpucloud {g[1]:5.1f} s", flush=True)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    for i, what in ((0, "deploy to SSH"), (1, "release to clean")):
        d = statistics.median(r[0][i] for r in rows)
        g = statistics.median(r[1][i] for r in rows)
        print(f"{what}, median of {args.runs}: direct {d:.1f} s, gpucloud {g:.1f} s, "
              f"overhead {g - d:+.1f} s (target: under 2 s)")
    print(f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
