"""The servers of a bare-metal provider as the catalog sees them (table `machines`).

- Rows follow the provider's config (`sync_rows`): one per machine it names, created free.
- A machine-backed offer's capacity is what it can rent *now*: its clean, healthy, free
  machines. The zone keeps `capacity = in_use + free machines serving the offer`
  (`sync_capacity`), so the plans list and the `in_use < capacity` gate of a deploy need no
  special case; the exact arbiter is the compare-and-set on `state = free` that rents a machine
  in the deploy's own transaction (instances/allocations.py `rent_at_deploy`). Every change of a
  machine's state, of a provider's config or of a machine-backed offer calls `sync_capacity`
  in the same transaction.
- Inventory: what each BMC reports (CPUs, memory, GPUs, power) is read over Redfish at
  registration and by the admin inventory action (`read_inventories`, outside any
  transaction: it is network I/O), stored on the row, and checked against the offers the
  machine serves (`contradictions`). A field the BMC does not report is *unverified* — shown
  to the operator, never a mismatch.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from gpucloud.catalog.models import (
    MACHINE_FREE,
    Machine,
    Offer,
    OfferZone,
    Provider,
)
from gpucloud.db import PLANS_CHANGED, after_commit
from gpucloud.drivers.base import DriverContext, DriverError
from gpucloud.drivers.registry import driver_class
from gpucloud.errors import FieldError

UNVERIFIED = "unverified"
# (inventory key, offer field, what it counts)
CHECKED = (("cpus", "vcpu", "CPUs"), ("memory_gib", "memory_gib", "GiB of memory"),
           ("gpus", "gpu_count", "GPUs"))


def served(provider: Provider) -> dict[str, list[str] | None]:
    """Machine name → the offer ids it is limited to (None: every bare-metal offer of the
    provider); empty for a provider that does not deploy on machines."""
    try:
        cls = driver_class(provider.driver)
    except ValueError:
        return {}
    return dict(cls.machines(provider.config or {}))


def serves(limited_to: list[str] | None, offer_id: str) -> bool:
    return limited_to is None or offer_id in limited_to


def sync_rows(s: Session, provider: Provider, now: dt.datetime) -> dict[str, list[str] | None]:
    """A free row for every machine the config names; free rows of machines it no longer
    names go (a rented, dirty or maintenance one stays until it is dealt with)."""
    names = served(provider)
    have = set(s.scalars(select(Machine.name).where(Machine.provider_id == provider.id)))
    for name in names:
        if name not in have:
            s.add(Machine(provider_id=provider.id, name=name, state=MACHINE_FREE,
                          updated_at=now))
    gone = have - set(names)
    if gone:
        s.execute(delete(Machine).where(Machine.provider_id == provider.id,
                                        Machine.name.in_(gone), Machine.state == MACHINE_FREE)
                  .execution_options(synchronize_session=False))
    s.flush()
    return names


def sync_capacity(s: Session, provider_ids: Iterable[str]) -> None:
    """capacity = in_use + free machines serving the offer, for every bare-metal offer zone
    of the providers (those deploying on machines). In the caller's transaction."""
    for pid in dict.fromkeys(provider_ids):
        provider = s.get(Provider, pid)
        names = served(provider) if provider is not None else {}
        if not names:
            continue
        free = [n for n in s.scalars(select(Machine.name).where(
            Machine.provider_id == pid, Machine.state == MACHINE_FREE)) if n in names]
        zones = s.execute(select(OfferZone.id, Offer.id).join(Offer, Offer.id == OfferZone.offer_id)
                          .where(Offer.provider_id == pid, Offer.workload == "baremetal")
                          .order_by(OfferZone.id)).all()
        for zone_id, offer_id in zones:
            n = sum(1 for name in free if serves(names[name], offer_id))
            # in_use is read by the UPDATE itself: never a stale copy of it.
            s.execute(update(OfferZone).where(OfferZone.id == zone_id)
                      .values(capacity=OfferZone.in_use + n)
                      .execution_options(synchronize_session=False))
        after_commit(s, PLANS_CHANGED)


def is_machine_backed(provider: Provider) -> bool:
    return bool(served(provider))


# --- inventory -------------------------------------------------------------------------------

def read_inventories(driver: str, config: dict[str, Any], clock,
                     names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Machine name → what its BMC reports, read now over the network (never inside a
    transaction). `config` is the opened config (clear passwords). A BMC that does not
    answer gives `{"error": why}`: everything unverified."""
    try:
        cls = driver_class(driver)
    except ValueError:
        return {}
    wanted = [n for n, _ in cls.machines(config) if names is None or n in set(names)]
    if not wanted:
        return {}
    drv = cls("registration", config, DriverContext(clock=clock))
    out: dict[str, dict[str, Any]] = {}
    try:
        for name in wanted:
            try:
                out[name] = drv.machine_inventory(name)
            except DriverError as exc:
                out[name] = {"error": str(exc)}
    finally:
        drv.close()
    return out


def store_inventory(s: Session, provider_id: str, inventories: dict[str, dict[str, Any]],
                    now: dt.datetime) -> None:
    for name, inv in inventories.items():
        s.execute(update(Machine).where(Machine.provider_id == provider_id, Machine.name == name)
                  .values(inventory=inv, inventory_at=now)
                  .execution_options(synchronize_session=False))


def contradictions(machine: str, inventory: dict[str, Any] | None, offer) -> list[tuple[str, str]]:
    """(offer field, why) for every reported figure below what the offer promises. `offer`:
    an Offer row or offer fields (vcpu, memory_gib, gpu_count). Unreported = unverified."""
    out = []
    for key, field, what in CHECKED:
        have = (inventory or {}).get(key)
        want = getattr(offer, field)
        # Memory: a BMC's total may be a little under the nominal size (firmware reserves).
        short = have is not None and (have < want * 0.97 if key == "memory_gib" else have < want)
        if short:
            out.append((field, f"Machine {machine} reports {have:g} {what}; the offer says "
                               f"{want}"))
    return out


def offer_field_error(s: Session, provider: Provider, offer, offer_id: str | None,
                      loc: list[Any]) -> FieldError | None:
    """The 422 for an offer that a machine serving it contradicts (offer creation: the
    machines not limited to other offers)."""
    names = served(provider)
    if not names or getattr(offer, "workload", "baremetal") != "baremetal":
        return None
    rows = s.execute(select(Machine.name, Machine.inventory)
                     .where(Machine.provider_id == provider.id)).all()
    errs = []
    for name, inv in rows:
        if name not in names:
            continue
        limited = names[name]
        if (offer_id is None and limited is not None) or (
                offer_id is not None and not serves(limited, offer_id)):
            continue
        errs += [(loc + [field], why, getattr(offer, field))
                 for field, why in contradictions(name, inv, offer)]
    return _joined(errs)


def machine_field_error(s: Session, provider: Provider, name: str,
                        inventory: dict[str, Any] | None, loc: list[Any]) -> FieldError | None:
    """The 422 for a machine whose inventory contradicts an offer it serves, naming the
    machine and the offer field."""
    limited = served(provider).get(name)
    offers = s.scalars(select(Offer).where(Offer.provider_id == provider.id,
                                           Offer.workload == "baremetal")).all()
    errs = [(loc, f"{why} (offer {o.id}, field {field})", name)
            for o in offers if serves(limited, o.id)
            for field, why in contradictions(name, inventory, o)]
    return _joined(errs)


def inventory_view(inventory: dict[str, Any] | None) -> dict[str, Any] | None:
    """For the operator: each checked figure, or "unverified" when the BMC did not say."""
    if inventory is None:
        return None
    out: dict[str, Any] = {key: inventory.get(key) if inventory.get(key) is not None
                           else UNVERIFIED for key, _, _ in CHECKED}
    out["power"] = inventory.get("power") or UNVERIFIED
    if inventory.get("pcie_devices") is not None:
        out["pcie_devices"] = inventory["pcie_devices"]
    if inventory.get("error"):
        out["error"] = inventory["error"]
    return out


def machine_json(m: Machine) -> dict[str, Any]:
    return {"id": m.id, "provider_id": m.provider_id, "name": m.name, "state": m.state,
            "instance_id": m.instance_id, "reason": m.reason, "updated_at": m.updated_at,
            "inventory": inventory_view(m.inventory), "inventory_at": m.inventory_at}


def _joined(errs: list[tuple[list[Any], str, Any]]) -> FieldError | None:
    """One 422 listing every (loc, message, input), or None when there is none."""
    if not errs:
        return None
    first = FieldError(*errs[0])
    for e in errs[1:]:
        first.errors.extend(FieldError(*e).errors)
    return first
