"""JSON responses that carry Decimal money as JSON numbers, exactly.

FastAPI's own encoder turns Decimal into float. Here a Decimal is written as its own digits,
embedded as a pre-serialized fragment (`orjson.Fragment`), so 0.37 is sent as `0.37` and never
passes through a binary float. orjson is also ~4x faster than the alternatives, which matters
on the hottest reads.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import Response


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            raise TypeError("money is always finite")
        return orjson.Fragment(format(obj, "f"))  # plain digits, never an exponent
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="python")
    if isinstance(obj, uuid.UUID):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


_UTC = dt.timezone.utc


def isoformat_z(value: dt.datetime) -> str:
    """ISO 8601 in UTC with `Z`; microseconds when the value has them (as the Fluence docs'
    examples show: `2026-02-07T14:42:29.472381Z`), whole seconds otherwise."""
    tz = value.tzinfo
    if tz is not None and tz is not _UTC:
        value = value.astimezone(_UTC)
    text = value.isoformat(timespec="microseconds" if value.microsecond else "seconds")
    # The database hands back UTC (the common case): "+00:00" becomes "Z". Cutting the text
    # and not `replace(tzinfo=None)`: that call alone cost ~3 µs.
    return text + "Z" if tz is None else text[:-6] + "Z"


_STAMPS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def stamped(entries: list[tuple[dt.datetime, str]]) -> list[str]:
    """`f"{isoformat_z(at)} {text}"` for each entry: the log and event lines of the feeds.
    orjson writes every timestamp of the list in one C call, as `isoformat_z` would for UTC
    and naive values; formatting each in Python was most of the cost of making 20 lines
    (~80 µs → ~12 µs). A value in another zone keeps its offset there, so it (never one the
    database gives) is written by `isoformat_z`."""
    stamps = orjson.loads(orjson.dumps([at for at, _ in entries], option=_STAMPS))
    return [f"{stamp} {text}" if stamp[-1] == "Z" else f"{isoformat_z(at)} {text}"
            for stamp, (at, text) in zip(stamps, entries, strict=True)]


# Datetimes are written by orjson itself, in C, as `isoformat_z` would: UTC as "Z",
# microseconds only when the value has them, naive values taken as UTC. Formatting them in
# Python was most of the cost of an instance list after the query. The database hands every
# timestamp back in UTC (db.UTCDateTime); a value in another zone would keep its offset here,
# so code holding one formats it with `isoformat_z` first.
_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, default=_default, option=_OPTIONS)


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        return dumps(content)


class RenderedRows:
    """JSON of rows rendered once, keyed by the row as the database returned it.

    The key is every column the rendering reads, exactly as stored, so a hit is the same
    bytes a fresh rendering would give: nothing to invalidate, and correct whichever process
    (or another server) changed the row. What it saves is the per-row Python of a list —
    converting columns, building a dict, writing JSON — which was nearly all of the cost of
    listing 100 instances. Bounded: past `size` rows it starts over."""

    def __init__(self, size: int = 50_000):
        self.size = size
        self._bytes: dict[Any, bytes] = {}

    def join(self, raw_rows, render) -> bytes:
        """A JSON array of the rows; `render(raw_row) -> bytes` for rows not seen before."""
        cache = self._bytes
        parts = []
        for raw in raw_rows:
            body = cache.get(raw)
            if body is None:
                if len(cache) >= self.size:
                    cache.clear()
                body = cache[raw] = render(raw)
            parts.append(body)
        return b"[" + b",".join(parts) + b"]"

    def one(self, raw, render) -> bytes:
        """One row's JSON; `render(raw) -> bytes` when it was not seen before."""
        body = self._bytes.get(raw)
        if body is None:
            if len(self._bytes) >= self.size:
                self._bytes.clear()
            body = self._bytes[raw] = render(raw)
        return body


__all__ = ["JSON", "RenderedRows", "dumps", "isoformat_z", "Decimal"]
