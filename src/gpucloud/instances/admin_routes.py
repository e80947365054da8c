"""Operator views of instances: a VM's serial console (kernel, systemd and cloud-init output),
the first place to look when a guest never answered SSH; bare-metal machines and their state
(free, rented, dirty, maintenance with the reason)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select

from gpucloud.accounts.auth import require_admin
from gpucloud.bodies import BodyRoute
from gpucloud.catalog.models import Provider
from gpucloud.drivers.base import DriverError
from gpucloud.errors import BadRequest, NotFound
from gpucloud.instances.models import Instance, Machine
from gpucloud.jsonresp import JSON

router = APIRouter(prefix="/admin/instances", route_class=BodyRoute, tags=["admin: instances"],
                   dependencies=[Depends(require_admin)])
machines = APIRouter(prefix="/admin/machines", route_class=BodyRoute, tags=["admin: instances"],
                     dependencies=[Depends(require_admin)])


@machines.get("", operation_id="adminListMachines",
              summary="Bare-metal machines: free, rented, dirty (wipe pending) or maintenance")
def list_machines(request: Request):
    rt = request.app.state.rt
    with rt.db.read() as s:
        rows = s.scalars(select(Machine).order_by(Machine.provider_id, Machine.name)).all()
        return JSON([{"provider_id": m.provider_id, "name": m.name, "state": m.state,
                      "instance_id": m.instance_id, "reason": m.reason,
                      "updated_at": m.updated_at} for m in rows])


@router.get("/{instance_id}/console", response_model=list[str], operation_id="adminGetConsole",
            summary="A VM's serial console log, oldest line first")
def console(instance_id: str, request: Request,
            last: int | None = Query(None, ge=1, description="Keep only the last N lines")):
    rt = request.app.state.rt
    with rt.db.read() as s:
        inst = s.get(Instance, instance_id) if len(instance_id) <= 64 else None
        if inst is None or "\x00" in instance_id:
            raise NotFound("Instance not found")
        if inst.workload == "container":
            raise BadRequest("Containers have no console; read GET /gpu/instances/{id}/logs")
        provider = s.get(Provider, inst.provider_id)
        state = inst.driver_state
    driver = rt.driver_for(provider.id, provider.driver, provider.config or {})
    try:
        lines = driver.logs(instance_id, state, last)
    except DriverError:
        raise BadRequest("The console is temporarily unavailable from the provider") from None
    return JSON(lines[-last:] if last else lines)
