from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gpucloud.db import Base, Micro, UTCDateTime, UUIDStr, new_id


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(UUIDStr, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    # Changed only together with a ledger entry (billing/ledger.py).
    balance: Mapped[int] = mapped_column(Micro, default=0)
    # Running totals of the account's instances' `reserve` and `spent`, moved in the same
    # statements as those (billing/ledger.py, billing/batch_sql.py): GET /gpu/account reads
    # one row instead of summing every instance the account ever had. The audit re-derives
    # both from the ledger (`account_totals`).
    reserved: Mapped[int] = mapped_column(Micro, default=0, server_default="0")
    spent: Mapped[int] = mapped_column(Micro, default=0, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(UUIDStr, primary_key=True, default=new_id)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    # SHA-256 of the key: keys are 256-bit random tokens, so a fast hash is enough and lets
    # the lookup be an index probe.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_api_keys_account", "account_id"),)


class Meta(Base):
    """Small server-wide values: the admin key hash, the manual clock."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
