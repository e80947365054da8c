"""PostgreSQL reads in one libpq call (gpucloud.pgexec): the same values psycopg's cursor gives,
one prepared statement per set of parameter types, psycopg's error classes, a bounded number
of prepared statements. Against the real PostgreSQL server; the API's reads through it are
covered by every API test on the PostgreSQL backend (tests/test_parity.py compares bytes)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import psycopg
import pytest

from gpucloud import pgexec
from tests.conftest import PG_ADMIN_URL, _backends

# The rows psycopg's own cursor reads, column for column, with NULLs and types that load
# differently (uuid, numeric, timestamptz, jsonb, bool).
_TABLE = """
CREATE TEMP TABLE sample (
    id uuid PRIMARY KEY, n bigint, price numeric, name text, ok boolean,
    at timestamptz, meta jsonb)
"""
_SELECT = ("SELECT id, n, price, name, ok, at, meta FROM sample "
           "WHERE n >= %(low)s AND (name = %(name)s OR %(name)s IS NULL) ORDER BY n")


@pytest.fixture(params=[b for b in _backends() if b == "postgres"])
def conn(request):
    with psycopg.connect(PG_ADMIN_URL.replace("+psycopg", ""), autocommit=True) as c:
        c.execute(_TABLE)
        at = dt.datetime(2026, 12, 1, 12, 30, 15, 123456, tzinfo=dt.UTC)
        for n, name, meta in [(1, "a", {"k": [1, 2]}), (2, "b", None), (10**12, None, {})]:
            c.execute("INSERT INTO sample VALUES (%s, %s, %s, %s, %s, %s, %s)",
                      (uuid.uuid4(), n, decimal.Decimal("0.000001") * n, name, n % 2 == 0,
                       at + dt.timedelta(hours=n % 5), psycopg.types.json.Jsonb(meta)
                       if meta is not None else None))
        yield c


def _prepared(c) -> list[str]:
    return [r[0] for r in c.execute(
        "SELECT statement FROM pg_prepared_statements WHERE name LIKE 'gpucloud_%'")]


def test_placeholders_are_numbered_in_order_of_first_use():
    sql, order = pgexec.numbered("a = %(x)s AND b = %(y)s OR c = %(x)s AND d LIKE 'p%%'")
    assert sql == b"a = $1 AND b = $2 OR c = $1 AND d LIKE 'p%'"
    assert order == ["x", "y"]
    assert pgexec.numbered("SELECT 1") == (b"SELECT 1", [])


def test_rows_are_the_values_psycopgs_cursor_reads(conn):
    stmts = pgexec.Statements(conn)
    for params in ({"low": 0, "name": None}, {"low": 2, "name": "b"}, {"low": 5, "name": None},
                   {"low": 10**12, "name": None}):
        expected = conn.execute(_SELECT, params).fetchall()
        got = stmts.rows(_SELECT, params)
        assert got == expected and expected
        assert [tuple(map(type, r)) for r in got] == [tuple(map(type, r)) for r in expected]
    # psycopg dumps a small int as int2 and a large one as int8: two prepared statements for
    # one text, each used again on its next call.
    assert len(_prepared(conn)) == 2
    assert stmts.rows(_SELECT, {"low": 3, "name": None}) == \
        conn.execute(_SELECT, {"low": 3, "name": None}).fetchall()
    assert len(_prepared(conn)) == 2


def test_errors_are_psycopgs_classes_and_leave_the_connection_usable(conn):
    stmts = pgexec.Statements(conn)
    with pytest.raises(psycopg.errors.DivisionByZero):
        stmts.rows("SELECT 1 / %(zero)s::int", {"zero": 0})
    with pytest.raises(psycopg.errors.UndefinedTable):
        stmts.rows("SELECT * FROM no_such_table WHERE id = %(id)s", {"id": 1})
    assert stmts.rows("SELECT %(v)s::int + 1", {"v": 41}) == [(42,)]


def test_a_connection_ended_by_the_server_raises_an_operational_error(conn):
    stmts = pgexec.Statements(conn)
    assert stmts.rows("SELECT %(v)s::text", {"v": "x"}) == [("x",)]
    with psycopg.connect(PG_ADMIN_URL.replace("+psycopg", ""), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    with pytest.raises(psycopg.OperationalError):
        stmts.rows("SELECT %(v)s::text", {"v": "x"})


def test_prepared_statements_are_bounded_per_connection(conn, monkeypatch):
    monkeypatch.setattr(pgexec, "MAX_PREPARED", 2)
    stmts = pgexec.Statements(conn)
    for i in range(5):
        assert stmts.rows(f"SELECT %(v)s::int + {i}", {"v": 1}) == [(1 + i,)]
        assert len(_prepared(conn)) <= 2
    assert _prepared(conn) == ["SELECT $1::int + 4"]
