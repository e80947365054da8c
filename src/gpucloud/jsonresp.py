"""JSON responses that carry Decimal money as JSON numbers, exactly.

FastAPI's own encoder turns Decimal into float; simplejson writes the Decimal's digits as they
are, so 0.37 is sent as `0.37`, never via a binary float.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import simplejson
from pydantic import BaseModel
from starlette.responses import Response


def _default(obj: Any) -> Any:
    if isinstance(obj, dt.datetime):
        return isoformat_z(obj)
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="python")
    if isinstance(obj, uuid.UUID):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def isoformat_z(value: dt.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value.isoformat(timespec="seconds") + "Z"


def dumps(content: Any) -> bytes:
    return simplejson.dumps(
        content, use_decimal=True, default=_default, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        return dumps(content)


__all__ = ["JSON", "dumps", "isoformat_z", "Decimal"]
