from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gpucloud.db import Base, BigIntPK, Micro, UTCDateTime, UUIDStr

DEPOSIT, RESERVE, CHARGE, TOPUP, REFUND = "deposit", "reserve", "charge", "topup", "refund"


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
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    instance_id: Mapped[str | None] = mapped_column(UUIDStr, nullable=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(Micro)
    balance_after: Mapped[int] = mapped_column(Micro)
    # Start of the hour a charge pays for; NULL for other kinds (NULLs never collide).
    period_start: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        # The database itself refuses a second charge for the same hour of the same instance.
        UniqueConstraint("instance_id", "period_start", name="uq_charge_once_per_period"),
        Index("ix_ledger_account", "account_id", "id"),
    )
