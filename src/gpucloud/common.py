"""Schema pieces and renderings every domain uses."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, WithJsonSchema, field_validator

# Money in requests: exact decimals, at most 6 places, never floats.
MoneyIn = Annotated[Decimal, Field(ge=0, decimal_places=6, max_digits=18),
                    WithJsonSchema({"type": "number", "example": 1.5})]
PositiveMoneyIn = Annotated[Decimal, Field(gt=0, decimal_places=6, max_digits=18),
                            WithJsonSchema({"type": "number", "example": 100})]
# Money in responses: Decimal serialized as a JSON number by gpucloud.jsonresp.
MoneyOut = Annotated[Decimal, WithJsonSchema({"type": "number", "example": 2.96})]


def port_out(p: dict[str, Any]) -> dict[str, Any]:
    """A port in a response: `port` and `external_port` are JSON strings, as the Fluence docs
    type them (`{"port": "22", "external_port": "32345", "protocol": "tcp"}`). Requests accept
    either type; the database keeps integers."""
    out: dict[str, Any] = {"port": str(p["port"])}
    if "external_port" in p:
        out["external_port"] = None if p["external_port"] is None else str(p["external_port"])
    out["protocol"] = p["protocol"]
    return out


def _nul_at(value: Any) -> bool:
    # Free-form objects (a provider's config) are not searched here: the catalog checks them
    # where they are used and names the exact key (catalog.service.nul_path).
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, (list, tuple)):
        return any(_nul_at(v) for v in value)
    return False


class RequestModel(BaseModel):
    """Base of every request body and document: no text anywhere holds a NUL character.

    PostgreSQL cannot store one (the INSERT would fail as a 500) and SQLite would keep a value
    that breaks whatever reads it later (a container's environment, a shell command), so it
    is a 422 at the field on both databases. Nested models check their own fields."""

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if _nul_at(value):
            raise ValueError("Text must not contain NUL characters")
        return value


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("Input should be a number, not a boolean")
    return value


# Strict numbers and flags in bodies: `{"enabled": 0}` or `{"capacity": true}` is a mistake to
# report, not something to guess at.
StrictCount = Annotated[int, Field(strict=True)]
NumberIn = BeforeValidator(_no_bool)


def _date_text(value: Any) -> Any:
    # pydantic reads a bare number as seconds since 1970: `{"expires_at": 0}` is a mistake.
    if not isinstance(value, (str, dt.datetime)):
        raise ValueError("Input should be an ISO 8601 date-time string")
    return value


DateTimeIn = Annotated[dt.datetime, BeforeValidator(_date_text)]
