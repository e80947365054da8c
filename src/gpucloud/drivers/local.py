"""The `local` provider: real containers on this machine's Docker or Podman, out of the box.

`gpucloud serve` on the embedded default calls `register_local_provider` (unless
GPUCLOUD_LOCAL_PROVIDER=false). When an engine socket answers, a provider named `local` with the
`docker` driver and a few small container plans appear, so a newcomer can deploy a plan and see
a real container come up. Running it again changes nothing (the provider and its offers are
found by name); a socket that moved is followed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

log = logging.getLogger("gpucloud")

PROVIDER_NAME = "local"
COUNTRY = "US"  # plans need a country; a laptop's is as good as any for a demo
PING_TIMEOUT = 2.0


@dataclass
class LocalPlan:
    vcpu: int
    memory_gib: int
    storage_gib: int
    price_hour: str
    capacity: int
    gpu_count: int = 0


CPU_PLANS = [LocalPlan(1, 1, 10, "0.01", 4), LocalPlan(2, 4, 20, "0.02", 2)]


def candidate_engines() -> list[str]:
    """Engine URLs to try, most explicit first. DOCKER_HOST and XDG_RUNTIME_DIR are the
    engines' own conventions (what the docker and podman CLIs read), not gpucloud settings."""
    urls: list[str] = []
    docker_host = os.environ.get("DOCKER_HOST", "").strip()
    if docker_host.startswith(("unix://", "tcp://")):
        urls.append(docker_host)
    paths = ["/run/gpucloud-podman/podman.sock", "/var/run/docker.sock",
             "/run/podman/podman.sock"]
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        paths += [f"{runtime_dir}/podman/podman.sock", f"{runtime_dir}/docker.sock"]
    paths.append(str(Path.home() / ".docker/run/docker.sock"))
    for path in paths:
        if Path(path).is_socket():
            urls.append(f"unix://{path}")
    return list(dict.fromkeys(urls))


def find_engine() -> tuple[str, str] | None:
    """(engine_url, "Podman"|"Docker") of the first engine that answers a ping."""
    from gpucloud.drivers.base import DriverError
    from gpucloud.drivers.docker_config import parse_config
    from gpucloud.drivers.docker_engine import Engine

    for url in candidate_engines():
        try:
            engine = Engine(parse_config({"engine_url": url, "timeout_seconds": PING_TIMEOUT}))
        except ValueError:
            continue
        try:
            if engine.ping():
                return url, "Podman" if engine.is_podman() else "Docker"
        except DriverError as exc:  # an odd engine must never stop the server from starting
            log.debug("engine %s: %s", url, exc)
        finally:
            engine.close()
    return None


def host_gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs of this host via nvidia-smi: [{index, model, vram_gib}], or []."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not parts[2].isdigit():
            continue
        model = re.sub(r"^(nvidia|geforce|tesla|quadro)\s+", "", parts[1].lower())
        model = re.sub(r"^(geforce|rtx)\s+(?=rtx)", "", model)
        model = re.sub(r"[^a-z0-9]+", "-", model).strip("-") or "gpu"
        gpus.append({"index": parts[0], "model": model,
                     "vram_gib": max(1, round(int(parts[2]) / 1024))})
    return gpus


def register_local_provider(rt) -> str | None:
    """Create (or refresh) the `local` docker provider when an engine answers here.
    Returns a line to print, or None when there is nothing to say."""
    if not rt.settings.local_provider:
        return None
    found = find_engine()
    if found is None:
        return None
    url, kind = found
    gpus = host_gpus()
    with rt.db.write() as s:
        note = _ensure(s, rt, url, kind, gpus)
    rt.invalidate("plans")
    return note


def _ensure(s, rt, url: str, kind: str, gpus: list[dict[str, Any]]) -> str | None:
    from gpucloud.catalog import service as catalog
    from gpucloud.catalog.models import Offer, Provider

    now = rt.clock.now()
    config: dict[str, Any] = {"engine_url": url}
    if gpus:
        config.update(gpu_mode="nvidia", gpus=[g["index"] for g in gpus])
    provider = s.scalar(select(Provider).where(Provider.name == PROVIDER_NAME))
    if provider is None:
        provider = catalog.create_provider(s, PROVIDER_NAME, "docker", config, True, now)
    elif provider.driver != "docker":
        return (f"A provider named {PROVIDER_NAME!r} exists with driver {provider.driver}; "
                "the local container engine was not registered.")
    elif provider.config.get("engine_url") != url:
        provider.config = catalog.checked_driver_config(
            "docker", {**provider.config, "engine_url": url}, ["config"])
    offers = s.scalar(select(func.count()).select_from(Offer)
                      .where(Offer.provider_id == provider.id))
    if not offers:
        for fields in _offer_fields(gpus):
            catalog.add_offer(s, provider.id, fields, now)
        offers = s.scalar(select(func.count()).select_from(Offer)
                          .where(Offer.provider_id == provider.id))
    return (f"Local provider: {kind} at {url} — {offers} container plan(s) run real "
            f"containers on this machine (GPUCLOUD_LOCAL_PROVIDER=false to turn off).")


def _offer_fields(gpus: list[dict[str, Any]]):
    """Offer fields built without the admin schema's checks: a CPU-only plan says so
    honestly (0 GPUs, 0Gi), which the admin API — made for GPU offers — would refuse."""
    from gpucloud.catalog.schemas import GpuIn, OfferFields

    if gpus:
        first = gpus[0]
        gpu = GpuIn.model_construct(vendor="nvidia", model=first["model"],
                                    vram=f"{first['vram_gib']}Gi", interface="pcie")
        plans = [LocalPlan(4, 16, 50, "0.10", len(gpus), 1)]
        if len(gpus) > 1:
            plans.append(LocalPlan(8, 32, 100, "0.20", 1, len(gpus)))
    else:
        gpu = GpuIn.model_construct(vendor="none", model="cpu", vram="0Gi", interface="none")
        plans = CPU_PLANS
    from decimal import Decimal

    return [OfferFields.model_construct(
        workload="container", gpu=gpu, gpu_count=p.gpu_count, vcpu=p.vcpu,
        memory_gib=p.memory_gib, storage_gib=p.storage_gib, price_hour=Decimal(p.price_hour),
        location=None, country=COUNTRY, countries=None, capacity=p.capacity, nvlink=False,
        os_options=None, enabled=True) for p in plans]
