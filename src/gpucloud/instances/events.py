"""gpucloud's own lifecycle lines for an instance (SPEC §5: every transition is an event).

They are merged with the driver's infrastructure events on GET /gpu/instances/{id}/events.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import Session

from gpucloud.instances.models import InstanceEvent

_INSERT = insert(InstanceEvent.__table__)


def record(s: Session, instance_id: str, at: dt.datetime, message: str) -> None:
    """Add one line in the caller's transaction (never log secrets in `message`)."""
    s.execute(_INSERT, {"instance_id": instance_id, "at": at, "message": message})


_FOR_INSTANCE = (
    select(InstanceEvent.at, InstanceEvent.message)
    .where(InstanceEvent.instance_id == bindparam("instance_id")).order_by(InstanceEvent.id)
)


def for_instance(conn, instance_id: str) -> list[tuple[dt.datetime, str]]:
    """`conn`: a Session or a Connection."""
    rows = conn.execute(_FOR_INSTANCE, {"instance_id": instance_id}).all()
    return [(r.at, r.message) for r in rows]


_LAST = (
    select(InstanceEvent.message)
    .where(InstanceEvent.instance_id == bindparam("instance_id"))
    .order_by(InstanceEvent.id.desc()).limit(1)
)


def last_message(conn, instance_id: str) -> str | None:
    """The instance's newest line (a progress report is recorded only when it changed)."""
    return conn.execute(_LAST, {"instance_id": instance_id}).scalar()
