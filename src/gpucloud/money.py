"""Money is integer micro-USDC inside the server; Decimal only at the edges.

1 USDC = 1_000_000 micro. Prices have at most 6 decimals, so every amount is exact.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICRO = 1_000_000
_MICRO_D = Decimal(MICRO)


def to_micro(value: Decimal | int | str) -> int:
    """Exact conversion; refuses more than 6 decimals instead of rounding money away."""
    try:
        d = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation as exc:  # pragma: no cover - pydantic validates first
        raise ValueError(f"not a number: {value!r}") from exc
    scaled = d * _MICRO_D
    if scaled != scaled.to_integral_value():
        raise ValueError("at most 6 decimal places")
    return int(scaled)


def from_micro(micro: int) -> Decimal:
    """A Decimal that prints as a plain JSON number: 2.96, 3, 0.000001."""
    d = Decimal(micro) / _MICRO_D
    if d == d.to_integral_value():
        return d.quantize(Decimal(1))
    return d.normalize()
