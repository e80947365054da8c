"""A container's logs and events as readable lines: what GET …/logs and …/events answer, and
what the console shows.

The database is read in the threadpool; the driver is asked through the driver-call pool
(`CallPool.start_read`: a few reads at a time per provider, on threads of their own) and
awaited on the event loop with a timeout, so a provider that hangs costs a request its
timeout and holds no request thread at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gpucloud.drivers.base import DriverError
from gpucloud.drivers.pool import CallTimeout
from gpucloud.errors import BadRequest
from gpucloud.instances import events as instance_events
from gpucloud.instances import service
from gpucloud.jsonresp import isoformat_z

LOGS_UNAVAILABLE = "Logs are temporarily unavailable from the provider"


def _with_driver(rt, account_id: str, instance_id: str, with_events: bool = False,
                 workload: str = "container"):
    # One pre-built statement (instance, provider) on a plain connection: these are polled.
    with rt.db.query() as conn:
        inst = service.driver_target(conn, account_id, instance_id, workload)
        ours = instance_events.for_instance(conn, instance_id) if with_events else []
    driver = rt.driver_for(inst.provider_id, inst.driver, inst.config or {})
    return inst, driver, ours


async def ask(rt, provider_id: str, driver, what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """One driver read for a request, bounded by the read timeout (and the driver's own)."""
    timeout = min(driver.call_timeout, rt.settings.driver_read_timeout_seconds)
    pending = rt.calls.start_read(provider_id, fn, *args)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(pending), timeout)
    except TimeoutError:
        pending.cancel()  # still queued: it never starts; running: its thread is abandoned
        raise CallTimeout(f"the provider did not answer within {timeout:g} s ({what})") \
            from None


async def logs(rt, account_id: str, instance_id: str, last: int | None) -> list[str]:
    inst, driver, _ = await rt.offload(_with_driver, rt, account_id, instance_id)
    try:
        lines = await ask(rt, inst.provider_id, driver, "logs", driver.logs, inst.id,
                          inst.driver_state, last)
    except DriverError:  # CallTimeout included
        raise BadRequest(LOGS_UNAVAILABLE) from None
    return lines[-last:] if last else lines


async def events(rt, account_id: str, instance_id: str, last: int | None,
                 workload: str = "container") -> list[str]:
    """gpucloud's own lifecycle lines merged with the provider's, oldest first (containers,
    VMs and bare metal alike)."""
    inst, driver, ours = await rt.offload(_with_driver, rt, account_id, instance_id,
                                                 True, workload)
    try:
        found = await ask(rt, inst.provider_id, driver, "events", driver.events, inst.id,
                          inst.driver_state)
        theirs = [(e.at, e.message) for e in found]
    except DriverError:  # CallTimeout included
        theirs = []  # the provider is unreachable; our own record still tells the story
    merged = sorted(ours + theirs, key=lambda e: e[0])  # stable: ours first on ties
    lines = [f"{isoformat_z(at)} {message}" for at, message in merged]
    return lines[-last:] if last else lines
