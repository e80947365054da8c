"""The public catalog (SPEC §2): what can be deployed *now*, grouped the documented way.

Only enabled offers of enabled providers, and only zones with free capacity, are shown. The
renderers return plain JSON-able structures with Decimal money; routes turn them into bytes once.
"""

from __future__ import annotations

import re
from collections import defaultdict
from decimal import Decimal
from typing import Any

from pydantic import ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from gpucloud.billing.ledger import UPFRONT_HOURS
from gpucloud.catalog.models import DefaultImage, Offer, OfferZone, Provider
from gpucloud.catalog.service import gpu_json, plan_name, plan_resources
from gpucloud.common import RequestModel, port_out
from gpucloud.money import from_micro, to_micro

CURRENCY = "USDC"
_VRAM = re.compile(r"^(\d+)")


class PlanFilters(RequestModel):
    """Optional query parameters of the three plan endpoints (the public API has none)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    gpu_model: str | None = Field(None, min_length=1, max_length=64,
                                  description="GPU model, case-insensitive (`h100`)")
    gpu_count: int | None = Field(None, ge=1, le=64, description="Exact number of GPUs")
    location: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$",
        description="Country (`US`); for VM/bare-metal also a data-center id (`us-central-3`)")
    country: str | None = Field(None, pattern=r"^[A-Za-z]{2}$", description="Country (`DE`)")
    max_price: Decimal | None = Field(None, ge=0, decimal_places=6, max_digits=18,
                                      description="Highest hourly price (whole plan), USDC")
    min_vram: int | None = Field(None, ge=1, le=100_000, description="Least GiB per GPU")
    provider: str | None = Field(None, min_length=1, max_length=100, description="Provider name")

    def cache_key(self) -> str:
        return "&".join(f"{k}={v}" for k, v in sorted(self.model_dump(exclude_none=True).items()))


def _pricing(micro: int) -> dict[str, Any]:
    return {"hour": from_micro(micro), "upfront_hours": UPFRONT_HOURS, "currency": CURRENCY}


def _vram_gib(vram: str) -> int:
    m = _VRAM.match(vram)
    return int(m.group(1)) if m else 0


def _available(s: Session, workloads: tuple[str, ...]):
    """(offer, provider name, country) for every zone that can take a deploy now."""
    return s.execute(
        select(Offer, Provider.name, OfferZone.country)
        .join(Provider, Provider.id == Offer.provider_id)
        .join(OfferZone, OfferZone.offer_id == Offer.id)
        .where(Offer.workload.in_(workloads), Offer.enabled.is_(True),
               Provider.enabled.is_(True), OfferZone.in_use < OfferZone.capacity)
    ).all()


def _offer_matches(offer: Offer, provider: str, f: PlanFilters | None) -> bool:
    if f is None:
        return True
    if f.gpu_model is not None and offer.gpu_model.lower() != f.gpu_model.lower():
        return False
    if f.gpu_count is not None and offer.gpu_count != f.gpu_count:
        return False
    if f.max_price is not None and offer.price_hour > to_micro(f.max_price):
        return False
    if f.min_vram is not None and _vram_gib(offer.gpu_vram) < f.min_vram:
        return False
    return f.provider is None or provider.lower() == f.provider.lower()


def _zone_matches(offer: Offer, country: str, f: PlanFilters | None) -> bool:
    if f is None:
        return True
    if f.country is not None and country != f.country.upper():
        return False
    # A location is a country, or (VM/bare metal) the data-center id.
    return f.location is None or country == f.location.upper() or (
        offer.workload != "container" and offer.location is not None
        and offer.location.lower() == f.location.lower())


def container_plans(s: Session, f: PlanFilters | None = None) -> list[dict[str, Any]]:
    offers: dict[str, tuple[Offer, list[str]]] = {}
    matched: set[str] = set()
    for offer, provider, country in _available(s, ("container",)):
        if not _offer_matches(offer, provider, f):
            continue
        offers.setdefault(offer.id, (offer, []))[1].append(country)
        if _zone_matches(offer, country, f):
            matched.add(offer.id)
    # A location filter selects plans deployable there; each still lists all its countries.
    chosen = sorted((offers[i] for i in matched),
                    key=lambda oc: (oc[0].price_hour, plan_name(oc[0]), oc[0].id))
    out = []
    for offer, countries in chosen:
        resources = plan_resources(offer)
        out.append({
            "plan": {"id": offer.id, "name": plan_name(offer), "supply": resources["supply"],
                     "gpu_model": resources["gpu_model"], "pricing": _pricing(offer.price_hour)},
            "attributes": {"location": sorted(countries)},
        })
    return out


def _distinct(values) -> list[str]:
    return list(dict.fromkeys(values))


def machine_plans(s: Session, workload: str, f: PlanFilters | None = None) -> dict[str, Any]:
    """VM or bare-metal options grouped by GPU model, then GPU count (SPEC §2)."""
    deployment_type = "VM" if workload == "vm" else "BAREMETAL"
    groups: dict[tuple, dict[int, list[tuple[Offer, str]]]] = defaultdict(lambda: defaultdict(list))
    seen: set[str] = set()
    for offer, provider, country in _available(s, (workload,)):
        if offer.id in seen or not _offer_matches(offer, provider, f):
            continue
        if not _zone_matches(offer, country, f):
            continue
        seen.add(offer.id)
        key = (offer.gpu_vendor, offer.gpu_model, offer.gpu_vram, offer.gpu_interface.upper())
        groups[key][offer.gpu_count].append((offer, provider))

    data = []
    for by_count in groups.values():
        availability = []
        for count in sorted(by_count):
            options = sorted(by_count[count], key=lambda op: (op[0].price_hour, op[0].id))
            locations = _distinct(o.location for o, _ in options)
            providers = _distinct(p for _, p in options)
            availability.append({
                "gpu_count": count,
                "minimum_price": from_micro(options[0][0].price_hour),
                "options_available_total": len(options),
                "providers_available_total": len(providers),
                "data_center_available_total": len(locations),
                "locations": locations,
                "providers": providers,
                "options": [_option(o, p, deployment_type) for o, p in options],
            })
        first = next(iter(by_count.values()))[0][0]
        data.append({"gpu_model": gpu_json(first, lower_interface=True),
                     "minimum_price": min(a["minimum_price"] for a in availability),
                     "availability_by_number": availability})
    data.sort(key=lambda g: (g["minimum_price"], g["gpu_model"]["model"], g["gpu_model"]["vram"],
                             g["gpu_model"]["interface"], g["gpu_model"]["vendor"]))
    return {"data": data}


def _option(offer: Offer, provider: str, deployment_type: str) -> dict[str, Any]:
    return {
        "id": offer.id, "location": offer.location, "provider": provider,
        "vcpu": {"count": offer.vcpu},
        "memory": {"count": offer.memory_gib, "units": "Gi"},
        "storage": {"count": offer.storage_gib, "units": "Gi"},
        "deployment_type": deployment_type, "pricing": _pricing(offer.price_hour),
        "nvlink": offer.nvlink, "os_options": list(offer.os_options or []),
    }


def default_images(s: Session) -> list[dict[str, Any]]:
    rows = s.scalars(select(DefaultImage).order_by(DefaultImage.position, DefaultImage.slug))
    return [{"slug": r.slug, "name": r.name, "description": r.description, "image": r.image,
             "expose": [port_out(p) for p in r.expose or []],
             "environment": list(r.environment or []),
             "startup_command": r.startup_command, "requires_ssh": r.requires_ssh}
            for r in rows]
