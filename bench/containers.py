"""Deploy-to-ACTIVE latency of a real container vs the same container started directly.

    scripts/setup-podman.sh            # once: Podman serving the Docker API, the busybox image
    .venv/bin/python bench/containers.py [--runs 10] [--engine-url unix:///…sock]

Starts `gpucloud serve` (SQLite in a temp dir, system clock, background workers on) with a
`docker` provider on the engine, then alternates, `--runs` times:
- engine: create + start of the same container (same image, command, limits, published
  ports, init) through the Engine API with docker-py, until the engine reports it running;
- gpucloud: POST /gpu/instances/ until GET /gpu/instances/{id} says ACTIVE (polled every
  10 ms), i.e. API + lifecycle worker + driver + engine.
Prints both medians and the overhead (target: < 0.5 s at the median). The image is already on
the host, so neither side pulls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from servers import free_port, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "bench-admin-key"
DEFAULT_SOCKET = os.environ.get("GPUCLOUD_PODMAN_SOCKET", "/run/gpucloud-podman/podman.sock")
IMAGE = "localhost/gpucloud-busybox:latest"
COMMAND = "sh -c 'mkdir -p /www && echo hi > /www/index.html && httpd -f -p 80 -h /www'"
PORTS = (32600, 32699)


def start_server(tmp: Path, port: int, worker_interval: float | None) -> subprocess.Popen:
    env = dict(os.environ, GPUCLOUD_DATA_DIR=str(tmp), GPUCLOUD_ADMIN_KEY=ADMIN,
               GPUCLOUD_LOCAL_PROVIDER="0", GPUCLOUD_DEMO="0", GPUCLOUD_LOG_LEVEL="warning",
               GPUCLOUD_RATE_LIMITS="0")
    env.pop("GPUCLOUD_DATABASE_URL", None)
    if worker_interval is not None:
        env["GPUCLOUD_WORKER_INTERVAL_SECONDS"] = str(worker_interval)
    proc = subprocess.Popen([str(ROOT / ".venv/bin/gpucloud"), "serve", "--port", str(port)],
                            env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}/gpu/api-docs/openapi.json")
    except RuntimeError:
        proc.kill()
        raise
    return proc


def setup(c: httpx.Client, engine_url: str) -> tuple[dict, str, str]:
    admin = {"X-ADMIN-KEY": ADMIN}
    acct = c.post("/admin/accounts", json={"name": "bench", "balance": "100000"},
                  headers=admin).json()
    prov = c.post("/admin/providers", headers=admin, json={
        "name": "bench-local", "driver": "docker",
        "config": {"engine_url": engine_url, "port_range": f"{PORTS[0]}-{PORTS[1]}",
                   "stop_timeout_seconds": 1}})
    prov.raise_for_status()
    offer = c.post("/admin/offers", headers=admin, json={
        "provider_id": prov.json()["id"], "workload": "container",
        "gpu": {"vendor": "nvidia", "model": "h100", "vram": "80Gi", "interface": "SXM"},
        "gpu_count": 1, "vcpu": 1, "memory_gib": 1, "storage_gib": 1, "price_hour": "0.1",
        "countries": ["US"], "capacity": 1000})
    offer.raise_for_status()
    return {"X-API-KEY": acct["api_key"]}, offer.json()["id"], prov.json()["id"]


def via_engine(client, host_port: int) -> float:
    t0 = time.perf_counter()
    container = client.containers.create(
        IMAGE, command=["sh", "-c", COMMAND.split("'")[1]], ports={"80/tcp": host_port},
        nano_cpus=1_000_000_000, mem_limit="1g", pids_limit=4096, init=True, detach=True,
        labels={"bench": "direct"})
    container.start()
    container.reload()
    elapsed = time.perf_counter() - t0
    assert container.status == "running", container.status
    container.remove(force=True, v=True)
    return elapsed


def via_gpucloud(c: httpx.Client, key: dict, plan_id: str, n: int) -> tuple[float, str]:
    body = {"plan_id": plan_id, "name": f"bench-{n}", "container_settings": {
        "image": IMAGE, "expose": [{"port": 80, "protocol": "http"}],
        "startup_command": COMMAND}}
    t0 = time.perf_counter()
    r = c.post("/gpu/instances/", headers=key, json=body)
    r.raise_for_status()
    iid = r.json()["instance_id"]
    while True:
        status = c.get(f"/gpu/instances/{iid}", headers=key).json()["instance_status"]
        if status == "ACTIVE":
            break
        if status == "FAILED" or time.perf_counter() - t0 > 60:
            raise RuntimeError(f"instance {iid} ended up {status}")
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    c.delete(f"/gpu/instances/{iid}", headers=key)
    return elapsed, iid


def wait_removed(client, instance_id: str, timeout: float = 30) -> None:
    """The terminate runs in the background; timing the next container while it still
    stops this one would charge the engine's work to whichever side runs next."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not client.api.containers(all=True, filters={
                "label": f"gpucloud.instance={instance_id}"}):
            return
        time.sleep(0.05)


def main() -> None:
    import docker

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--engine-url", default=f"unix://{DEFAULT_SOCKET}")
    ap.add_argument("--worker-interval", type=float, default=None,
                    help="GPUCLOUD_WORKER_INTERVAL_SECONDS for the server (default: its own)")
    args = ap.parse_args()

    client = docker.DockerClient(base_url=args.engine_url, version="auto", timeout=60)
    try:
        client.ping()
        client.images.get(IMAGE)
    except docker.errors.DockerException as exc:
        sys.exit(f"engine/image not ready ({exc}); run scripts/setup-podman.sh")

    with tempfile.TemporaryDirectory() as tmpdir:
        port = free_port()
        server = start_server(Path(tmpdir), port, args.worker_interval)
        provider_id = None
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
                key, plan_id, provider_id = setup(c, args.engine_url)
                _, iid = via_gpucloud(c, key, plan_id, 0)  # warm-up: imports, connections
                wait_removed(client, iid)
                engine_times, api_times = [], []
                for n in range(1, args.runs + 1):
                    engine_times.append(via_engine(client, PORTS[1]))
                    elapsed, iid = via_gpucloud(c, key, plan_id, n)
                    api_times.append(elapsed)
                    wait_removed(client, iid)
        finally:
            server.terminate()
            server.wait(15)
            for ct in client.containers.list(all=True, filters={"label": "bench=direct"}):
                ct.remove(force=True)
            if provider_id:
                for ct in client.containers.list(all=True, filters={
                        "label": f"gpucloud.provider={provider_id}"}):
                    ct.remove(force=True, v=True)

    e_med, a_med = statistics.median(engine_times), statistics.median(api_times)
    print(f"runs: {args.runs}  image: {IMAGE}  engine: {args.engine_url}")
    print(f"engine API create+start  median {e_med * 1000:7.1f} ms   "
          f"max {max(engine_times) * 1000:7.1f} ms")
    print(f"gpucloud POST → ACTIVE    median {a_med * 1000:7.1f} ms   "
          f"max {max(api_times) * 1000:7.1f} ms")
    overhead = a_med - e_med
    verdict = "OK" if overhead < 0.5 else "OVER TARGET"
    print(f"overhead at the median     {overhead * 1000:7.1f} ms   (target < 500 ms: {verdict})")


if __name__ == "__main__":
    main()
