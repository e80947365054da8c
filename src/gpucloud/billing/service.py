"""Reading the ledger: an account's transactions, newest first, keyset-paginated."""

from __future__ import annotations

import base64
import binascii

from sqlalchemy import select
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
