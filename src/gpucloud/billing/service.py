"""Reading the ledger: an account's transactions, newest first, keyset-paginated."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from gpucloud.billing.models import LedgerEntry
from gpucloud.errors import FieldError

_CURSOR_PREFIX = "le:"


def encode_cursor(entry_id: int) -> str:
    """Opaque to clients so the pagination key can change without breaking them."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{entry_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith(_CURSOR_PREFIX):
            raise ValueError(raw)
        value = int(raw[len(_CURSOR_PREFIX):])
        if not 1 <= value < 2**63:  # ids are BIGINT: a larger one cannot be a real cursor
            raise ValueError(raw)
        return value
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise FieldError(["query", "cursor"], "Invalid cursor", cursor) from None


_COLUMNS = [LedgerEntry.__table__.c[name] for name in (
    "id", "at", "kind", "amount", "instance_id", "balance_after")]
# Built once, with and without a cursor: building a statement per request cost more than
# running it.
_FIRST_PAGE = (
    select(*_COLUMNS).where(LedgerEntry.account_id == bindparam("account_id"))
    .order_by(LedgerEntry.id.desc()).limit(bindparam("limit"))
)
_NEXT_PAGE = _FIRST_PAGE.where(LedgerEntry.id < bindparam("before"))


def page_query(account_id: str, limit: int, cursor: str | None) -> tuple[Any, dict]:
    """The statement and parameters of one page: up to `limit` + 1 entries (the extra one says
    whether there is a next page), the id first."""
    params = {"account_id": account_id, "limit": limit + 1}
    if cursor is not None:
        params["before"] = decode_cursor(cursor)
    return (_FIRST_PAGE if cursor is None else _NEXT_PAGE), params


def transactions(conn, account_id: str, limit: int, cursor: str | None) -> tuple[list, str | None]:
    """Up to `limit` entries (rows with the columns the API shows) older than the cursor; the
    next cursor is None on the last page. Keyset on the id (index ix_ledger_account), so deep
    pages cost the same as the first."""
    stmt, params = page_query(account_id, limit, cursor)
    rows = conn.execute(stmt, params).all()
    page = list(rows[:limit])
    next_cursor = encode_cursor(page[-1].id) if len(rows) > limit else None
    return page, next_cursor


def spend_per_day(s: Session, account_id: str, since: dt.datetime) -> dict[str, int]:
    """Charges per UTC day ('YYYY-MM-DD' → micro-USDC) from `since` on, summed by the
    database: an account with many instances has tens of thousands of charges a month."""
    if s.bind.dialect.name == "sqlite":
        day = func.substr(LedgerEntry.at, 1, 10)  # stored as 'YYYY-MM-DD HH:MM:SS…'
    else:
        day = func.to_char(LedgerEntry.at, "YYYY-MM-DD")
    rows = s.execute(
        select(day.label("day"), func.sum(LedgerEntry.amount))
        .where(LedgerEntry.account_id == account_id, LedgerEntry.kind == "charge",
               LedgerEntry.at >= since)
        .group_by(day)
    ).all()
    return {d: int(total) for d, total in rows}
