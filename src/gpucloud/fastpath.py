"""Serve the hottest read endpoints as plain Starlette routes.

Measured on this 2-core machine: FastAPI's per-request machinery (dependency solving, parameter
parsing, response handling) costs more than our whole cached plans response; an `async def`
FastAPI route with only a `Request` parameter reaches ~0.4× of a bare Starlette route returning
the same bytes. Endpoints listed here take only `request` and return a `Response`, so the very
same function can be mounted as a Starlette `Route` ahead of the FastAPI one. The FastAPI
declaration stays for the OpenAPI document (and would behave identically if reached); errors
raised by the function go through the app's exception handlers either way.
"""

from __future__ import annotations

import inspect

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.routing import Route

# Endpoint functions marked with @fast are promoted by `promote(app)`.
_FAST: set[object] = set()


def fast(fn):
    params = list(inspect.signature(fn).parameters)
    if params != ["request"]:
        raise TypeError(f"{fn.__name__}: a fast endpoint takes exactly (request)")
    _FAST.add(fn)
    return fn


def _api_routes(routes, prefix: str = ""):
    """(full path, APIRoute) pairs. Recent FastAPI keeps each included router as one node
    (`_IncludedRouter`: `original_router` + `include_context.prefix`) instead of copying its
    routes into the app, so walk into those."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from _api_routes(inner.routes, prefix + getattr(context, "prefix", ""))
        elif isinstance(route, APIRoute):
            yield prefix + route.path, route


def promote(app: FastAPI) -> None:
    plain = []
    table: dict[tuple[str, str], object] = {}
    for path, route in _api_routes(app.router.routes):
        if route.endpoint in _FAST:
            plain.append(Route(path, route.endpoint, methods=list(route.methods),
                               include_in_schema=False))
            for method in route.methods:
                table[(method, path)] = route.endpoint
    app.router.routes[:0] = plain
    # Even as plain routes they still pass the whole middleware stack (error middleware,
    # exception middleware, exit stack, router scan): measured ~60 µs of a ~90 µs request.
    # Dispatch them in front of that stack; everything else takes the normal path.
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: _FastDispatch(app, build(), table)  # type: ignore


class _FastDispatch:
    """Outermost ASGI layer: exact (method, path) hits run their endpoint directly; its errors
    go through the app's own exception handlers, so responses are identical either way."""

    def __init__(self, app: FastAPI, inner, table: dict[tuple[str, str], object]):
        self.app, self.inner, self.table = app, inner, table

    async def __call__(self, scope, receive, send) -> None:
        endpoint = self.table.get((scope.get("method"), scope.get("path"))) \
            if scope["type"] == "http" else None
        if endpoint is None:
            await self.inner(scope, receive, send)
            return
        scope["app"] = self.app
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)  # type: ignore[operator]
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _handler(self, exc: Exception):
        handlers = self.app.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]
        return None
