"""API throughput: gpucloud on SQLite with the demo catalog vs a bare Starlette app.

    .venv/bin/python bench/api.py [--seconds 5] [--connections 32]

Starts `gpucloud serve` (SQLite in a temp dir, demo catalog, background workers off so they
don't compete for the two cores) and a bare Starlette app returning the same bytes as
GET /gpu/plans/, drives each with the same load generator, and prints requests/s, p50/p99
latency and the ratio to the baseline. Deploys go to a high-capacity offer on an account with
a large balance so they measure the API, not running out of either.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
import loadgen  # noqa: E402
from servers import free_port, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "bench-admin-key"


def start_gpucloud(tmp: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, GPUCLOUD_DATA_DIR=str(tmp), GPUCLOUD_ADMIN_KEY=ADMIN,
               GPUCLOUD_WORKERS="0", GPUCLOUD_LOCAL_PROVIDER="0", GPUCLOUD_LOG_LEVEL="warning")
    env.pop("GPUCLOUD_DATABASE_URL", None)
    proc = subprocess.Popen([str(ROOT / ".venv/bin/gpucloud"), "serve", "--port", str(port)],
                            env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_ready(f"http://127.0.0.1:{port}/gpu/api-docs/openapi.json")
    return proc


def setup(base: str) -> tuple[str, str, str]:
    admin = {"X-ADMIN-KEY": ADMIN}
    with httpx.Client(base_url=base, timeout=30) as c:
        acct = c.post("/admin/accounts", json={"name": "bench", "balance": "1000000000"},
                      headers=admin).json()
        prov = c.post("/admin/providers", json={"name": "bench-sim", "driver": "simulated",
                                                "config": {}}, headers=admin).json()
        offer = c.post("/admin/offers", headers=admin, json={
            "provider_id": prov["id"], "workload": "container",
            "gpu": {"vendor": "nvidia", "model": "h100", "vram": "80Gi", "interface": "SXM"},
            "gpu_count": 1, "vcpu": 16, "memory_gib": 128, "storage_gib": 200,
            "price_hour": "0.5", "countries": ["US"], "capacity": 100_000_000}).json()
        key = acct["api_key"]
        r = c.post("/gpu/instances/", headers={"X-API-KEY": key},
                   json=deploy_body(offer["id"]))
        r.raise_for_status()
        return key, offer["id"], r.json()["instance_id"]


def deploy_body(plan_id: str) -> dict:
    return {"plan_id": plan_id, "name": "bench",
            "container_settings": {"image": "docker.io/library/ubuntu:22.04",
                                   "expose": [{"port": "22", "protocol": "tcp"}]}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        port, bare_port = free_port(), free_port()
        server = start_gpucloud(tmp, port)
        bare = None
        try:
            base = f"http://127.0.0.1:{port}"
            key, plan_id, instance_id = setup(base)
            plans_body = httpx.get(base + "/gpu/plans/", headers={"X-API-KEY": key}).content
            (tmp / "body.json").write_bytes(plans_body)
            bare = subprocess.Popen([sys.executable, str(ROOT / "bench/bare_app.py"),
                                     str(bare_port), str(tmp / "body.json")])
            wait_ready(f"http://127.0.0.1:{bare_port}/bare")

            hdr = {"X-API-KEY": key}
            host = "127.0.0.1"
            cases = [
                ("bare Starlette (same bytes as /gpu/plans/)", bare_port, "GET", "/bare", {}, None),
                ("GET /gpu/plans/", port, "GET", "/gpu/plans/", hdr, None),
                ("GET /gpu/plans/vms", port, "GET", "/gpu/plans/vms", hdr, None),
                ("GET /gpu/instances/{id}", port, "GET", f"/gpu/instances/{instance_id}", hdr,
                 None),
                ("POST /gpu/instances/", port, "POST", "/gpu/instances/", hdr,
                 json.dumps(deploy_body(plan_id)).encode()),
            ]
            print(f"plans body: {len(plans_body)} bytes; {args.connections} connections, "
                  f"{args.seconds:.0f} s per endpoint; SQLite; {os.cpu_count()} cores\n")
            print(f"{'endpoint':45} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs bare':>8}  status")
            baseline = None
            for label, p, method, path, headers, body in cases:
                req = loadgen.build_request(method, path, f"{host}:{p}", headers, body)
                res = loadgen.measure(host, p, req, seconds=args.seconds,
                                      connections=args.connections)
                baseline = baseline or res.rps
                print(f"{label:45} {res.rps:9.0f} {res.pct(50):8.2f} {res.pct(99):8.2f} "
                      f"{res.rps / baseline:7.2f}x  {res.statuses}")
        finally:
            for proc in (server, bare):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)


if __name__ == "__main__":
    main()
