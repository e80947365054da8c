"""The Alembic history against the models, on both databases: a fresh database migrated to
head matches the models exactly, and a database created by the first release keeps its
ledger through the upgrade and enforces the new once-per-hour index."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from gpucloud.accounts.models import Account
from gpucloud.clock import SystemClock
from gpucloud.db import Database
from gpucloud.instances import service
from gpucloud.migrations.run import alembic_config, upgrade
from gpucloud.models import Base
from tests.conftest import PG_DB, fresh_pg_database, make_settings
from tests.test_billing_support import check_money, deploy_row, make_account, seed_catalog

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


def test_account_totals_are_summed_from_the_instances_on_upgrade(empty_db):
    """0010 adds the accounts' running totals; accounts that already have instances get the
    sums of their reserves and spend."""
    upgrade(empty_db)
    rt = SimpleNamespace(db=empty_db, clock=SystemClock())
    cat = seed_catalog(rt, price="1.25")
    busy = make_account(rt, "50", name="busy")
    make_account(rt, "5", name="idle")
    deploy_row(rt, busy, cat)
    deploy_row(rt, busy, cat)
    deploy_row(rt, busy, cat, activate=False)
    _to(empty_db, "20261130_0009", command.downgrade)
    with empty_db.engine.connect() as conn:
        assert "reserved" not in {c["name"] for c in inspect(conn).get_columns("accounts")}
    upgrade(empty_db)
    with empty_db.read() as s:
        totals = {a.name: (a.reserved, a.spent) for a in s.query(Account)}
    # two activated: 3 h reserved, 1 h charged, topped back up to 2 h; one only reserved
    assert totals == {"busy": (2_500_000 * 2 + 3_750_000, 1_250_000 * 2), "idle": (0, 0)}
    check_money(rt)


def test_the_instance_lists_come_out_of_the_index_in_order(empty_db):
    """0011: the account's index ends with id, the lists' tie-break, so a list is read in
    order instead of sorted on every request (SQLite built a temporary B-tree for it)."""
    upgrade(empty_db)
    stmt = service.LIST_RAW.params(account_id="acct-1", workload="container")
    sql = str(stmt.compile(dialect=empty_db.engine.dialect,
                           compile_kwargs={"literal_binds": True}))
    with empty_db.engine.connect() as conn:
        if empty_db.is_sqlite:
            plan = " ".join(str(row[-1]) for row in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
            assert "ix_instances_account" in plan
        else:  # an empty table: make the planner show what it does with the index
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            plan = " ".join(row[0] for row in conn.execute(text("EXPLAIN " + sql)))
            assert "ix_instances_account" in plan and "Index Scan Backward" in plan
        assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan
