"""JSON request bodies: the content type, bounds on shape, and parsing off the event loop.

FastAPI parses a body with `json.loads` and validates it on the event loop, so one large body
stalls every other client for as long as that takes (issue 14: 5 s for 13 MB of keys). Every
API router uses `BodyRoute`, which does that work itself before FastAPI's handler runs:

- A body in anything but JSON (`application/json` or `…+json`) is a 415; so is a body sent
  without a Content-Type (a browser form posted cross-site would otherwise be read as JSON).
- Bodies of at least `json_offload_bytes` are parsed, checked and validated in a worker
  thread, one at a time (`_PARSERS`), and a 422 is rendered there too; smaller ones stay on
  the loop, where they cost less than the hop to a thread.
- More than `max_json_values` values is a 422 at `["body"]` before the body is parsed (a
  count of its commas and brackets), nesting deeper than `max_json_depth` one before it is
  validated. The value bound is what keeps a body's cost small: the interpreter lock is held
  for the whole of a `json.loads` or a validation, in whatever thread, so a thread alone
  would not keep other requests moving while 1 MiB of tiny values is parsed.

FastAPI's handler then finds the validated model already in place (`Request._json`, Starlette's
own cache of the parsed body) and validates it again in O(1): a model instance passes through
pydantic untouched. The body size itself is bounded earlier, by web/guard.py.
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, params
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from gpucloud.errors import BadRequest, UnsupportedMediaType, validation_detail
from gpucloud.jsonresp import dumps
from gpucloud.routing import PrefixRoute
from gpucloud.threads import run_aside

# Threads parsing at once per process: parsing holds the interpreter lock, so a second one would
# only take turns with the first, and each turn is one the event loop waits for.
_PARSERS = 1


def is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json"))


def _error(type_: str, loc: list, msg: str, ctx: dict | None = None) -> list[dict[str, Any]]:
    err: dict[str, Any] = {"type": type_, "loc": loc, "msg": msg, "input": {}}
    if ctx is not None:
        err["ctx"] = ctx
    return [err]


def _too_deep(max_depth: int) -> list[dict[str, Any]]:
    return _error("json_too_deep", ["body"],
                  f"JSON nests deeper than {max_depth} arrays or objects", {"max_depth": max_depth})


def too_many_values(raw: bytes, max_values: int) -> list[dict[str, Any]] | None:
    """The 422 entry if `raw` may hold more than `max_values` values, else None.

    Counted before parsing, at memory speed: a JSON text holds at most one value more than its
    commas and opening brackets. Parsing is the costly part (json.loads holds the interpreter
    lock for the whole call, ~140 ms for 70,000 keys on a busy 2-core machine, however many
    threads run it), so this bound is what keeps one body's stall to a few milliseconds.
    Commas inside strings count too: a body needs tens of thousands of them to be refused."""
    bound = raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1
    if bound <= max_values:
        return None
    return _error("json_too_many_values", ["body"], f"JSON holds more than {max_values} values",
                  {"max_values": max_values})


def too_deep(value: Any, max_depth: int) -> list[dict[str, Any]] | None:
    """The 422 entry if `value` nests more than `max_depth` arrays/objects, else None.
    Iterative (no recursion to exhaust) and over at most `max_values` values."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth + 1 > max_depth:
            return _too_deep(max_depth)
        stack.extend((child, depth + 1) for child in children)
    return None


class _Verdict:
    __slots__ = ("value", "refusal")

    def __init__(self, value: Any = None, refusal: bytes | None = None):
        self.value, self.refusal = value, refusal


def judge(route: APIRoute, raw: bytes, max_depth: int, max_values: int) -> _Verdict:
    """Parse, bound and validate `raw` as `route`'s body: the validated value, or the
    rendered 422. Blocking; safe in a worker thread."""
    errors = too_many_values(raw, max_values)
    if errors is not None:
        return _Verdict(refusal=dumps(validation_detail(errors)))
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        errors = _error("json_invalid", ["body", exc.pos], "JSON decode error",
                        {"error": exc.msg})
    except RecursionError:
        errors = _too_deep(max_depth)
    except ValueError as exc:  # not UTF-8, or an integer of more than 4,300 digits
        errors = _error("json_invalid", ["body"], "JSON decode error",
                        {"error": type(exc).__name__})
    else:
        errors = too_deep(parsed, max_depth)
        if errors is None:
            value, errors = route.body_field.validate(parsed, {}, loc=("body",))
            if not errors:
                return _Verdict(value=value)
    return _Verdict(refusal=dumps(validation_detail(errors)))


class BodyRoute(PrefixRoute):
    """The route class of every API router (see the module docstring); its paths are
    matched by `PrefixRoute`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not self._plain_json_body():
            return handler

        async def app(request: Request) -> Response:
            content_type = request.headers.get("content-type")
            try:
                raw = await request.body()
            except ClientDisconnect:
                # Nobody is left to answer; a 400 rather than an unhandled error in the log.
                raise BadRequest("The connection closed before the whole body arrived") from None
            if (raw or content_type) and not is_json(content_type):
                raise UnsupportedMediaType("Send the request body as application/json")
            if raw:
                verdict = await self._judge(request, raw)
                if verdict.refusal is not None:
                    return Response(verdict.refusal, status_code=422,
                                    media_type="application/json")
                # What Request.json() returns from now on: FastAPI takes it as the body.
                request._json = verdict.value
            return await handler(request)

        return app

    def _plain_json_body(self) -> bool:
        """One JSON body model (not a form, not several embedded parameters): the body is
        validated against `body_field` as a whole, which is what `judge` repeats."""
        field = self.body_field
        return (field is not None and len(self.dependant.body_params) == 1
                and not self._embed_body_fields
                and isinstance(field.field_info, params.Body)
                and not isinstance(field.field_info, params.Form))

    async def _judge(self, request: Request, raw: bytes) -> _Verdict:
        state = request.app.state
        settings = state.rt.settings
        args = (self, raw, settings.max_json_depth, settings.max_json_values)
        if len(raw) < settings.json_offload_bytes:
            return judge(*args)
        return await run_aside(state, "body_parsers", _PARSERS, judge, *args)
