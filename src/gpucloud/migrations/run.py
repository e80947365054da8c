"""Run Alembic migrations from inside the server (at start) without an alembic.ini on disk."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

HERE = Path(__file__).parent


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(db) -> None:
    cfg = alembic_config(db.url)
    with db.engine.connect() as conn:
        if not db.is_sqlite:
            # Two processes starting at once on one PostgreSQL must not both migrate.
            conn.execute(text("SELECT pg_advisory_lock(7345001)"))
            conn.commit()
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
        finally:
            if not db.is_sqlite:
                conn.execute(text("SELECT pg_advisory_unlock(7345001)"))
                conn.commit()
