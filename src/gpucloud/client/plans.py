"""Plans of every type as one flat, sortable row shape (what `gpucloud plans` shows).

Container plans and VM/bare-metal options come in different shapes from the API; a script that
wants "the cheapest 2×H100 anywhere" should not have to know both.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field

from gpucloud.client import models as m

PLAN_KINDS = ("container", "vm", "baremetal")


class PlanRow(BaseModel):
    id: str
    type: str  # container | vm | baremetal
    name: str | None = None
    vendor: str
    model: str
    vram: str
    interface: str
    gpu_count: int
    vcpu: int
    memory_gib: int
    storage_gib: int
    locations: list[str] = Field(default_factory=list)
    provider: str | None = None
    price_hour: Decimal
    upfront_hours: int = 3
    currency: str = "USDC"
    os_options: list[str] = Field(default_factory=list)
    nvlink: bool = False


def from_container_plans(plans: list[m.ContainerPlan]) -> list[PlanRow]:
    rows = []
    for item in plans:
        p = item.plan
        rows.append(PlanRow(
            id=p.id, type="container", name=p.name, vendor=p.gpu_model.vendor,
            model=p.gpu_model.model, vram=p.gpu_model.vram, interface=p.gpu_model.interface,
            gpu_count=p.supply.gpu_count, vcpu=p.supply.vcpu.count,
            memory_gib=p.supply.memory.count, storage_gib=p.supply.storage.count,
            locations=list(item.attributes.location), price_hour=p.pricing.hour,
            upfront_hours=p.pricing.upfront_hours, currency=p.pricing.currency))
    return rows


def from_plan_groups(kind: str, groups: m.PlanGroups) -> list[PlanRow]:
    rows = []
    for group in groups.data:
        g = group.gpu_model
        for avail in group.availability_by_number:
            for o in avail.options:
                rows.append(PlanRow(
                    id=o.id, type=kind, vendor=g.vendor, model=g.model, vram=g.vram,
                    interface=g.interface, gpu_count=avail.gpu_count, vcpu=o.vcpu.count,
                    memory_gib=o.memory.count, storage_gib=o.storage.count,
                    locations=[o.location], provider=o.provider, price_hour=o.pricing.hour,
                    upfront_hours=o.pricing.upfront_hours, currency=o.pricing.currency,
                    os_options=list(o.os_options), nvlink=o.nvlink))
    return rows


def select(rows: list[PlanRow], *, gpu: str | None = None, count: int | None = None,
           location: str | None = None, max_price: Decimal | None = None) -> list[PlanRow]:
    """Filter (GPU model by substring, exact count, location by prefix, price ceiling) and sort
    by price, then type, then id, so the same catalog always prints in the same order."""
    def keep(r: PlanRow) -> bool:
        if gpu and gpu.lower() not in r.model.lower():
            return False
        if count is not None and r.gpu_count != count:
            return False
        if location and not any(loc.lower().startswith(location.lower()) for loc in r.locations):
            return False
        return max_price is None or r.price_hour <= max_price

    return sorted((r for r in rows if keep(r)), key=lambda r: (r.price_hour, r.type, r.id))
