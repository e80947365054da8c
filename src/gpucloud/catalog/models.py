from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from gpucloud.db import Base, BigIntPK, Micro, UTCDateTime, UUIDStr, new_id


class Provider(Base):
    __tablename__ = "providers"

    id: Mapped[str] = mapped_column(UUIDStr, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    driver: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Offer(Base):
    """One deployable configuration. For containers an offer *is* a plan."""

    __tablename__ = "offers"

    id: Mapped[str] = mapped_column(UUIDStr, primary_key=True, default=new_id)
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id"))
    workload: Mapped[str] = mapped_column(String(16))  # container | vm | baremetal
    gpu_vendor: Mapped[str] = mapped_column(String(32))
    gpu_model: Mapped[str] = mapped_column(String(64))
    gpu_vram: Mapped[str] = mapped_column(String(16))  # "141Gi"
    gpu_interface: Mapped[str] = mapped_column(String(16))  # "SXM", "pcie"
    gpu_count: Mapped[int] = mapped_column(Integer)
    vcpu: Mapped[int] = mapped_column(Integer)
    memory_gib: Mapped[int] = mapped_column(Integer)
    storage_gib: Mapped[int] = mapped_column(Integer)
    price_hour: Mapped[int] = mapped_column(Micro)
    # Data-center id shown in VM/bare-metal plans ("us-central-3"); containers use zones.
    location: Mapped[str | None] = mapped_column(String(64), nullable=True)
    nvlink: Mapped[bool] = mapped_column(Boolean, default=False)
    os_options: Mapped[list[str]] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_offers_workload", "workload", "enabled"),)


class OfferZone(Base):
    """Capacity of an offer in one country. A container offer may span several countries;
    a VM/bare-metal offer has exactly one zone (its data center's country).

    `in_use` only moves through conditional UPDATEs (`in_use < capacity`), which is what makes
    two concurrent deploys unable to both take the last unit.
    """

    __tablename__ = "offer_zones"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    offer_id: Mapped[str] = mapped_column(ForeignKey("offers.id", ondelete="CASCADE"))
    country: Mapped[str] = mapped_column(String(2))
    capacity: Mapped[int] = mapped_column(Integer)
    in_use: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (UniqueConstraint("offer_id", "country", name="uq_offer_zone"),)


class DefaultImage(Base):
    __tablename__ = "default_images"

    slug: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    image: Mapped[str] = mapped_column(String(255))
    expose: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    environment: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    startup_command: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    requires_ssh: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    position: Mapped[int] = mapped_column(Integer, default=0)


# Machine states (bare metal): rentable only when FREE, which a machine becomes only after
# its wipe succeeded (instances/allocations.py).
MACHINE_FREE, MACHINE_RENTED, MACHINE_DIRTY, MACHINE_MAINTENANCE = (
    "free", "rented", "dirty", "maintenance")


class Machine(Base):
    """A whole server of a bare-metal provider (named in its config), as the control plane
    sees it: free, rented to an instance, dirty (its last instance ended, wipe pending) or in
    maintenance (a wipe failed; nobody rents it until an operator acts).

    The catalog's because a machine-backed offer's capacity is its free machines
    (catalog/machines.py); instances/allocations.py rents them."""

    __tablename__ = "machines"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id"))
    name: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=MACHINE_FREE)
    # The renter, or (dirty/maintenance) the last instance whose data it may still hold.
    instance_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # What the BMC reported (cpus, memory_gib, gpus, power; None = not reported, unverified)
    # at registration or the last admin check.
    inventory: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    inventory_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        UniqueConstraint("provider_id", "name", name="uq_machine"),
        Index("ix_machines_instance", "instance_id"),
    )
