"""Every path answers the same with and without a trailing slash.

The Fluence docs write collection roots with a slash (`/gpu/plans/`, `/gpu/instances/`) and
the rest without, and clients are not consistent about it. A redirect would cost a round trip
and turns a POST into a second request in some clients, so each route gets a twin at the other
spelling that runs the same endpoint (hidden from the OpenAPI document).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound, Route, Router
from starlette.types import Receive, Scope, Send

try:  # FastAPI's native OpenTelemetry (newer releases)
    from fastapi.telemetry import get_telemetry_data
except ImportError:  # an older FastAPI: nothing records a request's telemetry
    def get_telemetry_data() -> None:
        return None


class PrefixRoute(APIRoute):
    """An API route that turns a request away on its path's literal part before anything else.

    The router tries its routes in order until one matches, and every try of an APIRoute
    costs its bookkeeping (FastAPI's scope context, Starlette's route-path helper) and a
    regular expression: ~35 tries, about a fifth of the CPU of `GET /gpu/instances/{id}`,
    measured in-process (docs/api-speed.md). A route's expression is anchored at its literal
    head (`/gpu/instances/` of `/gpu/instances/{instance_id}`), so a path that does not start
    with it, or that differs from a path without parameters, can never match: refusing those
    at once changes no outcome. Anything else (a root path set by a proxy) goes the full way."""

    lean = False  # set by get_route_handler

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        head, brace, _ = self.path_format.partition("{")
        self._head = head
        self._exact = not brace

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """An `async def` endpoint whose only parameter is the Request (it authenticates and
        reads its path itself, and returns a Response) is called directly.

        FastAPI's handler would solve an empty set of dependencies, validate no parameters,
        read no body and pass the returned Response through unchanged, at ~15–25 µs of CPU
        a request: a tenth of instance details (docs/api-speed.md). Nothing it does changes
        such a route's answer, and errors still reach the app's exception handlers through
        the same wrapper. With FastAPI's OpenTelemetry recording (`GPUCLOUD_OPENTELEMETRY`
        and a configured provider) the request goes FastAPI's way, so its spans and request
        data stay complete."""
        full = super().get_route_handler()
        d = self.dependant
        self.lean = (d.request_param_name is not None and inspect.iscoroutinefunction(d.call)
                     and not (d.path_params or d.query_params or d.header_params
                              or d.cookie_params or d.body_params or d.dependencies
                              or d.websocket_param_name or d.http_connection_param_name
                              or d.response_param_name or d.background_tasks_param_name
                              or d.security_scopes_param_name))
        if not self.lean:
            return full
        endpoint = d.call

        async def handler(request: Request) -> Response:
            if get_telemetry_data() is not None:
                return await full(request)
            response = await endpoint(request)
            if not isinstance(response, Response):  # FastAPI would have serialized it
                raise TypeError(f"{self.path}: a request-only endpoint returns a Response")
            return response

        return handler

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and not scope.get("root_path"):
            path = scope["path"]
            if path != self._head if self._exact else not path.startswith(self._head):
                return Match.NONE, {}
        return super().matches(scope)


def _twin(path: str) -> str:
    return path[:-1] if path.endswith("/") else path + "/"


def add_slash_twins(router: APIRouter) -> None:
    """Call after the router's routes are declared and before it is included. Twins are
    appended in declaration order, so a literal path (`/vms/`) is still tried before a
    parameter (`/{instance_id}/`) exactly as its original was."""
    taken = {(r.path, m) for r in router.routes if isinstance(r, APIRoute) for m in r.methods}
    originals = [r for r in router.routes if isinstance(r, APIRoute)]
    own = len(router.dependencies)
    for route in originals:
        twin = _twin(route.path)  # a router's route paths include its prefix
        methods = [m for m in route.methods if (twin, m) not in taken]
        if not methods or not twin:
            continue
        # add_api_route prepends the prefix and the router's dependencies again.
        router.add_api_route(twin[len(router.prefix):], route.endpoint, methods=methods,
                             status_code=route.status_code, response_class=route.response_class,
                             dependencies=route.dependencies[own:], include_in_schema=False,
                             name=f"{route.name}_twin")
        taken.update((twin, m) for m in methods)


def include_flat(app: FastAPI, router: APIRouter) -> bool:
    """Register `router`'s routes on the app itself (public `add_api_route`, same arguments
    as each route was declared with) instead of `app.include_router`. False, and nothing
    done, when the router holds anything but plain API routes (include it normally).

    Why: this FastAPI keeps an included router as one entry that matches lazily, and finding
    a route walks every route of every router before it twice, through several layers of
    bookkeeping per route. Measured in-process on this project's machine, that walk was
    about half the CPU of `GET /gpu/instances/{id}` (38 route checks per request); a flat
    route list costs one regular expression per route skipped. The routes, their order,
    dependencies, OpenAPI entries and responses are the same."""
    routes = list(router.routes)
    if not all(isinstance(r, APIRoute) for r in routes):
        return False
    for r in routes:
        # The router's prefix, tags, dependencies and responses are already part of each
        # route (APIRouter.add_api_route merges them).
        app.router.add_api_route(
            r.path, r.endpoint, response_model=r.response_model, status_code=r.status_code,
            tags=r.tags, dependencies=r.dependencies, summary=r.summary,
            description=r.description, response_description=r.response_description,
            responses=r.responses, deprecated=r.deprecated, methods=r.methods,
            operation_id=r.operation_id, response_model_include=r.response_model_include,
            response_model_exclude=r.response_model_exclude,
            response_model_by_alias=r.response_model_by_alias,
            response_model_exclude_unset=r.response_model_exclude_unset,
            response_model_exclude_defaults=r.response_model_exclude_defaults,
            response_model_exclude_none=r.response_model_exclude_none,
            include_in_schema=r.include_in_schema, response_class=r.response_class,
            name=r.name, callbacks=r.callbacks, openapi_extra=r.openapi_extra,
            generate_unique_id_function=r.generate_unique_id_function,
            route_class_override=type(r))  # BodyRoute: bodies parsed off the loop
    return True


# A parameter's named group inside a route's expression (`(?P<instance_id>[^/]+)`).
_NAMED_GROUP = re.compile(r"\(\?P<\w+>")


class RouteIndex(BaseRoute):
    """The first entry of the app's route list: finds the route a request goes to with one
    regular expression instead of trying the routes one by one.

    The router tries its routes in order and takes the first that matches the path and the
    method. For `GET /gpu/instances/{id}` that was 38 tries (the VM, bare-metal and twin
    routes share the head `/gpu/instances/`), ~30 µs of the event loop's CPU per request,
    measured in-process (docs/api-speed.md). Per method, the index joins the expressions of
    the routes before the first one it cannot read (an included router, a mount) into one
    alternation in the same order; Python's `re` takes the first alternative that matches the
    whole path, which is the route the loop would have taken. That route's own `matches`
    then builds the scope (its path parameters, its converters), so nothing about the route
    changes but how it was found.

    It answers only for FastAPI routes and only when sure; otherwise (no route found, a
    root path set by a proxy, a WebSocket, FastAPI's OpenTelemetry recording this request,
    a starlette route such as the docs page) it declines and the router tries its routes as
    before. Built at the first request and again whenever the number of routes changes."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._size = -1
        self._by_method: dict[str, tuple[re.Pattern, list[BaseRoute]]] = {}

    def _build(self) -> None:
        routes = self._router.routes
        readable: list[Route] = []
        for route in routes:
            if route is self:
                continue
            # A plain Route (APIRoute included) matches on its expression and methods alone;
            # anything else might match first in ways the index cannot see: stop before it.
            if not (isinstance(route, Route) and route.methods is not None
                    and route.path_regex.flags == re.UNICODE
                    and route.path_regex.pattern.startswith("^")
                    and route.path_regex.pattern.endswith("$")):
                break
            readable.append(route)
        by_method: dict[str, tuple[re.Pattern, list[BaseRoute]]] = {}
        for method in {m for r in readable for m in r.methods}:
            chosen = [r for r in readable if method in r.methods]
            # Each expression is anchored (^…$) and names its parameters; inside the join
            # those become plain groups, and the group named after the route's position
            # (the last to close when it matches) says which route it was.
            parts = [f"(?P<r{i}>{_NAMED_GROUP.sub('(?:', r.path_regex.pattern[1:-1])})"
                     for i, r in enumerate(chosen)]
            by_method[method] = (re.compile("^(?:" + "|".join(parts) + ")$"), chosen)
        self._by_method = by_method
        self._size = len(routes)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope.get("root_path") \
                or scope.get("fastapi.telemetry") is not None:
            return Match.NONE, {}
        if len(self._router.routes) != self._size:
            self._build()
        entry = self._by_method.get(scope["method"])
        if entry is None:
            return Match.NONE, {}
        found = entry[0].match(scope["path"])
        if found is None:
            return Match.NONE, {}
        route = entry[1][int(found.lastgroup[1:])]
        if not isinstance(route, APIRoute):
            return Match.NONE, {}
        match, child_scope = route.matches(scope)
        if match != Match.FULL or child_scope.get("route") is not route:
            return Match.NONE, {}
        return Match.FULL, child_scope

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope["route"].handle(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any):
        raise NoMatchFound(name, path_params)  # the routes themselves answer


def index_routes(app: FastAPI) -> None:
    """Put a `RouteIndex` first in the app's routes (call once, after creating the app)."""
    app.router.routes.insert(0, RouteIndex(app.router))
