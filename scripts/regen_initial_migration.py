"""Regenerate the initial Alembic migration from the models.

Only valid while nothing has been released: once a migration has shipped, add new revisions
with `alembic revision --autogenerate` instead of rewriting this one.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine

from gpucloud.migrations.run import HERE, alembic_config

versions = HERE / "versions"
for old in versions.glob("*_initial.py"):
    old.unlink()
with tempfile.TemporaryDirectory() as tmp:
    url = f"sqlite:///{Path(tmp) / 'empty.db'}"
    cfg = alembic_config(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.revision(cfg, message="initial", autogenerate=True,
                         rev_id="20261127_0001", head="base")
        conn.commit()
print("regenerated", list(versions.glob("*_initial.py")))
