"""Operator views of instances: a VM's serial console (kernel, systemd and cloud-init output),
the first place to look when a guest never answered SSH."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from gpucloud.accounts.auth import require_admin
from gpucloud.catalog.models import Provider
from gpucloud.drivers.base import DriverError
from gpucloud.errors import BadRequest, NotFound
from gpucloud.instances.models import Instance
from gpucloud.jsonresp import JSON

router = APIRouter(prefix="/admin/instances", tags=["admin: instances"],
                   dependencies=[Depends(require_admin)])


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
