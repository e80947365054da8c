"""The request being served, for log lines and the access log.

A leaf module (imports nothing of gpucloud): auth notes the account here without knowing about
the middleware. The middleware sets one `RequestInfo` per request; it is a mutable object so a
note made in a copied context (the threadpool) is still seen by the access log.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass
class RequestInfo:
    id: str
    account_id: str | None = None
    # Who the request's API key names, once checked (by the limits middleware, before
    # routing), so the route does not check the same key again.
    caller: Any = None


current: ContextVar[RequestInfo | None] = ContextVar("gpucloud_request", default=None)


def request_id() -> str | None:
    info = current.get()
    return info.id if info is not None else None


def note_account(account_id: str) -> None:
    info = current.get()
    if info is not None:
        info.account_id = account_id


def note_caller(caller: Any) -> None:
    info = current.get()
    if info is not None:
        info.caller = caller


def checked_caller() -> Any:
    """The caller noted earlier in this request, or None."""
    info = current.get()
    return info.caller if info is not None else None
