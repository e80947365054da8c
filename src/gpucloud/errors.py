"""Errors are types carrying their HTTP status; handlers turn them into the documented shapes.

- 400/403/404: `{"detail": "<string>"}`
- 422: `{"detail": [{type, loc, msg, input, ctx?}]}` in pydantic v2 style.
"""

from __future__ import annotations

from typing import Any

import orjson


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


class UnsupportedMediaType(APIError):
    status_code = 415


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


# --- what a 422 may echo ---------------------------------------------------------------------

INPUT_LIMIT = 200  # characters of a rejected value echoed back
REDACTED = "[redacted]"
_SECRET_KEYS = frozenset({"credentials", "password"})
_INT64 = 2**63


def _is_secret_loc(loc: tuple) -> bool:
    """Registry credentials, and the values of environment variables (tokens, keys)."""
    names = [p for p in loc if isinstance(p, str)]
    if any(n in _SECRET_KEYS for n in names):
        return True
    return "environment" in names and names[-1] == "value"


def _text(value: str) -> str:
    # A lone surrogate ("\ud800") cannot be written as UTF-8: show it escaped instead.
    value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value if len(value) <= INPUT_LIMIT else value[:INPUT_LIMIT] + "…"


def _scrub(value: Any, depth: int = 0) -> Any:
    """`value` with secrets redacted and everything JSON can carry: huge integers and
    non-finite floats become strings, strings are valid UTF-8, depth is bounded."""
    if depth > 8:
        return "…"
    if isinstance(value, dict):
        out = {}
        for key, item in list(value.items())[:50]:
            key = _text(str(key))
            if key in _SECRET_KEYS:
                out[key] = REDACTED
            elif key == "environment" and isinstance(item, list):
                out[key] = [{**_scrub(e, depth + 1), "value": REDACTED}
                            if isinstance(e, dict) and "value" in e else _scrub(e, depth + 1)
                            for e in item[:50]]
            else:
                out[key] = _scrub(item, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_scrub(item, depth + 1) for item in list(value)[:50]]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else _text(str(value))
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, str):
        return _text(value)
    return _text(str(value))


def safe_input(loc: tuple, value: Any) -> Any:
    if _is_secret_loc(loc):
        return REDACTED
    scrubbed = _scrub(value)
    if isinstance(scrubbed, (dict, list)):
        # A whole body as `input` (a missing field) is echoed whole only while it is small.
        text = orjson.dumps(scrubbed).decode()
        if len(text) > INPUT_LIMIT:
            return _text(text)
    return scrubbed


def safe_error(err: dict[str, Any]) -> dict[str, Any]:
    """One 422 entry that can always be written as JSON and never echoes a secret, whatever
    the client sent: the error handler must not fail (a 500) or leak (into the reply or, via a
    failed reply, the log)."""
    loc = tuple(_text(p) if isinstance(p, str) else p for p in err.get("loc", ()))
    out: dict[str, Any] = {"type": err.get("type"), "loc": list(loc),
                           "msg": _text(str(err.get("msg", "")))}
    if "input" in err:
        out["input"] = safe_input(loc, err["input"])
    if "ctx" in err:
        # Exceptions in ctx are not JSON; the documented shape shows them as {}.
        out["ctx"] = {k: {} if isinstance(v, Exception) else _scrub(v)
                      for k, v in err["ctx"].items()}
    return out


MAX_ERRORS = 100  # 422 entries shown; the rest are the same mistakes again


def validation_detail(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of a 422: bounded (a body of 800,000 bad keys must not become a 40 MB
    answer) and safe (`safe_error`)."""
    return {"detail": [safe_error(e) for e in errors[:MAX_ERRORS]]}
