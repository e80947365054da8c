from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from gpucloud.models import Base

target_metadata = Base.metadata
config = context.config


def run() -> None:
    conn = config.attributes.get("connection")
    if conn is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url"))
        with engine.connect() as conn:
            _migrate(conn)
            conn.commit()
    else:
        _migrate(conn)


def _migrate(conn) -> None:
    # render_as_batch: SQLite can only ALTER TABLE by copying, Alembic's batch mode does that.
    context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


run()
