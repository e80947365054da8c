from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from gpucloud.catalog.models import (  # noqa: F401 (machines are the catalog's; re-exported)
    MACHINE_DIRTY,
    MACHINE_FREE,
    MACHINE_MAINTENANCE,
    MACHINE_RENTED,
    Machine,
)
from gpucloud.db import Base, BigIntPK, Micro, UTCDateTime, UUIDStr, new_id

# Public statuses (SPEC §5).
INITIALIZED, ACTIVE, ENDED, FAILED = "INITIALIZED", "ACTIVE", "ENDED", "FAILED"

# Pending background operations (`op` column); NULL = nothing to do.
OP_CREATE, OP_UPDATE, OP_DELETE, OP_WATCH = "create", "update", "delete", "watch"


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(UUIDStr, primary_key=True, default=new_id)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    offer_id: Mapped[str] = mapped_column(ForeignKey("offers.id"))
    zone_id: Mapped[int] = mapped_column(ForeignKey("offer_zones.id"))
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id"))
    workload: Mapped[str] = mapped_column(String(16))  # container | vm | baremetal
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=INITIALIZED)
    location: Mapped[str] = mapped_column(String(64))  # country (containers) or data center
    # Snapshot of the plan at deploy time: {"supply": {...}, "gpu_model": {...}}.
    resources: Mapped[dict[str, Any]] = mapped_column(JSON)
    price_hour: Mapped[int] = mapped_column(Micro)

    # Container configuration in effect: {image, expose, environment, startup_command}.
    container: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    credentials_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    ssh_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    os_image: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # An update being applied: {"name", "container", "ssh_key"} + credentials below.
    pending_update: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    pending_credentials_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)

    # What the driver reported once running.
    domain: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # {"forwarded_ports": [{port, external_port, protocol}], "uri": str|None,
    #  "ssh": {"user", "host", "port"}|None}
    network: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    container_started: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    driver_state: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    # Money (integer micro-USDC), always moved together with a ledger entry.
    reserve: Mapped[int] = mapped_column(Micro, default=0)
    spent: Mapped[int] = mapped_column(Micro, default=0)
    # End of the last charged hour = the next boundary to process while ACTIVE.
    billed_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    # Background work: what to do next, when (server clock), and who holds it (wall clock).
    op: Mapped[str | None] = mapped_column(String(16), nullable=True)
    next_check_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lock_token: Mapped[str | None] = mapped_column(String(36), nullable=True)
    lock_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    provision_deadline_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    activated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        # id last: the lists order by created_at, then id, straight from the index.
        Index("ix_instances_account", "account_id", "workload", "created_at", "id"),
        Index("ix_instances_billing", "status", "billed_until"),
        Index("ix_instances_work", "op", "next_check_at"),
    )


class InstanceEvent(Base):
    """gpucloud's own lifecycle lines for an instance (merged with the driver's on /events)."""

    __tablename__ = "instance_events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    message: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_instance_events_instance", "instance_id", "id"),)


class PortAllocation(Base):
    """External host ports the control plane handed out at a provider; unique per provider
    (instances/allocations.py)."""

    __tablename__ = "port_allocations"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id"))
    port: Mapped[int] = mapped_column(Integer)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    internal_port: Mapped[int] = mapped_column(Integer)
    protocol: Mapped[str] = mapped_column(String(8))

    __table_args__ = (
        UniqueConstraint("provider_id", "port", name="uq_port_allocation"),
        Index("ix_port_allocations_instance", "instance_id"),
    )


class GpuAllocation(Base):
    """GPU devices (ids from the provider config's `gpus` list) the control plane assigned to
    an instance; unique per provider (instances/allocations.py)."""

    __tablename__ = "gpu_allocations"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id"))
    device: Mapped[str] = mapped_column(String(128))
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))

    __table_args__ = (
        UniqueConstraint("provider_id", "device", name="uq_gpu_allocation"),
        Index("ix_gpu_allocations_instance", "instance_id"),
    )
