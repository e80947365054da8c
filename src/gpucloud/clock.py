"""The server's notion of "now".

Every time-driven step (provisioning progress, deadlines, billing boundaries, top-up retries)
reads this clock. Leases do NOT: they protect against dead processes and use wall time.

With `GPUCLOUD_CLOCK=manual` the time is stored in the database (`meta.clock_now`) so it
survives restarts and is shared by every server process on the database; it only moves through
POST /admin/clock and never backwards.
"""

from __future__ import annotations

import datetime as dt
import threading

from sqlalchemy import select

from gpucloud.accounts.models import Meta

CLOCK_KEY = "clock_now"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def parse_ts(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.astimezone(dt.timezone.utc)


def floor_hour(value: dt.datetime) -> dt.datetime:
    return value.replace(minute=0, second=0, microsecond=0)


class Clock:
    manual = False

    def now(self) -> dt.datetime:
        return utcnow()

    def refresh(self) -> None:
        """Pick up a time set by another process (manual clock only)."""


class SystemClock(Clock):
    pass


class ManualClock(Clock):
    manual = True

    def __init__(self, db):
        self._db = db
        self._lock = threading.Lock()
        with db.write() as s:
            row = s.get(Meta, CLOCK_KEY)
            if row is None:
                start = utcnow().replace(microsecond=0)
                s.add(Meta(key=CLOCK_KEY, value=start.isoformat()))
                self._now = start
            else:
                self._now = parse_ts(row.value)

    def now(self) -> dt.datetime:
        return self._now

    def refresh(self) -> None:
        with self._db.read() as s:
            value = s.scalar(select(Meta.value).where(Meta.key == CLOCK_KEY))
        if value:
            with self._lock:
                self._now = max(self._now, parse_ts(value))

    def set(self, value: dt.datetime) -> dt.datetime:
        """Move to `value` (never backwards). Returns the new time."""
        with self._lock:
            if value < self._now:
                raise ValueError("the clock cannot move backwards")
            with self._db.write() as s:
                row = s.get(Meta, CLOCK_KEY)
                stored = parse_ts(row.value) if row else value
                value = max(value, stored)
                if row is None:
                    s.add(Meta(key=CLOCK_KEY, value=value.isoformat()))
                else:
                    row.value = value.isoformat()
            self._now = value
            return value
