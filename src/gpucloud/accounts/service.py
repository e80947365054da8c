"""Accounts, API keys and the admin key."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from gpucloud import metrics
from gpucloud.accounts.models import Account, ApiKey, Meta
from gpucloud.billing import ledger
from gpucloud.db import plausible_id
from gpucloud.errors import NotFound

KEY_PREFIX = "gpc_"
ADMIN_KEY_META = "admin_key_hash"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_account(s: Session, name: str, balance: int, now: dt.datetime) -> tuple[Account, str]:
    account = Account(name=name, balance=0, created_at=now)
    s.add(account)
    s.flush()
    if balance > 0:
        ledger.deposit(s, account.id, balance, now)
    _, key = create_api_key(s, account.id, None, now)
    s.refresh(account)
    return account, key


def create_api_key(
    s: Session, account_id: str, expires_at: dt.datetime | None, now: dt.datetime
) -> tuple[ApiKey, str]:
    if not plausible_id(account_id) or s.get(Account, account_id) is None:
        raise NotFound("Account not found")
    key = new_key()
    row = ApiKey(
        account_id=account_id,
        key_hash=hash_key(key),
        prefix=key[:12],
        created_at=now,
        expires_at=expires_at,
    )
    s.add(row)
    s.flush()
    return row, key


def revoke_api_key(s: Session, key_id: str, now: dt.datetime) -> ApiKey:
    row = s.get(ApiKey, key_id) if plausible_id(key_id) else None
    if row is None:
        raise NotFound("API key not found")
    if row.revoked_at is None:
        row.revoked_at = now
    return row


# One statement, built once: GET /gpu/account is polled by consoles. `reserved` and `spent`
# are running totals on the row (billing/ledger.py), so this stays one row read however many
# instances the account has had.
_MONEY = select(
    Account.id, Account.name, Account.balance, Account.reserved, Account.spent,
).where(Account.id == bindparam("account_id"))


def money_summary(conn, account_id: str) -> dict:
    """Balance, reserve and spend of an account (`conn`: a Session or a Connection)."""
    return _summary(conn.execute(_MONEY, {"account_id": account_id}).one_or_none()
                    if plausible_id(account_id) else None)


async def read_money_summary(rt, account_id: str) -> dict:
    """`money_summary` for GET /gpu/account, read with `rt.read` (sent from the event loop)."""
    if not plausible_id(account_id):
        return _summary(None)
    return await rt.read(_MONEY, {"account_id": account_id}, then=lambda rows: _summary(
        rt.db.reader.convert(_MONEY, rows[0]) if rows else None))


def _summary(row) -> dict:
    if row is None:
        raise NotFound("Account not found")
    return {
        "id": row.id,
        "name": row.name,
        "balance": row.balance,
        "reserved": row.reserved,
        "spent": row.spent,
    }


def list_accounts(s: Session) -> list[Account]:
    """Every account, newest first (the operator console's list)."""
    return list(s.scalars(select(Account).order_by(Account.created_at.desc(), Account.id)))


def list_api_keys(s: Session, account_id: str) -> list[ApiKey]:
    """An account's keys with their prefixes and dates; the keys themselves are not stored."""
    return list(s.scalars(select(ApiKey).where(ApiKey.account_id == account_id)
                          .order_by(ApiKey.created_at.desc(), ApiKey.id)))


class KeyCache:
    """Verified keys → (account id, key id, expiry), trusted for a few seconds.

    Auth is on every request; without this each request would pay a database round trip.
    Revocation through this process clears the entry at once."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._entries: dict[str, tuple[float, str, str, dt.datetime | None]] = {}

    def get(self, key_hash: str):
        hit = self._entries.get(key_hash)
        if hit and hit[0] > time.monotonic():
            metrics.API_KEY_HIT.inc()
            return hit[1:]
        metrics.API_KEY_MISS.inc()
        return None

    def put(self, key_hash: str, account_id: str, key_id: str, expires_at) -> None:
        if len(self._entries) > 100_000:
            self._entries.clear()
        self._entries[key_hash] = (time.monotonic() + self.ttl, account_id, key_id, expires_at)

    def clear(self) -> None:
        self._entries.clear()


def lookup_key(
    s: Session, key: str, now: dt.datetime
) -> tuple[str, str, dt.datetime | None] | None:
    digest = hash_key(key)
    row = s.execute(
        select(
            ApiKey.key_hash, ApiKey.account_id, ApiKey.id, ApiKey.expires_at, ApiKey.revoked_at
        ).where(ApiKey.key_hash == digest)
    ).one_or_none()
    # The index finds the row; compare_digest keeps the final comparison constant-time.
    if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
        return None
    return row.account_id, row.id, row.expires_at


# --- admin key ------------------------------------------------------------------------------


def ensure_admin_key(s: Session, configured: str | None) -> str | None:
    """Returns a newly generated admin key (to print once), or None if one exists/is set."""
    if configured:
        return None
    if s.get(Meta, ADMIN_KEY_META) is not None:
        return None
    key = "adm_" + secrets.token_urlsafe(32)
    s.add(Meta(key=ADMIN_KEY_META, value=hash_key(key)))
    return key


def admin_key_hash(s: Session) -> str | None:
    return s.scalar(select(Meta.value).where(Meta.key == ADMIN_KEY_META))
