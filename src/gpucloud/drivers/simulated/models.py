"""The simulated provider's far side, its own table (the one driver that uses the database)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from gpucloud.db import Base, UTCDateTime, UUIDStr


class SimWorkload(Base):
    """State of the simulated provider's far side, kept in the database so it survives
    restarts and is shared by several server processes, like a real provider would be."""

    __tablename__ = "sim_workloads"

    instance_id: Mapped[str] = mapped_column(UUIDStr, primary_key=True)
    provider_id: Mapped[str] = mapped_column(UUIDStr)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    ready_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    lost_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    domain: Mapped[str] = mapped_column(String(255))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    ports: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    generation: Mapped[int] = mapped_column(BigInteger, default=1)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
