"""What both clients do around a request: headers, exact-decimal JSON, errors."""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

import httpx
import simplejson

from gpucloud.client.endpoints import Call
from gpucloud.client.errors import GpuCloudError, TransportError, error_for

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "gpucloud-client"


class MissingCredentials(GpuCloudError):
    """The call needs a key the client was not given."""


def _default(obj: Any) -> Any:
    if isinstance(obj, dt.datetime):
        if obj.tzinfo is not None:
            obj = obj.astimezone(dt.UTC).replace(tzinfo=None)
        return obj.isoformat() + "Z"
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def dumps(value: Any, **kwargs: Any) -> str:
    """JSON with Decimal written digit for digit (never through a float)."""
    return simplejson.dumps(value, use_decimal=True, default=_default, **kwargs)


def loads(raw: bytes | str) -> Any:
    return simplejson.loads(raw, use_decimal=True)


def headers_for(call: Call[Any], api_key: str | None, admin_key: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    if call.admin:
        if not admin_key:
            raise MissingCredentials(
                "no admin key: pass --admin-key or set GPUCLOUD_ADMIN_KEY")
        headers["X-ADMIN-KEY"] = admin_key
    else:
        if not api_key:
            raise MissingCredentials(
                "no API key: pass --api-key, set GPUCLOUD_API_KEY or run `gpucloud login`")
        headers["X-API-KEY"] = api_key
    if call.json is not None:
        headers["Content-Type"] = "application/json"
    return headers


def request_kwargs(call: Call[Any], api_key: str | None, admin_key: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"headers": headers_for(call, api_key, admin_key)}
    if call.params:
        kwargs["params"] = call.params
    if call.json is not None:
        kwargs["content"] = dumps(call.json).encode()
    return kwargs


def finish(call: Call[T], response: httpx.Response) -> T:
    """Parse a response: the model on success, a typed error carrying `detail` otherwise."""
    payload: Any = None
    if response.content:
        try:
            payload = loads(response.content)
        except ValueError as exc:
            if response.is_success:
                raise TransportError(
                    f"{call.method} {call.path}: the server did not answer with JSON") from exc
            payload = {"detail": response.text.strip() or response.reason_phrase}
    if response.is_success:
        return call.parse(payload)
    detail = payload.get("detail", payload) if isinstance(payload, dict) else payload
    raise error_for(response.status_code, detail, method=call.method, path=call.path)


def transport_error(url: str, exc: httpx.HTTPError) -> TransportError:
    reason = str(exc) or type(exc).__name__
    return TransportError(f"cannot reach {url}: {reason}")
