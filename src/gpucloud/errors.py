"""Errors are types carrying their HTTP status; handlers turn them into the documented shapes.

- 400/403/404: `{"detail": "<string>"}`
- 422: `{"detail": [{type, loc, msg, input, ctx?}]}` in pydantic v2 style.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    status_code = 400

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class BadRequest(APIError):
    status_code = 400


class Forbidden(APIError):
    status_code = 403


class NotFound(APIError):
    status_code = 404


class Conflict(APIError):
    status_code = 409


class FieldError(Exception):
    """A 422 found by a service (e.g. a provider config the driver rejects)."""

    status_code = 422

    def __init__(
        self, loc: list[str | int], msg: str, input: Any = None, type: str = "value_error"
    ):
        super().__init__(msg)
        self.errors = [
            {
                "type": type,
                "loc": loc,
                "msg": f"Value error, {msg}" if type == "value_error" else msg,
                "input": input,
                "ctx": {"error": {}},
            }
        ]


INSUFFICIENT_BALANCE = "Insufficient balance to deploy instance"
PLAN_UNAVAILABLE = "Plan no longer available"
INSTANCE_NOT_FOUND = "Instance not found"
