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
from starlette.routing import Route

# Endpoint functions marked with @fast are promoted by `promote(app)`.
_FAST: set[object] = set()


def fast(fn):
    params = list(inspect.signature(fn).parameters)
    if params != ["request"]:
        raise TypeError(f"{fn.__name__}: a fast endpoint takes exactly (request)")
    _FAST.add(fn)
    return fn


def promote(app: FastAPI) -> None:
    plain = []
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.endpoint in _FAST:
            plain.append(Route(route.path, route.endpoint, methods=list(route.methods),
                               include_in_schema=False))
    app.router.routes[:0] = plain
