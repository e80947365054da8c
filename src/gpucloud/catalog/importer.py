"""Declarative catalog import: one document (YAML on disk, JSON over the wire) → upserts.

Operators keep their catalog in a file under version control and apply it again after every
edit, so the import is idempotent: providers are matched by name, offers by their natural key
(provider, workload, GPU, count, vCPU, memory, storage, location). Nothing is deleted — an offer
removed from the file keeps running instances; disable it (`enabled: false`) instead.

The whole document is validated before anything is written, and the caller's transaction
makes the import all-or-nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from gpucloud.catalog.demo import upsert_default_images
from gpucloud.catalog.models import DefaultImage, Offer, OfferZone, Provider
from gpucloud.catalog.schemas import DefaultImageOut, EnvOut, OfferFields, PortOut, ProviderName
from gpucloud.catalog.service import (
    add_offer,
    checked_driver_config,
    field_errors,
    machines_changed,
    nul_path,
    offer_countries,
    offer_rule_errors,
)
from gpucloud.common import RequestModel, StrictCount
from gpucloud.db import PLANS_CHANGED, after_commit
from gpucloud.errors import FieldError
from gpucloud.money import to_micro


class ImagePort(PortOut, RequestModel):
    model_config = ConfigDict(extra="forbid")
    port: StrictCount = Field(ge=1, le=65535, examples=[22])


class ProviderDoc(RequestModel):
    model_config = ConfigDict(extra="forbid")
    name: ProviderName
    driver: str = Field(min_length=1, max_length=32, examples=["simulated"])
    config: dict[str, Any] = Field(default_factory=dict)
    enabled: StrictBool = True


class OfferDoc(OfferFields):
    provider: ProviderName = Field(description="Name of a provider in this document or the "
                                               "database")


class ImageDoc(DefaultImageOut, RequestModel):
    model_config = ConfigDict(extra="forbid")
    slug: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")
    name: str = Field(min_length=1, max_length=128)
    description: str | None = Field(None, max_length=1024)
    image: str = Field(min_length=1, max_length=255)
    expose: list[ImagePort] = Field(default_factory=list, max_length=10)
    environment: list[EnvOut] = Field(default_factory=list, max_length=64)
    startup_command: str | None = Field(None, max_length=2048)
    requires_ssh: StrictBool | None = None


class CatalogDoc(RequestModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "providers": [{"name": "massed-compute", "driver": "simulated",
                       "config": {"provision_seconds": 5}}],
        "offers": [{"provider": "massed-compute", "workload": "container",
                    "gpu": {"vendor": "nvidia", "model": "h100", "vram": "80Gi",
                            "interface": "SXM"},
                    "gpu_count": 1, "vcpu": 24, "memory_gib": 192, "storage_gib": 500,
                    "price_hour": 2.25, "countries": ["US", "CA"], "capacity": 8}]}]})
    providers: list[ProviderDoc] = Field(default_factory=list, max_length=1000)
    offers: list[OfferDoc] = Field(default_factory=list, max_length=100_000)
    default_images: list[ImageDoc] | None = Field(
        None, description="When given, replaces the list of default images")


class ImportSummary(BaseModel):
    providers_created: int = 0
    providers_updated: int = 0
    offers_created: int = 0
    offers_updated: int = 0
    default_images: int | None = Field(None, description="Images now listed, if the document "
                                                         "had a default_images section")


def _natural_key(provider_id: str, f: OfferFields) -> tuple:
    return (provider_id, f.workload, f.gpu.vendor, f.gpu.model, f.gpu.vram, f.gpu.interface,
            f.gpu_count, f.vcpu, f.memory_gib, f.storage_gib, f.location)


def _offer_key(o: Offer) -> tuple:
    return (o.provider_id, o.workload, o.gpu_vendor, o.gpu_model, o.gpu_vram, o.gpu_interface,
            o.gpu_count, o.vcpu, o.memory_gib, o.storage_gib, o.location)


def _validate(s: Session, doc: CatalogDoc,
              seal: Callable[[str], str]) -> dict[str, dict[str, Any]]:
    """Every rule the document can break, checked before the first write. Returns the
    normalized driver configs by provider name."""
    errs: list[tuple[list[Any], str, Any]] = []
    configs: dict[str, dict[str, Any]] = {}
    nul = nul_path(doc.model_dump(mode="json"), ["body"])
    if nul is not None:
        errs.append((nul, "Text must not contain NUL characters", None))
    for i, p in enumerate(doc.providers):
        if p.name in configs:
            errs.append((["body", "providers", i, "name"], f"Duplicate provider {p.name}",
                         p.name))
            continue
        try:
            configs[p.name] = checked_driver_config(p.driver, p.config,
                                                    ["body", "providers", i], seal)
        except FieldError as exc:  # collect, keep checking the rest
            errs.extend((e["loc"], e["msg"].removeprefix("Value error, "), e["input"])
                        for e in exc.errors)
    known = set(configs) | set(s.scalars(select(Provider.name)))
    seen: set[tuple] = set()
    for i, o in enumerate(doc.offers):
        loc = ["body", "offers", i]
        errs.extend(offer_rule_errors(o, loc))
        if o.provider not in known:
            errs.append((loc + ["provider"], f"Unknown provider {o.provider}", o.provider))
        key = _natural_key(o.provider, o)
        if key in seen:
            errs.append((loc, ("Duplicate offer (same provider, workload, GPU, count, vCPU, "
                               "memory, storage and location)"), None))
        seen.add(key)
    slugs = [img.slug for img in doc.default_images or []]
    for i, slug in enumerate(slugs):
        if slugs.index(slug) != i:
            errs.append((["body", "default_images", i, "slug"], f"Duplicate slug {slug}", slug))
    if errs:
        raise field_errors(errs)
    return configs


def import_catalog(s: Session, doc: dict[str, Any] | CatalogDoc, now: dt.datetime,
                   seal: Callable[[str], str],
                   inventories: dict[str, dict[str, dict[str, Any]]] | None = None) -> dict:
    """Upsert a catalog document in the caller's transaction; returns the summary. Driver
    secrets in provider configs (BMC passwords) are sealed with `seal`, as on
    POST /admin/providers. `inventories`: provider name → machine → what its BMC reported
    (read by the caller before the transaction); a machine contradicting an offer it serves
    makes the whole import a 422."""
    if not isinstance(doc, CatalogDoc):
        doc = CatalogDoc.model_validate(doc)
    configs = _validate(s, doc, seal)
    summary = ImportSummary()
    after_commit(s, PLANS_CHANGED)

    providers = {p.name: p for p in s.scalars(select(Provider))}
    for p in doc.providers:
        row = providers.get(p.name)
        if row is None:
            row = Provider(name=p.name, driver=p.driver, config=configs[p.name],
                           enabled=p.enabled, created_at=now)
            s.add(row)
            providers[p.name] = row
            summary.providers_created += 1
        else:
            row.driver, row.config, row.enabled = p.driver, configs[p.name], p.enabled
            summary.providers_updated += 1
    s.flush()

    provider_ids = [providers[name].id for name in {o.provider for o in doc.offers}]
    existing = {_offer_key(o): o for o in s.scalars(
        select(Offer).where(Offer.provider_id.in_(provider_ids)))} if provider_ids else {}
    for o in doc.offers:
        provider_id = providers[o.provider].id
        row = existing.get(_natural_key(provider_id, o))
        if row is None:
            add_offer(s, provider_id, o, now)
            summary.offers_created += 1
        else:
            _update_offer(s, row, o)
            summary.offers_updated += 1
    s.flush()
    # Machine rows, the offers checked against the inventory stored for them, and the
    # capacity of machine-backed offers (their free machines, not the document's capacity).
    touched = {p.name for p in doc.providers} | {o.provider for o in doc.offers}
    for name in sorted(touched):
        machines_changed(s, providers[name], now, (inventories or {}).get(name, {}),
                         ["body", "providers", name, "config", "machines"])

    if doc.default_images is not None:
        keep = [img.slug for img in doc.default_images]
        s.execute(delete(DefaultImage).where(DefaultImage.slug.not_in(keep))
                  if keep else delete(DefaultImage))
        upsert_default_images(s, [img.model_dump(mode="json") for img in doc.default_images])
        summary.default_images = len(keep)
    s.flush()
    return summary.model_dump()


def _update_offer(s: Session, row: Offer, f: OfferFields) -> None:
    row.price_hour = to_micro(f.price_hour)
    row.nvlink = f.nvlink
    row.os_options = list(f.os_options or [])
    row.enabled = f.enabled
    zones = {z.country: z for z in s.scalars(select(OfferZone).where(OfferZone.offer_id == row.id))}
    wanted = offer_countries(f)
    for country in wanted:
        if country in zones:
            zones[country].capacity = f.capacity
        else:
            s.add(OfferZone(offer_id=row.id, country=country, capacity=f.capacity, in_use=0))
    # A country dropped from the file stops taking deploys; its row stays because running
    # instances still point at it.
    for country, zone in zones.items():
        if country not in wanted:
            zone.capacity = 0
