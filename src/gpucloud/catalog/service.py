"""Providers, offers and capacity: the rules of the catalog.

Services only flush; the caller owns the transaction. Changes register PLANS_CHANGED on the
session (db.after_commit), so the rendered plans are invalidated once the transaction commits
(never before: a response rendered in between would outlive the change) and no caller has to
remember it.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable
from typing import Any, NamedTuple

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.orm import Session

from gpucloud.catalog import machines
from gpucloud.catalog.models import Machine, Offer, OfferZone, Provider
from gpucloud.catalog.schemas import OfferCreate, OfferFields, OfferPatch
from gpucloud.db import PLANS_CHANGED, after_commit, plausible_id
from gpucloud.drivers.registry import driver_class
from gpucloud.errors import PLAN_UNAVAILABLE, BadRequest, FieldError, NotFound
from gpucloud.money import from_micro, to_micro

# --- derived views of an offer -----------------------------------------------------------------

def plan_name(offer: Offer) -> str:
    return (f"{offer.gpu_model}-{offer.gpu_vram.lower()}-{offer.gpu_interface.lower()}-"
            f"{offer.gpu_count}gpu-{offer.vcpu}cpu-{offer.memory_gib}gi-{offer.storage_gib}gi")


def gpu_json(offer: Offer, lower_interface: bool = False) -> dict[str, str]:
    """The GPU as plans show it. The interface is stored upper case (`SXM`, `PCIE`), which is
    how container plans show it; VM/bare-metal plans and instances show it lower case, as the
    Fluence docs do."""
    interface = offer.gpu_interface.upper()
    return {"vendor": offer.gpu_vendor, "model": offer.gpu_model, "vram": offer.gpu_vram,
            "interface": interface.lower() if lower_interface else interface}


def plan_resources(offer: Offer) -> dict[str, Any]:
    """The instance's `resources` snapshot (and the plan's supply): plain JSON."""
    return {
        "supply": {"vcpu": {"count": offer.vcpu},
                   "memory": {"count": offer.memory_gib, "units": "Gi"},
                   "storage": {"count": offer.storage_gib, "units": "Gi"},
                   "gpu_count": offer.gpu_count},
        "gpu_model": gpu_json(offer),
    }


# --- errors with several locations ---------------------------------------------------------------

def field_errors(errors: list[tuple[list[Any], str, Any]]) -> FieldError:
    """One 422 carrying every problem found, so an operator fixes a document in one pass."""
    first = FieldError(*errors[0])
    for loc, msg, value in errors[1:]:
        first.errors.extend(FieldError(loc, msg, value).errors)
    return first


def nul_path(value: Any, loc: list[Any]) -> list[Any] | None:
    """Where a NUL character hides in a JSON value. PostgreSQL cannot store one in text or
    JSON, so it must be a 422 here rather than a driver error (a 500) at INSERT time."""
    if isinstance(value, str):
        return loc if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = nul_path(key, loc + [key]) or nul_path(item, loc + [key])
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = nul_path(item, loc + [i])
            if found:
                return found
    return None


def reject_nul(value: Any, loc: list[Any]) -> None:
    found = nul_path(value, loc)
    if found is not None:
        raise FieldError(found, "Text must not contain NUL characters", None)


def offer_rule_errors(f: OfferFields, loc: list[Any]) -> list[tuple[list[Any], str, Any]]:
    """Rules that involve several fields (pydantic checks each field alone)."""
    errs: list[tuple[list[Any], str, Any]] = []
    if f.workload == "container":
        if f.countries and f.country:
            errs.append((loc + ["country"], "Give either country or countries, not both",
                         f.country))
        elif not f.countries and not f.country:
            errs.append((loc + ["countries"], "Container offers need countries (or country)",
                         None))
        if f.os_options:
            errs.append((loc + ["os_options"], "os_options only apply to vm and baremetal offers",
                         f.os_options))
    else:
        if f.location is None:
            errs.append((loc + ["location"],
                         f"{f.workload} offers need a data-center location", None))
        if f.countries is not None:
            errs.append((loc + ["countries"],
                         f"{f.workload} offers are in one country; use country", f.countries))
        elif f.country is None:
            errs.append((loc + ["country"], f"{f.workload} offers need a country", None))
        if not f.os_options:
            errs.append((loc + ["os_options"],
                         f"{f.workload} offers need at least one OS option", f.os_options))
    return errs


def offer_countries(f: OfferFields) -> list[str]:
    return sorted(f.countries) if f.countries else [f.country] if f.country else []


# --- providers -----------------------------------------------------------------------------------

def validated_driver_config(driver: str, config: dict[str, Any],
                            loc: list[Any]) -> dict[str, Any]:
    """The driver's normalized config, secrets still in clear (for reading the machines'
    inventory before it is stored), or a 422 at `loc + [driver|config]`."""
    try:
        cls = driver_class(driver)
    except ValueError as exc:
        raise FieldError(loc + ["driver"], str(exc), driver) from None
    try:
        return cls.validate_config(dict(config))
    except ValueError as exc:
        raise FieldError(loc + ["config"], str(exc), config) from None


def checked_driver_config(driver: str, config: dict[str, Any], loc: list[Any],
                          seal: Callable[[str], str]) -> dict[str, Any]:
    """The driver's normalized config with its secrets sealed by `seal` (never optional: a
    path that forgot it would store BMC passwords in clear), or a 422 at
    `loc + [driver|config]`."""
    out = validated_driver_config(driver, config, loc)
    return driver_class(driver).seal_config(out, seal)


def public_config(provider: Provider) -> dict[str, Any]:
    try:
        return driver_class(provider.driver).public_config(provider.config or {})
    except ValueError:
        # A driver that is no longer installed: show nothing rather than leak a secret.
        return {}


def config_warnings(provider: Provider) -> list[str]:
    try:
        return driver_class(provider.driver).config_warnings(provider.config or {})
    except (ValueError, ImportError):
        return []


def offer_problem(provider: Provider, f: OfferFields) -> tuple[str, str] | None:
    """What the provider's driver says against serving this offer (an OS option it has no
    image for, a GPU model it does not have…)."""
    try:
        cls = driver_class(provider.driver)
    except ValueError:
        return None
    try:
        return cls.offer_problem(provider.config or {}, f.workload, list(f.os_options or []),
                                 f.gpu.model)
    except ValueError as exc:  # e.g. an image file removed since registration
        return "provider_id", f"The provider's config is no longer valid: {exc}"


def create_provider(s: Session, name: str, driver: str, config: dict[str, Any], enabled: bool,
                    now: dt.datetime, seal: Callable[[str], str],
                    inventories: dict[str, dict[str, Any]] | None = None) -> Provider:
    """`inventories`: what the machines' BMCs reported (machines.read_inventories, read by
    the caller before its transaction); a machine contradicting an offer it serves is a 422
    naming the machine and the field."""
    reject_nul(config, ["body", "config"])
    config = checked_driver_config(driver, config, ["body"], seal)
    if s.scalar(select(Provider.id).where(Provider.name == name)) is not None:
        raise BadRequest(f"Provider {name} already exists")
    provider = Provider(name=name, driver=driver, config=config, enabled=enabled, created_at=now)
    s.add(provider)
    after_commit(s, PLANS_CHANGED)
    s.flush()
    machines_changed(s, provider, now, inventories or {}, ["body", "config", "machines"])
    return provider


def machines_changed(s: Session, provider: Provider, now: dt.datetime,
                     inventories: dict[str, dict[str, Any]], loc: list[Any]) -> None:
    """A provider's config was stored: its machine rows, their inventory, the capacity of
    its machine-backed offers; a machine contradicting an offer it serves raises the 422."""
    names = machines.sync_rows(s, provider, now)
    if not names:
        return
    machines.store_inventory(s, provider.id, inventories, now)
    order = list(names)
    for name, inv in s.execute(select(Machine.name, Machine.inventory)
                               .where(Machine.provider_id == provider.id)).all():
        err = machines.machine_field_error(s, provider, name, inv,
                                           loc + [order.index(name) if name in order else name])
        if err is not None:
            raise err
    machines.sync_capacity(s, [provider.id])


def get_provider(s: Session, provider_id: str) -> Provider:
    provider = s.get(Provider, provider_id) if plausible_id(provider_id) else None
    if provider is None:
        raise NotFound("Provider not found")
    return provider


def set_provider_enabled(s: Session, provider_id: str, enabled: bool) -> Provider:
    provider = get_provider(s, provider_id)
    provider.enabled = enabled
    after_commit(s, PLANS_CHANGED)
    s.flush()
    return provider


def provider_json(provider: Provider, stats: tuple[int, int, int] = (0, 0, 0)) -> dict[str, Any]:
    offers, capacity, in_use = stats
    return {"id": provider.id, "name": provider.name, "driver": provider.driver,
            "config": public_config(provider), "warnings": config_warnings(provider),
            "enabled": provider.enabled,
            "created_at": provider.created_at, "offers": offers, "capacity": capacity,
            "in_use": in_use}


def list_providers(s: Session) -> list[dict[str, Any]]:
    stats = {row.provider_id: (int(row.offers), int(row.capacity), int(row.in_use))
             for row in s.execute(
                 select(Offer.provider_id, func.count(func.distinct(Offer.id)).label("offers"),
                        func.coalesce(func.sum(OfferZone.capacity), 0).label("capacity"),
                        func.coalesce(func.sum(OfferZone.in_use), 0).label("in_use"))
                 .join(OfferZone, OfferZone.offer_id == Offer.id, isouter=True)
                 .group_by(Offer.provider_id))}
    providers = s.scalars(select(Provider).order_by(Provider.name)).all()
    return [provider_json(p, stats.get(p.id, (0, 0, 0))) for p in providers]


# --- offers --------------------------------------------------------------------------------------

def create_offer(s: Session, body: OfferCreate, now: dt.datetime) -> Offer:
    errs = offer_rule_errors(body, ["body"])
    if errs:
        raise field_errors(errs)
    provider = get_provider(s, body.provider_id)
    problem = offer_problem(provider, body)
    if problem is not None:
        value = getattr(body, problem[0])
        value = value.model_dump() if hasattr(value, "model_dump") else value
        raise field_errors([(["body", problem[0]], problem[1], value)])
    # Against what the BMCs of the machines that would serve it reported.
    err = machines.offer_field_error(s, provider, body, None, ["body"])
    if err is not None:
        raise err
    return add_offer(s, body.provider_id, body, now)


def add_offer(s: Session, provider_id: str, f: OfferFields, now: dt.datetime) -> Offer:
    """Insert a validated offer and one zone per country."""
    offer = Offer(provider_id=provider_id, workload=f.workload, gpu_vendor=f.gpu.vendor,
                  gpu_model=f.gpu.model, gpu_vram=f.gpu.vram, gpu_interface=f.gpu.interface.upper(),
                  gpu_count=f.gpu_count, vcpu=f.vcpu, memory_gib=f.memory_gib,
                  storage_gib=f.storage_gib, price_hour=to_micro(f.price_hour),
                  location=f.location, nvlink=f.nvlink, os_options=list(f.os_options or []),
                  enabled=f.enabled, created_at=now)
    s.add(offer)
    after_commit(s, PLANS_CHANGED)
    s.flush()
    for country in offer_countries(f):
        s.add(OfferZone(offer_id=offer.id, country=country, capacity=f.capacity, in_use=0))
    s.flush()
    if f.workload == "baremetal":
        machines.sync_capacity(s, [provider_id])  # its free machines, not `capacity`
    return offer


def get_offer(s: Session, offer_id: str) -> Offer:
    offer = s.get(Offer, offer_id) if plausible_id(offer_id) else None
    if offer is None:
        raise NotFound("Offer not found")
    return offer


def set_zone_capacity(s: Session, offer_id: str, capacity: int) -> None:
    # Capacity below in_use is allowed: running instances stay, no new deploys until they end.
    s.execute(update(OfferZone).where(OfferZone.offer_id == offer_id)
              .values(capacity=capacity).execution_options(synchronize_session=False))


def patch_offer(s: Session, offer_id: str, patch: OfferPatch) -> Offer:
    offer = get_offer(s, offer_id)
    after_commit(s, PLANS_CHANGED)
    if patch.enabled is not None:
        offer.enabled = patch.enabled
    if patch.price_hour is not None:
        # Instances snapshot their price at deploy, so this only affects new deploys.
        offer.price_hour = to_micro(patch.price_hour)
    if patch.capacity is not None:
        set_zone_capacity(s, offer.id, patch.capacity)
        if offer.workload == "baremetal":
            machines.sync_capacity(s, [offer.provider_id])  # machines decide, not `capacity`
    s.flush()
    return offer


def offer_json(offer: Offer, provider_name: str, zones: list[OfferZone]) -> dict[str, Any]:
    zones = sorted(zones, key=lambda z: z.country)
    return {
        "id": offer.id, "name": plan_name(offer), "provider_id": offer.provider_id,
        "provider": provider_name, "workload": offer.workload, "gpu": gpu_json(offer),
        "gpu_count": offer.gpu_count, "vcpu": offer.vcpu, "memory_gib": offer.memory_gib,
        "storage_gib": offer.storage_gib, "price_hour": from_micro(offer.price_hour),
        "location": offer.location, "countries": [z.country for z in zones],
        "nvlink": offer.nvlink, "os_options": list(offer.os_options or []),
        "enabled": offer.enabled, "capacity": sum(z.capacity for z in zones),
        "in_use": sum(z.in_use for z in zones),
        "zones": [{"id": z.id, "country": z.country, "capacity": z.capacity, "in_use": z.in_use}
                  for z in zones],
        "created_at": offer.created_at,
    }


def list_offers(s: Session, provider_id: str | None = None,
                offer_id: str | None = None) -> list[dict[str, Any]]:
    q = select(Offer, Provider.name).join(Provider, Provider.id == Offer.provider_id)
    if provider_id is not None:
        if not plausible_id(provider_id):
            return []
        q = q.where(Offer.provider_id == provider_id)
    if offer_id is not None:
        if not plausible_id(offer_id):
            return []
        q = q.where(Offer.id == offer_id)
    rows = s.execute(q.order_by(Provider.name, Offer.workload, Offer.gpu_model, Offer.gpu_count,
                                Offer.price_hour, Offer.id)).all()
    zones: dict[str, list[OfferZone]] = defaultdict(list)
    ids = [offer.id for offer, _ in rows]
    if ids:
        for zone in s.scalars(select(OfferZone).where(OfferZone.offer_id.in_(ids))):
            zones[zone.offer_id].append(zone)
    return [offer_json(offer, name, zones[offer.id]) for offer, name in rows]


def offer_out(s: Session, offer_id: str) -> dict[str, Any]:
    s.expire_all()  # zone rows were changed by bulk UPDATEs; read them fresh
    found = list_offers(s, offer_id=offer_id)
    if not found:
        raise NotFound("Offer not found")
    return found[0]


# --- capacity ------------------------------------------------------------------------------------

def _free_zones(s: Session, offer_id: str) -> list[tuple[int, str, int]]:
    rows = s.execute(select(OfferZone.id, OfferZone.country, OfferZone.capacity, OfferZone.in_use)
                     .where(OfferZone.offer_id == offer_id)).all()
    free = [(r.id, r.country, r.capacity - r.in_use) for r in rows if r.in_use < r.capacity]
    # Most free capacity first spreads load; ties go alphabetically so the choice is stable.
    return sorted(free, key=lambda z: (-z[2], z[1]))


def _location_error(country: str, free: list[tuple[int, str, int]]) -> BadRequest:
    names = ", ".join(sorted(c for _, c, _ in free))
    return BadRequest(f"Location {country} is not available for this plan. "
                      f"Available locations: {names}")


class TakenZone(NamedTuple):
    """The zone a deploy took a unit of, as the UPDATE returned it."""

    id: int
    country: str
    in_use: int


_TAKE_ZONE_SQL = """
UPDATE offer_zones SET in_use = in_use + 1
WHERE id = (SELECT id FROM offer_zones
            WHERE offer_id = :offer_id AND in_use < capacity {country}
            ORDER BY capacity - in_use DESC, country LIMIT 1)
  AND in_use < capacity
RETURNING id, country, in_use"""
# Built once: deploy is the hottest write and statement construction cost more than the SQL.
_TAKE_ANY_ZONE = text(_TAKE_ZONE_SQL.format(country=""))
_TAKE_COUNTRY_ZONE = text(_TAKE_ZONE_SQL.format(country="AND country = :country"))


def _take_zone(s: Session, offer_id: str, country: str | None) -> TakenZone | None:
    """One statement: pick the zone (the requested country, else the one with the most free
    capacity, ties alphabetical) and take a unit of it. The outer `in_use < capacity` is
    re-checked under the row lock on PostgreSQL, so the subquery's pick can never overbook."""
    if country is None:
        row = s.connection().execute(_TAKE_ANY_ZONE, {"offer_id": offer_id}).one_or_none()
    else:
        row = s.connection().execute(_TAKE_COUNTRY_ZONE,
                                     {"offer_id": offer_id, "country": country}).one_or_none()
    return TakenZone(*row) if row is not None else None


class DeployTarget(NamedTuple):
    provider_id: str
    name: str


_DEPLOYABLE = (
    select(Offer.__table__, Provider.name.label("provider_name"),
           Provider.enabled.label("provider_enabled"))
    .join(Provider.__table__, Provider.id == Offer.provider_id)
    .where(Offer.id == bindparam("plan_id"))
)


def deployable(s: Session, plan_id: str, workload: str) -> tuple[Any, DeployTarget]:
    """The offer (a row with the offers columns) and its provider, if a deploy of `workload`
    may use it (no capacity check). Core, not ORM: this runs on every deploy."""
    row = s.connection().execute(_DEPLOYABLE, {"plan_id": plan_id}).one_or_none() \
        if plausible_id(plan_id) else None
    if row is None or not row.enabled or row.workload != workload or not row.provider_enabled:
        raise BadRequest(PLAN_UNAVAILABLE)
    return row, DeployTarget(row.provider_id, row.provider_name)


def check_free(s: Session, offer_id: str, country: str | None) -> None:
    """Raise the error a deploy would get if no zone (or not `country`) has free capacity."""
    free = _free_zones(s, offer_id)
    if not free:
        raise BadRequest(PLAN_UNAVAILABLE)
    if country is not None and all(c != country for _, c, _ in free):
        raise _location_error(country, free)


def take_zone_sql(by_country: bool) -> str:
    """The zone take (`take_zone`'s one statement) as SQL text, bind parameters `:offer_id`
    and, by country, `:country`, for a caller that runs it inside a larger statement (the
    PostgreSQL deploy, as a WITH query) and hands that to `take_zone` as `take`."""
    return _TAKE_ZONE_SQL.format(country="AND country = :country" if by_country else "")


def take_zone(s: Session, offer_id: str, country: str | None,
              take: Callable[[], TakenZone | None] | None = None) -> TakenZone:
    """Take one unit of the offer's capacity, in the caller's transaction; `take` runs the
    statement (`take_zone_sql` inside the caller's own) when the caller has one.

    The conditional UPDATE is the only arbiter: on PostgreSQL a second writer blocks on the row
    and re-checks `in_use < capacity` after the first commits; SQLite serializes writers. So two
    deploys can never both take the last unit, whatever they read before. The happy path is
    one statement; the error paths query to explain."""
    # A zone can be taken by someone else between pick and update; try again while any zone
    # still shows free capacity (bounded: each retry means a unit was taken by another).
    for _ in range(8):
        zone = take() if take is not None else _take_zone(s, offer_id, country)
        if zone is not None:
            after_commit(s, PLANS_CHANGED)  # one less unit on sale
            return zone
        check_free(s, offer_id, country)
    raise BadRequest(PLAN_UNAVAILABLE)


def take_capacity(s: Session, plan_id: str, workload: str,
                  country: str | None) -> tuple[Any, TakenZone, Provider]:
    offer, target = deployable(s, plan_id, workload)
    zone = take_zone(s, offer.id, country)
    return offer, zone, s.get(Provider, target.provider_id)


def release_capacity(s: Session, zone_id: int) -> None:
    """Give back one unit (instance ended or failed); never below zero."""
    after_commit(s, PLANS_CHANGED)
    s.execute(update(OfferZone).where(OfferZone.id == zone_id, OfferZone.in_use > 0)
              .values(in_use=OfferZone.in_use - 1).execution_options(synchronize_session=False))
