from __future__ import annotations

import datetime as dt

from sqlalchemy import Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from gpucloud.db import Base, BigIntPK, Micro, UTCDateTime, UUIDStr

DEPOSIT, RESERVE, CHARGE, TOPUP, REFUND = "deposit", "reserve", "charge", "topup", "refund"
_CHARGES = text("period_start IS NOT NULL")


class LedgerEntry(Base):
    """Append-only. Every movement of money is one row, written in the same transaction as the
    state change it pays for.

    deposit: → balance; reserve/topup: balance → instance reserve; charge: reserve → spent;
    refund: reserve → balance. `amount` is always positive; `balance_after` is the account's
    balance right after this entry.
    """

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # Not a foreign key: a per-row lookup on the hottest insert path (see migration 0002).
    # Accounts are never deleted; `billing.audit` reports an entry whose account is missing.
    account_id: Mapped[str] = mapped_column(UUIDStr)
    instance_id: Mapped[str | None] = mapped_column(UUIDStr, nullable=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(Micro)
    balance_after: Mapped[int] = mapped_column(Micro)
    # Start of the hour a charge pays for; NULL for other kinds (NULLs never collide).
    period_start: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        # The database itself refuses a second charge for the same hour of the same instance.
        # Only charges have a period_start, so only they are indexed.
        Index("uq_charge_once_per_period", "instance_id", "period_start", unique=True,
              postgresql_where=_CHARGES, sqlite_where=_CHARGES),
        Index("ix_ledger_account", "account_id", "id"),
    )
