"""Schema pieces and renderings every domain uses."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import Field, WithJsonSchema

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
