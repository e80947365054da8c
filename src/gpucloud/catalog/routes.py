"""GET /gpu/plans/, /gpu/plans/vms, /gpu/plans/baremetal, /gpu/default-images/.

The hottest read endpoints of the API. Each authenticates from memory when it can and returns
bytes rendered once and cached (catalog/cache.py). Database work runs in the threadpool, never
on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response

from gpucloud.accounts.auth import current_account
from gpucloud.bodies import BodyRoute
from gpucloud.catalog import plans
from gpucloud.catalog.cache import plans_cache
from gpucloud.catalog.schemas import ContainerPlan, DefaultImageOut, VmPlans
from gpucloud.jsonresp import dumps

router = APIRouter(prefix="/gpu", route_class=BodyRoute, tags=["plans"])


def _filter_params() -> list[dict[str, Any]]:
    schema = plans.PlanFilters.model_json_schema()["properties"]
    params = []
    for name, prop in schema.items():
        prop = dict(prop)
        description = prop.pop("description", None)
        # The generated schema wraps optionals in anyOf[…, null]; a query param is just absent.
        inner = next((p for p in prop.get("anyOf", []) if p.get("type") != "null"), prop)
        params.append({"name": name, "in": "query", "required": False,
                       "description": description, "schema": inner})
    return params


# These take only `request`, so their query parameters are declared by hand; security and
# error responses are added to every operation by gpucloud/openapi.py.
_PLAN_DOC = {"parameters": _filter_params()}


def _parse_filters(request: Request) -> plans.PlanFilters | None:
    if not request.query_params:
        return None
    try:
        return plans.PlanFilters.model_validate(dict(request.query_params))
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        for err in errors:
            err["loc"] = ("query", *err["loc"])
        raise RequestValidationError(errors) from None


def _render(rt, build: Callable, filters) -> bytes:
    with rt.db.read() as s:
        return dumps(build(s, filters))


async def _serve(request: Request, build: Callable[[Any, Any], Any], filtered: bool) -> Response:
    rt = request.app.state.rt
    await current_account(request)
    # Keyed on the raw query string: a hit skips parsing, and only queries that validated
    # were ever stored. Unknown parameters are ignored, so they only make more keys.
    scope = request.scope
    query = scope["query_string"] if filtered else b""
    cache_key = scope["path"].rstrip("/") + ("?" + query.decode("latin-1") if query else "")

    async def render() -> bytes:
        filters = _parse_filters(request) if query else None
        return await rt.offload(_render, rt, build, filters)

    body = await plans_cache(rt).get_or_render(cache_key, render)
    return Response(content=body, media_type="application/json")


@router.get("/plans/", response_model=list[ContainerPlan], operation_id="listContainerPlans",
            summary="Container plans available now", openapi_extra=_PLAN_DOC)
async def list_container_plans(request: Request):
    return await _serve(request, plans.container_plans, True)


@router.get("/plans/vms", response_model=VmPlans, operation_id="listVmPlans",
            summary="VM options available now, by GPU model and count", openapi_extra=_PLAN_DOC)
async def list_vm_plans(request: Request):
    return await _serve(request, _vm, True)


@router.get("/plans/baremetal", response_model=VmPlans, operation_id="listBaremetalPlans",
            summary="Bare-metal options available now, by GPU model and count",
            openapi_extra=_PLAN_DOC)
async def list_baremetal_plans(request: Request):
    return await _serve(request, _baremetal, True)


@router.get("/default-images/", response_model=list[DefaultImageOut],
            operation_id="listDefaultImages", summary="Ready-made container images")
async def list_default_images(request: Request):
    return await _serve(request, _images, False)


def _vm(s, filters):
    return plans.machine_plans(s, "vm", filters)


def _baremetal(s, filters):
    return plans.machine_plans(s, "baremetal", filters)


def _images(s, _filters):
    return plans.default_images(s)
