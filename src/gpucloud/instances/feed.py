"""A container's logs and events as readable lines: what GET …/logs and …/events answer, and
what the console shows. The driver is called outside any transaction."""

from __future__ import annotations

from gpucloud.drivers.base import DriverError
from gpucloud.errors import BadRequest
from gpucloud.instances import events as instance_events
from gpucloud.instances import service
from gpucloud.jsonresp import isoformat_z


def _with_driver(rt, account_id: str, instance_id: str, with_events: bool = False,
                 workload: str = "container"):
    # One pre-built statement (instance, provider) on a plain connection: these are polled.
    with rt.db.query() as conn:
        inst = service.driver_target(conn, account_id, instance_id, workload)
        ours = instance_events.for_instance(conn, instance_id) if with_events else []
    driver = rt.driver_for(inst.provider_id, inst.driver, inst.config or {})
    return inst, driver, ours


def logs(rt, account_id: str, instance_id: str, last: int | None) -> list[str]:
    inst, driver, _ = _with_driver(rt, account_id, instance_id)
    try:
        lines = driver.logs(inst.id, inst.driver_state, last)
    except DriverError:
        raise BadRequest("Logs are temporarily unavailable from the provider") from None
    return lines[-last:] if last else lines


def events(rt, account_id: str, instance_id: str, last: int | None,
           workload: str = "container") -> list[str]:
    """gpucloud's own lifecycle lines merged with the provider's, oldest first (containers,
    VMs and bare metal alike)."""
    inst, driver, ours = _with_driver(rt, account_id, instance_id, True, workload)
    try:
        theirs = [(e.at, e.message) for e in driver.events(inst.id, inst.driver_state)]
    except DriverError:
        theirs = []  # the provider is unreachable; our own record still tells the story
    merged = sorted(ours + theirs, key=lambda e: e[0])  # stable: ours first on ties
    lines = [f"{isoformat_z(at)} {message}" for at, message in merged]
    return lines[-last:] if last else lines
