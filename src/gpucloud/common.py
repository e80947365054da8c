"""Schema pieces every domain uses."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import Field, WithJsonSchema

# Money in requests: exact decimals, at most 6 places, never floats.
MoneyIn = Annotated[Decimal, Field(ge=0, decimal_places=6, max_digits=18),
                    WithJsonSchema({"type": "number", "example": 1.5})]
PositiveMoneyIn = Annotated[Decimal, Field(gt=0, decimal_places=6, max_digits=18),
                            WithJsonSchema({"type": "number", "example": 100})]
# Money in responses: Decimal serialized as a JSON number by gpucloud.jsonresp.
MoneyOut = Annotated[Decimal, WithJsonSchema({"type": "number", "example": 2.96})]
