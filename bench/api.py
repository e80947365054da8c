"""API throughput: every authenticated GET under /gpu, and deploy, against a bare Starlette app.

    .venv/bin/python bench/api.py [--db sqlite,postgres] [--seconds 2] [--procs 1]
                                  [--only instances] [--pg-url postgresql://…/gpucloud_bench]

For each database: starts `gpucloud serve` (demo catalog, background workers off so they do
not compete for the cores, manual clock; metrics, request ids and the access log on as in
production, the log going to /dev/null), fills one account with 100 containers, 100 VMs and
100 bare-metal servers (so each instance list holds 100), activates them by moving the clock,
and starts a bare Starlette app returning the same bytes as GET /gpu/plans/. Each endpoint is
driven at 32 connections and at 1 connection (wrk when installed, else bench/loadgen.py's
asyncio client). The table shows req/s, p50/p99 and the ratio to the bare app at 32
connections, measured again right before each endpoint (the `bare` column), so that load
from other processes moving during the run does not skew the ratios of later rows.

Figures are noisy on a shared 2-core machine: compare the ratios within one run.
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
from servers import free_port, fresh_pg, wait_ready  # noqa: E402

ROOT = Path(os.environ.get("GPUCLOUD_BENCH_ROOT", Path(__file__).resolve().parent.parent))
ADMIN = "bench-admin-key"
HOST = "127.0.0.1"
N = 100
SSH_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl "
           "bench@gpucloud")


def start_gpucloud(tmp: Path, port: int, db_url: str | None, procs: int) -> subprocess.Popen:
    env = dict(os.environ, GPUCLOUD_DATA_DIR=str(tmp), GPUCLOUD_ADMIN_KEY=ADMIN,
               GPUCLOUD_WORKERS="0", GPUCLOUD_LOCAL_PROVIDER="0", GPUCLOUD_LOG_LEVEL="info",
               GPUCLOUD_CLOCK="manual", GPUCLOUD_DEMO="1", GPUCLOUD_LOG_FORMAT="json",
               # one key at thousands of requests a second: the limits would be the figure
               GPUCLOUD_RATE_LIMITS="0",
               GPUCLOUD_SECRET_KEY="x2yqkR1o2D2m3Gm0bnxkV8cJmJb8G0r5Q0c2yD3rW7s=")
    env.pop("GPUCLOUD_DATABASE_URL", None)
    if db_url:
        env["GPUCLOUD_DATABASE_URL"] = db_url
    cmd = [str(ROOT / ".venv/bin/gpucloud"), "serve", "--port", str(port)]
    if procs > 1:
        cmd += ["--workers", str(procs)]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://{HOST}:{port}/gpu/api-docs/openapi.json", timeout=180)
    except BaseException:
        proc.terminate()  # never leave a server behind when it was slow to start
        proc.wait(20)
        raise
    return proc


def _offer(c: httpx.Client, provider_id: str, workload: str) -> str:
    body = {"provider_id": provider_id, "workload": workload,
            "gpu": {"vendor": "nvidia", "model": "h100", "vram": "80Gi", "interface": "SXM"},
            "gpu_count": 1, "vcpu": 16, "memory_gib": 128, "storage_gib": 200,
            "price_hour": "0.5", "capacity": 100_000_000}
    if workload == "container":
        body["countries"] = ["US"]
    else:
        body |= {"location": "us-bench-1", "country": "US",
                 "os_options": ["Ubuntu Server 22.04"]}
    r = c.post("/admin/offers", headers={"X-ADMIN-KEY": ADMIN}, json=body)
    r.raise_for_status()
    return r.json()["id"]


def deploy_body(plan_id: str) -> dict:
    return {"plan_id": plan_id, "name": "bench",
            "container_settings": {"image": "docker.io/library/ubuntu:22.04",
                                   "expose": [{"port": 22, "protocol": "tcp"}]}}


def setup(base: str) -> dict:
    admin = {"X-ADMIN-KEY": ADMIN}
    with httpx.Client(base_url=base, timeout=300) as c:
        acct = c.post("/admin/accounts", json={"name": "bench", "balance": "1000000000"},
                      headers=admin).json()
        prov = c.post("/admin/providers", json={"name": "bench-sim", "driver": "simulated",
                                                "config": {}}, headers=admin).json()
        key = {"X-API-KEY": acct["api_key"]}
        plans = {w: _offer(c, prov["id"], w) for w in ("container", "vm", "baremetal")}
        ids: dict[str, str] = {}
        for _ in range(N):
            r = c.post("/gpu/instances/", headers=key, json=deploy_body(plans["container"]))
            r.raise_for_status()
            ids["container"] = r.json()["instance_id"]
            for kind, workload in (("vms", "vm"), ("baremetal", "baremetal")):
                r = c.post(f"/gpu/instances/{kind}", headers=key, json={
                    "plan_id": plans[workload], "name": "bench", "os_image": "Ubuntu Server 22.04",
                    "ssh_key": SSH_KEY})
                r.raise_for_status()
                ids[workload] = r.json()["instance_id"]
        # Provisioning of the simulated driver takes seconds of server clock: move it.
        c.post("/admin/clock", headers=admin, json={"advance_seconds": 120}).raise_for_status()
        details = c.get(f"/gpu/instances/{ids['container']}", headers=key).json()
        assert details["instance_status"] == "ACTIVE", details
        return {"key": acct["api_key"], "plan": plans["container"], **ids}


def cases(ctx: dict) -> list[tuple[str, loadgen.Request]]:
    hdr = {"X-API-KEY": ctx["key"]}
    cid, vid = ctx["container"], ctx["vm"]
    gets = [
        ("GET /gpu/plans/", "/gpu/plans/"),
        ("GET /gpu/plans/vms", "/gpu/plans/vms"),
        ("GET /gpu/plans/baremetal", "/gpu/plans/baremetal"),
        ("GET /gpu/default-images/", "/gpu/default-images/"),
        ("GET /gpu/instances/ (100)", "/gpu/instances/"),
        ("GET /gpu/instances/vms (100)", "/gpu/instances/vms"),
        ("GET /gpu/instances/baremetal (100)", "/gpu/instances/baremetal"),
        ("GET /gpu/instances/{id}", f"/gpu/instances/{cid}"),
        ("GET /gpu/instances/vms/{id}", f"/gpu/instances/vms/{vid}"),
        ("GET /gpu/instances/{id}/logs?last=20", f"/gpu/instances/{cid}/logs?last=20"),
        ("GET /gpu/instances/{id}/events", f"/gpu/instances/{cid}/events"),
        ("GET /gpu/account", "/gpu/account"),
        ("GET /gpu/account/transactions", "/gpu/account/transactions"),
    ]
    out = [(label, loadgen.Request("GET", path, hdr)) for label, path in gets]
    out.append(("POST /gpu/instances/ (deploy)", loadgen.Request(
        "POST", "/gpu/instances/", hdr, json.dumps(deploy_body(ctx["plan"])).encode())))
    return out


def run_backend(name: str, db_url: str | None, args) -> list[tuple]:
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        port, bare_port = free_port(), free_port()
        server = start_gpucloud(tmp, port, db_url, args.procs)
        bare = None
        try:
            base = f"http://{HOST}:{port}"
            ctx = setup(base)
            body = httpx.get(base + "/gpu/plans/", headers={"X-API-KEY": ctx["key"]}).content
            (tmp / "body.json").write_bytes(body)
            bare = subprocess.Popen([sys.executable, str(ROOT / "bench/bare_app.py"),
                                     str(bare_port), str(tmp / "body.json")])
            wait_ready(f"http://{HOST}:{bare_port}/bare")
            if args.hold:
                print(f"serving on {base} (pid {server.pid}), X-API-KEY {ctx['key']}, "
                      f"container {ctx['container']}; Ctrl-C to stop", flush=True)
                server.wait()
            bare_req = loadgen.Request("GET", "/bare", {})
            todo = [("bare Starlette (plans bytes)", bare_port, bare_req)]
            todo += [(label, port, req) for label, req in cases(ctx)
                     if not args.only or any(o in label for o in args.only.split(","))]
            for label, p, req in todo:
                # The baseline again right before each endpoint: on a shared machine the load
                # moves within a run, and the ratio should compare like with like.
                base = loadgen.measure(HOST, bare_port, bare_req, seconds=args.seconds,
                                       connections=32)
                res = {c: loadgen.measure(HOST, p, req, seconds=args.seconds, connections=c)
                       for c in (32, 1)}
                rows.append((name, label, res, base.rps))
                _print_row(base.rps, label, res)
        finally:
            for proc in (server, bare):
                if proc is not None:
                    proc.terminate()
                    proc.wait(20)
    return rows


def _statuses(res) -> str:
    return ",".join(f"{s}" if len(res.statuses) == 1 else f"{s}:{n}"
                    for s, n in sorted(res.statuses.items()))


def _print_row(bare_rps: float, label: str, res: dict) -> None:
    c32, c1 = res[32], res[1]
    print(f"{label:40} {c32.rps:8.0f} {c32.pct(50):7.2f} {c32.pct(99):7.2f} "
          f"{c1.rps:7.0f} {c1.pct(50):6.2f} {c1.pct(99):6.2f} "
          f"{c32.rps / bare_rps:6.2f}x {c32.rps / c1.rps if c1.rps else 0:6.2f} "
          f"{bare_rps:6.0f}  {_statuses(c32)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="sqlite,postgres")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--procs", type=int, default=1, help="server processes (PostgreSQL only)")
    ap.add_argument("--hold", action="store_true",
                    help="set up, print the address and key, and keep serving (for a profiler)")
    ap.add_argument("--only", default="", help="only endpoints whose label contains one of these (comma-separated)")
    ap.add_argument("--pg-url", default=os.environ.get(
        "GPUCLOUD_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/gpucloud_bench"))
    args = ap.parse_args()
    print(f"load generator: {loadgen.engine()}; {args.seconds:.0f} s per run; "
          f"{os.cpu_count()} cores (shared: figures are noisy, compare ratios within a run)")
    for name in args.db.split(","):
        url = None if name == "sqlite" else fresh_pg(args.pg_url)
        procs = f", {args.procs} processes" if args.procs > 1 else ""
        print(f"\n{name}{procs}")
        print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(f"{'endpoint':40} {'c32 r/s':>8} {'p50':>7} {'p99':>7} {'c1 r/s':>7} {'p50':>6} "
              f"{'p99':>6} {'vs bare':>7} {'c32/c1':>6} {'bare':>6}  status")
        run_backend(name, url, args)
        print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
