"""Console sign-in state: a server-side session per browser, found by an opaque cookie.

The API key a customer types is checked once, at sign-in, and then forgotten: the session row
keeps the key's id, so the key never lives in a cookie, a page, a URL or a script. Every page
load re-checks that key (revoked or expired → signed out), on the server clock like the API.

A session ends after `console_session_idle_seconds` without activity or, however active,
`console_session_max_seconds` after sign-in (settings; 30 minutes and 12 hours by default),
both on the server clock like key expiry and billing. Activity is a page the person opens or
a form they send; the console's own refreshes (htmx polls) do not count, so a tab left open
on a live page still ends. An ended session is refused, and its row deleted when its cookie
comes back; sign-ins sweep the rows of every other ended session.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, delete, select, update
from sqlalchemy.orm import Session

from gpucloud.accounts import service as accounts
from gpucloud.accounts.models import ApiKey
from gpucloud.console.models import ConsoleSession

COOKIE = "gpucloud_console"
LOGIN_CSRF_COOKIE = "gpucloud_console_login"
# Activity moves `last_seen_at` at most this often (or every quarter of the idle period if
# that is shorter), so that an active person costs one write a minute, not one per page; the
# idle end comes at most that much early.
TOUCH_EVERY = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class Lifetime:
    """How long a session lasts: `idle` after the last activity, `limit` after sign-in."""

    idle: dt.timedelta
    limit: dt.timedelta

    @classmethod
    def of(cls, settings) -> Lifetime:
        return cls(idle=dt.timedelta(seconds=settings.console_session_idle_seconds),
                   limit=dt.timedelta(seconds=settings.console_session_max_seconds))

    @property
    def touch_every(self) -> dt.timedelta:
        return min(TOUCH_EVERY, self.idle / 4)


@dataclass(frozen=True)
class Who:
    """The signed-in browser: a customer (account + key id) or an operator."""

    session_id: str
    csrf: str
    account_id: str | None
    api_key_id: str | None
    admin: bool
    last_seen_at: dt.datetime


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def customer_key(s: Session, api_key: str, now: dt.datetime) -> tuple[str, str] | None:
    """(account id, key id) for a valid key typed at sign-in, else None."""
    found = accounts.lookup_key(s, api_key, now)
    if found is None:
        return None
    account_id, key_id, expires_at = found
    if expires_at is not None and expires_at <= now:
        return None
    return account_id, key_id


def sweep(s: Session, now: dt.datetime, life: Lifetime) -> int:
    """Delete every ended session (idle too long or past its limit); returns how many."""
    ended = (ConsoleSession.expires_at <= now) | (ConsoleSession.last_seen_at <= now - life.idle)
    return s.execute(delete(ConsoleSession).where(ended)).rowcount or 0


def open_session(s: Session, now: dt.datetime, life: Lifetime, *, account_id: str | None,
                 api_key_id: str | None, admin: bool) -> str:
    """Store a new session; returns the cookie token (shown to nobody but the browser)."""
    token = new_token()
    # Ended sessions nobody comes back for are swept here rather than by a worker: sign-ins
    # are rare, and the delete is one indexed statement.
    sweep(s, now, life)
    s.add(ConsoleSession(id=_digest(token), account_id=account_id, api_key_id=api_key_id,
                         admin=admin, csrf=new_token(), created_at=now, last_seen_at=now,
                         expires_at=now + life.limit))
    s.flush()
    return token


class Ended(Exception):
    """The cookie names a session that has ended (idle, past its limit, or its key revoked
    or expired): refuse it, and delete its row."""

    def __init__(self, session_id: str):
        super().__init__("session ended")
        self.session_id = session_id


# Every console request runs this one lookup (pages and each 2-second poll), so it is built
# once and read as plain rows on a Core connection (db.query: a fraction of an ORM session's
# cost per read).
_FIND = (
    select(ConsoleSession.id, ConsoleSession.csrf, ConsoleSession.account_id,
           ConsoleSession.api_key_id, ConsoleSession.admin, ConsoleSession.last_seen_at,
           ConsoleSession.expires_at, ApiKey.revoked_at,
           ApiKey.expires_at.label("key_expires_at"))
    .join(ApiKey, ApiKey.id == ConsoleSession.api_key_id, isouter=True)
    .where(ConsoleSession.id == bindparam("id"))
)


def find(conn: Connection, token: str | None, now: dt.datetime,
         life: Lifetime) -> Who | None:
    """The session of this cookie if it is still good (and so is its API key); None for an
    unknown cookie; raises `Ended` for a session that has ended."""
    if not token or len(token) > 128:
        return None
    row = conn.execute(_FIND, {"id": _digest(token)}).one_or_none()
    if row is None:
        return None
    if row.expires_at <= now or row.last_seen_at + life.idle <= now:
        raise Ended(row.id)
    if not row.admin:
        if row.api_key_id is None or row.revoked_at is not None:
            raise Ended(row.id)
        if row.key_expires_at is not None and row.key_expires_at <= now:
            raise Ended(row.id)
    return Who(session_id=row.id, csrf=row.csrf, account_id=row.account_id,
               api_key_id=row.api_key_id, admin=row.admin, last_seen_at=row.last_seen_at)


def needs_touch(who: Who, now: dt.datetime, life: Lifetime) -> bool:
    return now - who.last_seen_at >= life.touch_every


def touch(s: Session, session_id: str, now: dt.datetime) -> None:
    """Activity: the idle period starts again from `now` (never moved backwards)."""
    s.execute(update(ConsoleSession)
              .where(ConsoleSession.id == session_id, ConsoleSession.last_seen_at < now)
              .values(last_seen_at=now))


def close(s: Session, session_id: str) -> None:
    s.execute(delete(ConsoleSession).where(ConsoleSession.id == session_id))
