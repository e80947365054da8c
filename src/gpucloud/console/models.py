"""The console's one table: signed-in browser sessions.

The cookie holds a random token; the row is keyed by its SHA-256, so a copy of the table lets
nobody sign in. The row names the API key the customer signed in with (its id, never the key):
revoking or expiring that key ends the session at the next page load.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from gpucloud.db import Base, UTCDateTime, UUIDStr


class ConsoleSession(Base):
    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256(cookie token)
    # A customer session names an account and the key it signed in with; an operator session
    # has neither and `admin` set.
    account_id: Mapped[str | None] = mapped_column(UUIDStr, nullable=True)
    api_key_id: Mapped[str | None] = mapped_column(UUIDStr, nullable=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    # Every form carries this token; a POST without the session's token is refused.
    csrf: Mapped[str] = mapped_column(String(64))
    # All three on the server clock (console/sessions.py says why). `expires_at` is the
    # absolute end (sign-in + console_session_max_seconds); the idle end is computed from
    # `last_seen_at` with the current setting, so changing the setting applies at once.
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_console_sessions_expires", "expires_at"),
                      Index("ix_console_sessions_last_seen", "last_seen_at"))
