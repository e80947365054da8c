"""Console sign-in state: a server-side session per browser, found by an opaque cookie.

The API key a customer types is checked once, at sign-in, and then forgotten: the session row
keeps the key's id, so the key never lives in a cookie, a page, a URL or a script. Every page
load re-checks that key (revoked or expired → signed out), on the server clock like the API.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from gpucloud.accounts import service as accounts
from gpucloud.accounts.models import ApiKey
from gpucloud.console.models import ConsoleSession

COOKIE = "gpucloud_console"
LOGIN_CSRF_COOKIE = "gpucloud_console_login"
# A working day; a signed-in tab polls, but polling does not extend the session.
LIFETIME = dt.timedelta(hours=12)


@dataclass(frozen=True)
class Who:
    """The signed-in browser: a customer (account + key id) or an operator."""

    session_id: str
    csrf: str
    account_id: str | None
    api_key_id: str | None
    admin: bool


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def wall_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


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


def open_session(s: Session, *, account_id: str | None, api_key_id: str | None,
                 admin: bool) -> str:
    """Store a new session; returns the cookie token (shown to nobody but the browser)."""
    token = new_token()
    now = wall_now()
    # Expired sessions are swept here rather than by a worker: sign-ins are rare and cheap.
    s.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))
    s.add(ConsoleSession(id=_digest(token), account_id=account_id, api_key_id=api_key_id,
                         admin=admin, csrf=new_token(), created_at=now,
                         expires_at=now + LIFETIME))
    s.flush()
    return token


def find(s: Session, token: str | None, server_now: dt.datetime) -> Who | None:
    """The session of this cookie, if it is still good (and so is its API key)."""
    if not token or len(token) > 128:
        return None
    row = s.execute(
        select(ConsoleSession, ApiKey.revoked_at, ApiKey.expires_at)
        .join(ApiKey, ApiKey.id == ConsoleSession.api_key_id, isouter=True)
        .where(ConsoleSession.id == _digest(token))
    ).one_or_none()
    if row is None:
        return None
    sess, revoked_at, key_expires = row
    if sess.expires_at <= wall_now():
        return None
    if not sess.admin:
        if sess.api_key_id is None or revoked_at is not None:
            return None
        if key_expires is not None and key_expires <= server_now:
            return None
    return Who(session_id=sess.id, csrf=sess.csrf, account_id=sess.account_id,
               api_key_id=sess.api_key_id, admin=sess.admin)


def close(s: Session, session_id: str) -> None:
    s.execute(delete(ConsoleSession).where(ConsoleSession.id == session_id))
