"""Reading the ledger: an account's transactions, newest first, keyset-paginated."""

from __future__ import annotations

import base64
import binascii
import datetime as dt

from sqlalchemy import func, select
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
        if value < 1:
            raise ValueError(raw)
        return value
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise FieldError(["query", "cursor"], "Invalid cursor", cursor) from None


def transactions(s: Session, account_id: str, limit: int,
                 cursor: str | None) -> tuple[list[LedgerEntry], str | None]:
    """Up to `limit` entries older than the cursor; the next cursor is None on the last page.
    Keyset on the id (index ix_ledger_account), so deep pages cost the same as the first."""
    query = select(LedgerEntry).where(LedgerEntry.account_id == account_id)
    if cursor is not None:
        query = query.where(LedgerEntry.id < decode_cursor(cursor))
    rows = s.scalars(query.order_by(LedgerEntry.id.desc()).limit(limit + 1)).all()
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
