"""/gpu/instances — container instances (SPEC §3). Thin: auth, one service call, a JSON body.

GET /gpu/instances/{instance_id} is a `fastpath` endpoint (plain Starlette route taking only
the request): it is the hottest read, answered from one indexed SELECT without the ORM.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response

from gpucloud.accounts.auth import (
    Caller,
    api_key_header,
    current_account,
)
from gpucloud.catalog.models import Provider
from gpucloud.drivers.base import DriverError
from gpucloud.errors import INSTANCE_NOT_FOUND, BadRequest
from gpucloud.fastpath import fast
from gpucloud.instances import events as instance_events
from gpucloud.instances import service, views
from gpucloud.instances.schemas import (
    ContainerDeploy,
    ContainerDetails,
    ContainerItem,
    ContainerUpdate,
    Created,
)
from gpucloud.jsonresp import JSON, isoformat_z

# The header dependency only documents the X-API-KEY scheme on every operation (auth itself
# is `current_account`, awaited directly on the fast routes).
router = APIRouter(prefix="/gpu/instances", tags=["instances: containers"],
                   dependencies=[Depends(api_key_header)])

CONTAINER = ("container",)
PATH_ID = {"parameters": [{"name": "instance_id", "in": "path", "required": True,
                           "schema": {"type": "string", "format": "uuid"}}]}
NOT_FOUND_DOC = {404: {
    "description": "Unknown instance (or another account's)",
    "content": {"application/json": {"example": {"detail": INSTANCE_NOT_FOUND}}}}}


# --- shared with vm_routes -------------------------------------------------------------------

def fetch_row(rt, account_id: str, instance_id: str, workload: str) -> Any:
    return service.fetch_details(rt.db, account_id, instance_id, workload)


def _now(rt):
    return rt.clock.now()


# --- routes ----------------------------------------------------------------------------------

@router.post("/", status_code=201, response_model=Created, operation_id="deployContainer",
             summary="Deploy a container")
def deploy(body: ContainerDeploy, request: Request, caller: Caller = Depends(current_account)):
    rt = request.app.state.rt
    with rt.db.write() as s:
        inst = service.deploy_container(s, rt, caller.account_id, body, _now(rt))
        instance_id = inst.id
    rt.invalidate("plans")
    rt.wake.set()
    return JSON({"instance_id": instance_id}, status_code=201)


router.add_api_route("", deploy, methods=["POST"], status_code=201, include_in_schema=False)


@router.get("/", response_model=list[ContainerItem], operation_id="listContainers",
            summary="List containers, newest first")
def list_containers(request: Request, caller: Caller = Depends(current_account)):
    rt = request.app.state.rt
    with rt.db.read() as s:
        rows = service.list_owned(s, caller.account_id, "container")
    return JSON([views.container_item(r) for r in rows])


router.add_api_route("", list_containers, methods=["GET"], include_in_schema=False)


@router.get("/{instance_id}", response_model=ContainerDetails, operation_id="getContainer",
            summary="Container details",
            openapi_extra=PATH_ID, responses=NOT_FOUND_DOC)
@fast
async def get_container(request: Request):
    rt = request.app.state.rt
    caller = await current_account(request)
    row = fetch_row(rt, caller.account_id, request.path_params["instance_id"], "container")
    return JSON(views.container_details(row))


@router.put("/{instance_id}", status_code=204, operation_id="updateContainer",
            summary="Replace a container's configuration", responses=NOT_FOUND_DOC)
def update_container(instance_id: str, body: ContainerUpdate, request: Request,
                     caller: Caller = Depends(current_account)):
    rt = request.app.state.rt
    with rt.db.write() as s:
        inst = service.get_owned(s, caller.account_id, instance_id, CONTAINER, for_update=True)
        service.request_update(s, rt, inst, body, _now(rt))
    rt.wake.set()
    return Response(status_code=204)


@router.delete("/{instance_id}", status_code=204, operation_id="terminateContainer",
               summary="Terminate a container", responses=NOT_FOUND_DOC)
def terminate_container(instance_id: str, request: Request,
                        caller: Caller = Depends(current_account)):
    rt = request.app.state.rt
    with rt.db.write() as s:
        inst = service.get_owned(s, caller.account_id, instance_id, CONTAINER, for_update=True)
        service.terminate(s, inst, _now(rt))
    rt.invalidate("plans")
    rt.wake.set()
    return Response(status_code=204)


def with_driver(rt, account_id: str, instance_id: str, workloads=CONTAINER):
    with rt.db.read() as s:
        inst = service.get_owned(s, account_id, instance_id, workloads)
        provider = s.get(Provider, inst.provider_id)
        ours = instance_events.for_instance(s, instance_id)
    driver = rt.driver_for(provider.id, provider.driver, provider.config or {})
    return inst, driver, ours


LAST = Query(None, ge=1, description="Keep only the last N lines")


@router.get("/{instance_id}/logs", response_model=list[str], operation_id="getContainerLogs",
            summary="Container stdout/stderr lines, oldest first", responses=NOT_FOUND_DOC)
def container_logs(instance_id: str, request: Request, last: int | None = LAST,
                   caller: Caller = Depends(current_account)):
    rt = request.app.state.rt
    inst, driver, _ = with_driver(rt, caller.account_id, instance_id)
    try:
        lines = driver.logs(inst.id, inst.driver_state, last)
    except DriverError:
        raise BadRequest("Logs are temporarily unavailable from the provider") from None
    return JSON(lines[-last:] if last else lines)


@router.get("/{instance_id}/events", response_model=list[str],
            operation_id="getContainerEvents", responses=NOT_FOUND_DOC,
            summary="Lifecycle events (gpucloud's and the provider's), oldest first")
def container_events(instance_id: str, request: Request, last: int | None = LAST,
                     caller: Caller = Depends(current_account)):
    rt = request.app.state.rt
    return JSON(event_lines(*with_driver(rt, caller.account_id, instance_id), last))


def event_lines(inst, driver, ours, last: int | None) -> list[str]:
    """gpucloud's events merged with the driver's, oldest first, as text lines."""
    try:
        theirs = [(e.at, e.message) for e in driver.events(inst.id, inst.driver_state)]
    except DriverError:
        theirs = []  # the provider is unreachable; our own record still tells the story
    merged = sorted(ours + theirs, key=lambda e: e[0])  # stable: ours first on ties
    lines = [f"{isoformat_z(at)} {message}" for at, message in merged]
    return lines[-last:] if last else lines
