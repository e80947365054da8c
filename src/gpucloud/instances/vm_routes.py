"""/gpu/instances/vms and /gpu/instances/baremetal (SPEC §4): the same routes for both kinds.

An instance is only reachable under its own kind's path. These routes are included before the
container routes, so GET /gpu/instances/vms is never taken for a container id.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from gpucloud import idempotency, params
from gpucloud.accounts.auth import Caller, current_account
from gpucloud.bodies import BodyRoute
from gpucloud.instances import feed, service
from gpucloud.instances.container_routes import (
    FEED_PARAMS,
    LAST,
    NOT_FOUND_DOC,
    PATH_ID,
    details_body,
    list_body,
    terminate_owned,
)
from gpucloud.instances.schemas import Created, VmDeploy, VmDetails, VmItem, VmRename
from gpucloud.jsonresp import JSON

router = APIRouter(prefix="/gpu/instances", route_class=BodyRoute)

KINDS = {"vms": "vm", "baremetal": "baremetal"}


def _workload(request: Request) -> str:
    # /gpu/instances/<kind>[/...]; the scope's path, not `request.url` (which builds and
    # parses the whole URL: ~4 µs of a ~90 µs details response)
    return KINDS[request.scope["path"].split("/")[3]]


async def list_vms(request: Request):
    rt = request.app.state.rt
    caller = await current_account(request)
    return JSON(await list_body(rt, caller.account_id, _workload(request)))


async def get_vm(request: Request):
    rt = request.app.state.rt
    caller = await current_account(request)
    return JSON(await details_body(rt, caller.account_id, request.path_params["instance_id"],
                                   _workload(request)))


def _rename(rt, account_id: str, instance_id: str, workload: str, name: str) -> None:
    with rt.db.write() as s:
        inst = service.get_owned(s, account_id, instance_id, (workload,), for_update=True)
        service.rename(inst, name, rt.clock.now())


def _routes(kind: str, workload: str) -> None:
    title = "VM" if workload == "vm" else "Baremetal"
    tags = [f"instances: {kind}"]

    async def deploy(body: VmDeploy, request: Request,
                     caller: Caller = Depends(current_account),
                     key: str | None = Depends(idempotency.key_header)):
        rt = request.app.state.rt

        def work(s) -> tuple[int, dict]:
            inst = service.deploy_vm(s, rt, caller.account_id, workload, body, rt.clock.now())
            return 201, {"instance_id": inst.id}

        return await rt.offload_write(idempotency.run, rt, caller.account_id, key,
                                      idempotency.fingerprint(f"deploy{title}", body), work)

    async def rename(instance_id: str, body: VmRename, request: Request,
                     caller: Caller = Depends(current_account)):
        rt = request.app.state.rt
        await rt.offload_write(_rename, rt, caller.account_id, instance_id, workload, body.name)
        return Response(status_code=204)

    async def terminate(instance_id: str, request: Request,
                        caller: Caller = Depends(current_account)):
        rt = request.app.state.rt
        await rt.offload_write(terminate_owned, rt, caller.account_id, instance_id, (workload,))
        return Response(status_code=204)

    async def events(request: Request):
        # An extension beyond the Fluence API: why a VM failed, when it answered SSH.
        rt = request.app.state.rt
        caller = await current_account(request)
        [last] = params.read(request, LAST)
        return JSON(await feed.events(rt, caller.account_id, request.path_params["instance_id"],
                                      last, workload))

    base = f"/{kind}"
    router.add_api_route(base, deploy, methods=["POST"], status_code=201, tags=tags,
                         response_model=Created, operation_id=f"deploy{title}",
                         summary=f"Deploy a {kind} instance")
    router.add_api_route(base, list_vms, methods=["GET"], tags=tags, response_model=list[VmItem],
                         operation_id=f"list{title}s", summary=f"List {kind} instances")
    router.add_api_route(base + "/{instance_id}", get_vm, methods=["GET"], tags=tags,
                         response_model=VmDetails, operation_id=f"get{title}",
                         summary=f"{title} instance details", openapi_extra=PATH_ID,
                         responses=NOT_FOUND_DOC)
    router.add_api_route(base + "/{instance_id}", rename, methods=["PUT"], status_code=204,
                         tags=tags, operation_id=f"rename{title}", responses=NOT_FOUND_DOC,
                         summary=f"Rename a {kind} instance")
    router.add_api_route(base + "/{instance_id}", terminate, methods=["DELETE"],
                         status_code=204, tags=tags, operation_id=f"terminate{title}",
                         summary=f"Terminate a {kind} instance", responses=NOT_FOUND_DOC)
    router.add_api_route(base + "/{instance_id}/events", events, methods=["GET"], tags=tags,
                         response_model=list[str], operation_id=f"get{title}Events",
                         summary="Lifecycle events (gpucloud's and the provider's), oldest "
                         "first (extension)", openapi_extra=FEED_PARAMS,
                         responses=NOT_FOUND_DOC)


for _kind, _workload_name in KINDS.items():
    _routes(_kind, _workload_name)
