"""The Alembic history against the models, on both databases: a fresh database migrated to
head matches the models exactly, and a database created by the first release keeps its
ledger through the upgrade and enforces the new once-per-hour index."""

from __future__ import annotations

import datetime as dt

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from gpucloud.db import Database
from gpucloud.migrations.run import alembic_config, upgrade
from gpucloud.models import Base
from tests.conftest import PG_DB, fresh_pg_database, make_settings

AT = dt.datetime(2026, 1, 5, 10, 0)


@pytest.fixture
def empty_db(backend, tmp_path):
    if backend["name"] == "sqlite":
        url = f"sqlite:///{tmp_path / 'migrations.db'}"
    else:
        url = fresh_pg_database(f"{PG_DB}_migrations")
    db = Database(make_settings(url, tmp_path))
    yield db
    db.dispose()


def _to(db: Database, revision: str, direction=command.upgrade) -> None:
    cfg = alembic_config(db.url)
    with db.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        direction(cfg, revision)
        conn.commit()


def _entry(conn, kind: str, period_start) -> None:
    conn.execute(text(
        "INSERT INTO ledger_entries (at, account_id, instance_id, kind, amount, balance_after, "
        "period_start) VALUES (:at, 'acct-1', 'inst-1', :kind, 5, 0, :p)"),
        {"at": AT, "kind": kind, "p": period_start})


def test_head_matches_the_models(empty_db):
    upgrade(empty_db)
    with empty_db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)
    assert diff == []


def test_upgrade_from_the_first_release_keeps_the_ledger(empty_db):
    _to(empty_db, "20261127_0001")
    with empty_db.engine.begin() as conn:
        conn.execute(text("INSERT INTO accounts (id, name, balance, created_at) "
                          "VALUES ('acct-1', 'a', 10, :at)"), {"at": AT})
        _entry(conn, "deposit", None)
        _entry(conn, "charge", AT)
    upgrade(empty_db)
    with empty_db.engine.connect() as conn:
        assert conn.execute(text("SELECT kind FROM ledger_entries ORDER BY id")).scalars().all() \
            == ["deposit", "charge"]
        assert inspect(conn).get_foreign_keys("ledger_entries") == []
    with empty_db.engine.begin() as conn:
        _entry(conn, "topup", None)  # many non-charges per instance: not indexed, no conflict
        _entry(conn, "topup", None)
        _entry(conn, "charge", AT + dt.timedelta(hours=1))
    with pytest.raises(IntegrityError), empty_db.engine.begin() as conn:
        _entry(conn, "charge", AT)  # the same hour of the same instance, again
    with empty_db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar_one() == 5


def test_downgrade_restores_the_first_release_schema(empty_db):
    upgrade(empty_db)
    _to(empty_db, "20261127_0001", command.downgrade)
    with empty_db.engine.connect() as conn:
        insp = inspect(conn)
        assert [fk["referred_table"] for fk in insp.get_foreign_keys("ledger_entries")] \
            == ["accounts"]
        assert [u["column_names"] for u in insp.get_unique_constraints("ledger_entries")] \
            == [["instance_id", "period_start"]]
