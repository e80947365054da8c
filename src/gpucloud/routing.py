"""Every path answers the same with and without a trailing slash.

The Fluence docs write collection roots with a slash (`/gpu/plans/`, `/gpu/instances/`) and
the rest without, and clients are not consistent about it. A redirect would cost a round trip
and turns a POST into a second request in some clients, so each route gets a twin at the other
spelling that runs the same endpoint (hidden from the OpenAPI document).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.routing import APIRoute


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
