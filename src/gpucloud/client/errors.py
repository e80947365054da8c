"""Typed errors of the client. Each carries the server's `detail` untouched (the 422 list or the
400/403/404 string) and a one-line `message` fit for a terminal."""

from __future__ import annotations

from typing import Any


class GpuCloudError(Exception):
    """Anything the client could not do: the root of every error it raises."""

    @property
    def message(self) -> str:
        return str(self)


class TransportError(GpuCloudError):
    """The server could not be reached (refused, DNS, timeout) or answered with no JSON."""


class ApiError(GpuCloudError):
    """The server answered with an error status and a JSON `detail`."""

    status_code: int = 0

    def __init__(self, status_code: int, detail: Any, *, method: str = "", path: str = ""):
        self.status_code = status_code
        self.detail = detail
        self.method = method
        self.path = path
        super().__init__(format_detail(detail) or f"HTTP {status_code}")


class BadRequestError(ApiError):
    """400: a business rule said no (`detail` is one human-readable string)."""


class AuthError(ApiError):
    """403: missing, unknown, revoked or expired key."""


class NotFoundError(ApiError):
    """404: unknown id (or one that belongs to another account)."""


class ValidationError(ApiError):
    """422: `detail` is the pydantic-style list of `{type, loc, msg, input, ctx?}`."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        return (
            [e for e in self.detail if isinstance(e, dict)] if isinstance(self.detail, list) else []
        )


class ServerError(ApiError):
    """5xx: a fault on the server's side; retrying later may help."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    422: ValidationError,
}


def error_for(status_code: int, detail: Any, *, method: str = "", path: str = "") -> ApiError:
    cls = _BY_STATUS.get(status_code) or (ServerError if status_code >= 500 else ApiError)
    err = cls(status_code, detail, method=method, path=path)
    err.status_code = status_code
    return err


def format_detail(detail: Any) -> str:
    """One line: `body.name: String should have at most 25 characters; …` for a 422 list, the
    string itself otherwise."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc") or [])
                msg = str(item.get("msg", ""))
                parts.append(f"{loc}: {msg}" if loc else msg)
            else:
                parts.append(str(item))
        return "; ".join(parts)
    if detail is None:
        return ""
    return " ".join(str(detail).split())
