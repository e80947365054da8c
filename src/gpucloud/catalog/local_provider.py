"""The `local` provider: real containers on this machine's Docker or Podman, out of the box.

`gpucloud serve` on the embedded default calls `register_local_provider` (unless
GPUCLOUD_LOCAL_PROVIDER=false). When an engine socket answers (drivers/local.py finds it), a
provider named `local` with the `docker` driver and a few small container plans appear, so a
newcomer can deploy a plan and see a real container come up. Running it again changes nothing
(the provider and its offers are found by name); a socket that moved is followed.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from gpucloud.catalog import service as catalog
from gpucloud.catalog.models import Offer, Provider
from gpucloud.catalog.schemas import GpuIn, OfferFields
from gpucloud.drivers.local import find_engine, host_gpus

PROVIDER_NAME = "local"
COUNTRY = "US"  # plans need a country; a laptop's is as good as any for a demo


@dataclass
class LocalPlan:
    vcpu: int
    memory_gib: int
    storage_gib: int
    price_hour: str
    capacity: int
    gpu_count: int = 0


CPU_PLANS = [LocalPlan(1, 1, 10, "0.01", 4), LocalPlan(2, 4, 20, "0.02", 2)]


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
    return note


def _ensure(s, rt, url: str, kind: str, gpus: list[dict[str, Any]]) -> str | None:
    now = rt.clock.now()
    config: dict[str, Any] = {"engine_url": url}
    if gpus:
        config.update(gpu_mode="nvidia", gpus=[g["index"] for g in gpus])
    provider = s.scalar(select(Provider).where(Provider.name == PROVIDER_NAME))
    if provider is None:
        provider = catalog.create_provider(s, PROVIDER_NAME, "docker", config, True, now,
                                           rt.secrets.seal_text)
    elif provider.driver != "docker":
        return (f"A provider named {PROVIDER_NAME!r} exists with driver {provider.driver}; "
                "the local container engine was not registered.")
    elif provider.config.get("engine_url") != url:
        provider.config = catalog.checked_driver_config(
            "docker", {**provider.config, "engine_url": url}, ["config"], rt.secrets.seal_text)
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
    return [OfferFields.model_construct(
        workload="container", gpu=gpu, gpu_count=p.gpu_count, vcpu=p.vcpu,
        memory_gib=p.memory_gib, storage_gib=p.storage_gib, price_hour=Decimal(p.price_hour),
        location=None, country=COUNTRY, countries=None, capacity=p.capacity, nvlink=False,
        os_options=None, enabled=True) for p in plans]
