"""/gpu/instances — container instances (SPEC §3). Thin: auth, one service call, a JSON body.

GET /gpu/instances/{instance_id} is the hottest read: auth from memory on the event loop, one
indexed SELECT through `rt.read` (sent from the loop: to PostgreSQL, or to a read process of
ours on SQLite).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from gpucloud import idempotency, params
from gpucloud.accounts.auth import Caller, current_account
from gpucloud.bodies import BodyRoute
from gpucloud.errors import INSTANCE_NOT_FOUND
from gpucloud.instances import feed, service, transitions, views
from gpucloud.instances.schemas import (
    ContainerDeploy,
    ContainerDetails,
    ContainerItem,
    ContainerUpdate,
    Created,
)
from gpucloud.jsonresp import JSON

router = APIRouter(prefix="/gpu/instances", route_class=BodyRoute, tags=["instances: containers"])

CONTAINER = ("container",)
PATH_ID = {"parameters": [{"name": "instance_id", "in": "path", "required": True,
                           "schema": {"type": "string", "format": "uuid"}}]}
NOT_FOUND_DOC = {404: {
    "description": "Unknown instance (or another account's)",
    "content": {"application/json": {"example": {"detail": INSTANCE_NOT_FOUND}}}}}


# --- shared with vm_routes -------------------------------------------------------------------

async def details_body(rt, account_id: str, instance_id: str, workload: str) -> bytes:
    return await service.read_details(
        rt, account_id, instance_id, workload,
        lambda raw: views.details_body(rt.db.reader, service.DETAILS_RAW, raw))


async def list_body(rt, account_id: str, workload: str) -> bytes:
    return await rt.read(service.LIST_RAW, {"account_id": account_id, "workload": workload},
                         keys=True,
                         then=lambda keys: views.list_body(rt.db.reader, service.LIST_RAW, keys))


def _now(rt):
    return rt.clock.now()


# --- routes ----------------------------------------------------------------------------------

@router.post("/", status_code=201, response_model=Created, operation_id="deployContainer",
             summary="Deploy a container")
async def deploy(body: ContainerDeploy, request: Request,
                 caller: Caller = Depends(current_account),
                 key: str | None = Depends(idempotency.key_header)):
    rt = request.app.state.rt

    def work(s) -> tuple[int, dict]:
        inst = service.deploy_container(s, rt, caller.account_id, body, _now(rt))
        return 201, {"instance_id": inst.id}

    # Plans-cache invalidation and the worker wake-up are after-commit effects of the deploy.
    return await rt.offload_write(idempotency.run, rt, caller.account_id, key,
                                  idempotency.fingerprint("deployContainer", body), work)


@router.get("/", response_model=list[ContainerItem], operation_id="listContainers",
            summary="List containers, newest first")
async def list_containers(request: Request):
    rt = request.app.state.rt
    caller = await current_account(request)
    return JSON(await list_body(rt, caller.account_id, "container"))


@router.get("/{instance_id}", response_model=ContainerDetails, operation_id="getContainer",
            summary="Container details",
            openapi_extra=PATH_ID, responses=NOT_FOUND_DOC)
async def get_container(request: Request):
    rt = request.app.state.rt
    caller = await current_account(request)
    return JSON(await details_body(rt, caller.account_id, request.path_params["instance_id"],
                                   "container"))


@router.put("/{instance_id}", status_code=204, operation_id="updateContainer",
            summary="Replace a container's configuration", responses=NOT_FOUND_DOC)
async def update_container(instance_id: str, body: ContainerUpdate, request: Request,
                           caller: Caller = Depends(current_account)):
    rt = request.app.state.rt
    await rt.offload_write(_update, rt, caller.account_id, instance_id, body)
    return Response(status_code=204)


def _update(rt, account_id: str, instance_id: str, body: ContainerUpdate) -> None:
    with rt.db.write() as s:
        inst = service.get_owned(s, account_id, instance_id, CONTAINER, for_update=True)
        service.request_update(s, rt, inst, body, _now(rt))


@router.delete("/{instance_id}", status_code=204, operation_id="terminateContainer",
               summary="Terminate a container", responses=NOT_FOUND_DOC)
async def terminate_container(instance_id: str, request: Request,
                              caller: Caller = Depends(current_account)):
    rt = request.app.state.rt
    await rt.offload_write(terminate_owned, rt, caller.account_id, instance_id, CONTAINER)
    return Response(status_code=204)


def terminate_owned(rt, account_id: str, instance_id: str, workloads: tuple[str, ...]) -> None:
    """Blocking (`rt.offload_write`); shared with vm_routes."""
    with rt.db.write() as s:
        inst = service.get_owned(s, account_id, instance_id, workloads, for_update=True)
        transitions.terminate(s, inst, _now(rt))


# The polled feeds (logs, events) are request-only routes (gpucloud/params.py): the key, then
# `last`, then the instance, the order FastAPI checked them in when they declared
# `instance_id: str, last: int | None = Query(None, ge=1)` and a Depends(current_account).
LAST = params.param("last", int | None, None, "Keep only the last N lines", ge=1)
FEED_PARAMS = params.openapi({"name": "instance_id", "in": "path", "required": True,
                              "schema": {"type": "string", "title": "Instance Id"}}, LAST.doc)


@router.get("/{instance_id}/logs", response_model=list[str], operation_id="getContainerLogs",
            summary="Container stdout/stderr lines, oldest first", openapi_extra=FEED_PARAMS,
            responses=NOT_FOUND_DOC)
async def container_logs(request: Request):
    # Async: the provider is awaited through the driver-call pool, not in a request thread.
    caller = await current_account(request)
    [last] = params.read(request, LAST)
    return JSON(await feed.logs(request.app.state.rt, caller.account_id,
                                request.path_params["instance_id"], last))


@router.get("/{instance_id}/events", response_model=list[str],
            operation_id="getContainerEvents", openapi_extra=FEED_PARAMS, responses=NOT_FOUND_DOC,
            summary="Lifecycle events (gpucloud's and the provider's), oldest first")
async def container_events(request: Request):
    caller = await current_account(request)
    [last] = params.read(request, LAST)
    return JSON(await feed.events(request.app.state.rt, caller.account_id,
                                  request.path_params["instance_id"], last))
