"""gpucloud's own lifecycle lines for an instance (SPEC §5: every transition is an event).

They are merged with the driver's infrastructure events on GET /gpu/instances/{id}/events.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from gpucloud.instances.models import InstanceEvent

_INSERT = insert(InstanceEvent.__table__)


def record(s: Session, instance_id: str, at: dt.datetime, message: str) -> None:
    """Add one line in the caller's transaction (never log secrets in `message`)."""
    s.execute(_INSERT, {"instance_id": instance_id, "at": at, "message": message})


def for_instance(s: Session, instance_id: str) -> list[tuple[dt.datetime, str]]:
    rows = s.execute(
        select(InstanceEvent.at, InstanceEvent.message)
        .where(InstanceEvent.instance_id == instance_id).order_by(InstanceEvent.id)
    ).all()
    return [(r.at, r.message) for r in rows]
