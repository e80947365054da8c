"""Operator views of instances: a VM's serial console (kernel, systemd and cloud-init output),
the first place to look when a guest never answered SSH; bare-metal machines and their state
(free, rented, dirty, maintenance with the reason)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from gpucloud.accounts.auth import require_admin
from gpucloud.bodies import BodyRoute
from gpucloud.catalog import machines as catalog_machines
from gpucloud.catalog.models import Provider
from gpucloud.drivers import pool
from gpucloud.drivers.base import DriverError
from gpucloud.errors import BadRequest, NotFound
from gpucloud.instances import allocations
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
        return JSON([catalog_machines.machine_json(m) for m in rows])


def _machine_action(request: Request, machine_id: str, action) -> JSON:
    """One operator action on a machine, in one transaction; the machine as it is after it."""
    rt = request.app.state.rt
    with rt.db.write() as s:
        out = catalog_machines.machine_json(action(s, _machine_id(machine_id), rt.clock.now()))
    return JSON(out)


def _machine_id(raw: str) -> int:
    """Path parameters are plain strings: anything but a row id is an unknown machine."""
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound("Machine not found")
    return int(raw)


@machines.post("/{machine_id}/wipe", operation_id="adminWipeMachine",
               summary="Wipe a machine in maintenance again")
def wipe_machine(machine_id: str, request: Request):
    return _machine_action(request, machine_id, allocations.retry_wipe)


@machines.post("/{machine_id}/return", operation_id="adminReturnMachine",
               summary="Return a machine in maintenance to service")
def return_machine(machine_id: str, request: Request):
    return _machine_action(request, machine_id, allocations.return_to_service)


# The two routes below ask a provider (a BMC, a hypervisor's files): the call goes to the
# provider's driver-call slots with a deadline, so a slow one never holds a thread of the
# blocking routes (on SQLite there is one: docs/api-speed.md).

def _inventory_target(rt, machine_id: int):
    with rt.db.read() as s:
        m = s.get(Machine, machine_id)
        if m is None:
            raise NotFound("Machine not found")
        provider = s.get(Provider, m.provider_id)
        name = m.name
    return name, rt.driver_for(provider.id, provider.driver, provider.config or {})


def _record_inventory(rt, machine_id: int, inventory: dict):
    with rt.db.write() as s:
        m, err = allocations.record_inventory(s, machine_id, inventory, rt.clock.now())
        return catalog_machines.machine_json(m), err


@machines.post("/{machine_id}/inventory", operation_id="adminCheckMachineInventory",
               summary="Read a machine's inventory from its BMC and check it against its offers")
async def check_inventory(machine_id: str, request: Request):
    rt = request.app.state.rt
    machine_id = _machine_id(machine_id)
    name, driver = await rt.offload(_inventory_target, rt, machine_id)
    try:  # network I/O: outside any transaction
        inventory = await pool.call(rt.calls, driver.provider_id, driver.call_timeout,
                                    "inventory", driver.machine_inventory, name)
    except DriverError as exc:
        inventory = {"error": str(exc)}
    out, err = await run_in_threadpool(_record_inventory, rt, machine_id, inventory)
    if err is not None:
        raise err  # committed: the inventory is stored, a free machine is in maintenance
    return JSON(out)


@router.get("/{instance_id}/console", response_model=list[str], operation_id="adminGetConsole",
            summary="A VM's serial console log, oldest line first")
async def console(instance_id: str, request: Request,
                  last: int | None = Query(None, ge=1, description="Keep only the last N lines")):
    rt = request.app.state.rt
    state, driver = await rt.offload(_console_target, rt, instance_id)
    timeout = min(driver.call_timeout, rt.settings.driver_read_timeout_seconds)
    try:
        lines = await pool.call(rt.calls, driver.provider_id, timeout, "console", driver.logs,
                                instance_id, state, last)
    except DriverError:  # CallTimeout included
        raise BadRequest("The console is temporarily unavailable from the provider") from None
    return JSON(lines[-last:] if last else lines)


def _console_target(rt, instance_id: str):
    with rt.db.read() as s:
        inst = s.get(Instance, instance_id) if len(instance_id) <= 64 else None
        if inst is None or "\x00" in instance_id:
            raise NotFound("Instance not found")
        if inst.workload == "container":
            raise BadRequest("Containers have no console; read GET /gpu/instances/{id}/logs")
        provider = s.get(Provider, inst.provider_id)
        state = inst.driver_state
    return state, rt.driver_for(provider.id, provider.driver, provider.config or {})
