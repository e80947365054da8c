"""Retries never double-spend: the `Idempotency-Key` header on requests that create or move
money (deploys of every kind, admin deposits and account creation), as Stripe does.

The first request with a key runs and its answer is stored in the same transaction as the
work it answers for; a request with the same key from the same caller within 24 hours (server
clock) gets that answer again, with `Idempotent-Replayed: true`, and changes nothing. The same
key with a different request is a 422. A request that fails changed nothing, so nothing is
stored and a retry runs it again.

The key's row is inserted before the work runs, so two concurrent requests with one key meet
at the primary key: on PostgreSQL the second waits there until the first commits, then fails
the insert, rolls back and replays the first answer; SQLite runs write transactions one at a
time anyway. Several server processes share the table.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from typing import Any

from fastapi import Header
from sqlalchemy import Integer, String, Text, delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from gpucloud.db import Base, UTCDateTime
from gpucloud.errors import FieldError
from gpucloud.jsonresp import JSON, dumps

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
TTL = dt.timedelta(hours=24)
_LOC = ["header", HEADER]


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)  # account id, or "admin"
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # the request it answered
    status_code: Mapped[int] = mapped_column(Integer, default=0)
    body: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


async def key_header(value: str | None = Header(
        None, alias=HEADER, max_length=255,
        description="Any unique string (a UUID): a retry with the same key within 24 hours "
                    "returns the first answer and changes nothing.")) -> str | None:
    """FastAPI dependency: the request's Idempotency-Key, checked. Async: it only reads a
    header, and a plain `def` dependency costs a hop to a worker thread and back."""
    return checked_key(value)


def checked_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not value.isascii() or not value.isprintable():
        raise FieldError(_LOC, "Idempotency-Key must be 1 to 255 printable ASCII characters",
                         value[:255])
    return value


def fingerprint(operation: str, body: Any) -> str:
    """The request as the server understood it: the operation and its validated body."""
    raw = body.model_dump_json() if hasattr(body, "model_dump_json") else dumps(body).decode()
    return hashlib.sha256(f"{operation}\n{raw}".encode()).hexdigest()


def _replay(row: IdempotencyKey, print_: str) -> JSON:
    if row.fingerprint != print_:
        raise FieldError(_LOC, "This Idempotency-Key was already used with a different request",
                         row.key)
    return JSON(row.body.encode(), status_code=row.status_code, headers={REPLAYED: "true"})


def run(rt, scope: str, key: str | None, print_: str,
        work: Callable[[Session], tuple[int, Any]]) -> JSON:
    """Run `work(session)` → (status, JSON payload) in one write transaction, once per key."""
    if key is None:
        with rt.db.write() as s:
            status, payload = work(s)
        return JSON(payload, status_code=status)
    try:
        with rt.db.write() as s:
            now = rt.clock.now()
            row = s.get(IdempotencyKey, (scope, key))
            if row is not None and row.created_at > now - TTL:
                return _replay(row, print_)
            if row is not None:  # expired: the key may be used again
                s.execute(delete(IdempotencyKey).where(IdempotencyKey.scope == scope,
                                                       IdempotencyKey.key == key))
            row = IdempotencyKey(scope=scope, key=key, fingerprint=print_, created_at=now)
            s.add(row)
            s.flush()  # claims the key now: a concurrent twin waits here
            status, payload = work(s)
            row.status_code, row.body = status, dumps(payload).decode()
        return JSON(row.body.encode(), status_code=status)
    except IntegrityError:
        # Either the twin committed the key first (replay its answer), or the work itself
        # broke a constraint (not ours to answer).
        with rt.db.read() as s:
            row = s.get(IdempotencyKey, (scope, key))
            if row is None:
                raise
            return _replay(row, print_)
