"""PostgreSQL reads in one blocking libpq call each, for `db.Reader`.

psycopg's `cursor.execute` runs a query as a series of non-blocking steps (send, flush, wait
until readable, consume, get the result), and each wait releases the interpreter lock. In the
server the event loop and other threads want the lock all the time, so every release is a
hand-over and a wait to get it back: a read that costs ~35 µs of CPU alone cost several times
that under 32 concurrent requests. `PQexecPrepared` does the whole round trip in C with the
lock released once (psycopg's `pq.PGconn.exec_prepared`), and psycopg's own `Transformer`
dumps the parameters and loads the rows with the connection's adapters, so the values are the
ones the cursor gives. Figures in docs/api-speed.md.

The statements come from SQLAlchemy compiled for psycopg (`%(name)s` placeholders); each is
prepared once per connection and per set of parameter types (psycopg picks a type by value:
a small int is an int2), as psycopg's own prepared statements are.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")
_TEXT = pq.Format.TEXT
# Bound per connection: a caller building statements per call must not fill the server.
MAX_PREPARED = 512


def numbered(sql: str) -> tuple[bytes, list[str]]:
    """`%(name)s` placeholders as `$1, $2, …` (a name used twice is one parameter) and the
    names in that order; `%%` back to `%`."""
    order: list[str] = []

    def number(m: re.Match) -> str:
        name = m.group(1)
        if name is None:
            return "%"
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return _PLACEHOLDER.sub(number, sql).encode(), order


def bind(tx: Transformer, cache: dict, sql: str, params: dict) -> tuple[bytes, list, tuple]:
    """`sql` numbered (once per text, kept in `cache`) and `params` dumped by `tx`: the query,
    the values, and the key of its prepared statement (the text and the parameter types)."""
    found = cache.get(sql)
    if found is None:
        query, order = numbered(sql)
        found = cache[sql] = (query, order, [PyFormat.AUTO] * len(order))
    query, order, formats = found
    values = tx.dump_sequence([params[name] for name in order], formats)
    return query, values, (sql, tx.types)


class Statements:
    """One autocommit psycopg connection's prepared reads."""

    def __init__(self, conn: psycopg.Connection):
        self.pgconn = conn.pgconn
        self.tx = Transformer(conn)
        self._numbered: dict[str, tuple[bytes, list[str], list[PyFormat]]] = {}
        self._prepared: dict[tuple, bytes] = {}

    def rows(self, sql: str, params: dict) -> list[tuple]:
        tx = self.tx
        query, values, key = bind(tx, self._numbered, sql, params)
        name = self._prepared.get(key)
        if name is None:
            name = self._prepare(key, query)
        res = self.pgconn.exec_prepared(name, values, tx.formats, _TEXT)
        if res.status != pq.ExecStatus.TUPLES_OK:
            raise error_of(res)
        tx.set_pgresult(res)
        return tx.load_rows(0, res.ntuples, tuple)

    def _prepare(self, key: tuple, query: bytes) -> bytes:
        if len(self._prepared) >= MAX_PREPARED:
            res = self.pgconn.exec_(b"DEALLOCATE ALL")
            if res.status != pq.ExecStatus.COMMAND_OK:
                raise error_of(res)
            self._prepared.clear()
            self._numbered.clear()
        name = f"gpucloud_{len(self._prepared)}".encode()
        res = self.pgconn.prepare(name, query, self.tx.types)
        if res.status != pq.ExecStatus.COMMAND_OK:
            raise error_of(res)
        self._prepared[key] = name
        return name


def error_of(res: pq.abc.PGresult) -> psycopg.Error:
    """The server's message as psycopg's error class for its SQLSTATE (a connection that
    broke has none: an OperationalError, which the Reader answers by reconnecting)."""
    message = (res.error_message or b"").decode("utf-8", "replace").strip()
    state = res.error_field(pq.DiagnosticField.SQLSTATE)
    if state:
        try:
            return psycopg.errors.lookup(state.decode())(message)
        except KeyError:
            pass
    return psycopg.OperationalError(message or "the connection to PostgreSQL broke")
