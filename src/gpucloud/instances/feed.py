"""A container's logs and events as readable lines: what GET …/logs and …/events answer, and
what the console shows.

A feed read starts on a request thread, which reads our rows (the instance and its provider,
for events our own lines) and from there hands the driver call to a read slot of the
provider (`CallPool.start_read`: a few reads at a time per provider, on driver-call threads);
that thread merges and formats the lines and settles the request's future. The event loop
waits once, with a deadline, and nothing passes through it between the two threads; events
read the instance and our own lines in one statement. In-process with 32 callers, an events
request cost ~1,000 µs of CPU on either database as two awaited hops and two reads before the
driver's, ~800 µs this way (docs/api-speed.md).

A driver whose reads are SELECTs on our own database (`reads_inline`: the simulated one,
unless set to be slow) is asked on the request thread itself, right after our rows: a second
thread would only add a hand-over (events on SQLite ~260 → ~190 µs of CPU in-process).

The API's reads go out from the event loop (`Runtime.read`: to PostgreSQL's pipelines,
gpucloud.pgpipe, or SQLite's read processes, gpucloud.sqlitepipe), and so do a feed's: our
rows, then, for such a driver, its row (`Driver.feed_row`), from which it makes the lines
(`logs_from` / `events_from`) with no thread at all; another driver's call starts from the
loop in a read slot, as above. The request thread is left only where `Runtime.read` has one
(an in-memory SQLite database).

A provider that hangs costs a request its deadline (the read timeout, or the provider's call
timeout when shorter) and holds no request thread at all; events then answer with gpucloud's
own lines, read again on a request thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from gpucloud.drivers.base import DriverError
from gpucloud.drivers.pool import expire_after
from gpucloud.errors import BadRequest
from gpucloud.instances import service
from gpucloud.jsonresp import stamped
from gpucloud.threads import settle

LOGS_UNAVAILABLE = "Logs are temporarily unavailable from the provider"


def _target(rt, account_id: str, instance_id: str, workload: str, with_events: bool):
    """Our rows for a feed (`NotFound` for another account's id or another type's): the
    instance with its provider, the driver for it and, if asked, our own lines."""
    with rt.db.query() as conn:
        if with_events:
            inst, ours = service.driver_target_and_events(conn, account_id, instance_id,
                                                          workload)
        else:
            inst, ours = service.driver_target(conn, account_id, instance_id, workload), []
    return inst, rt.driver_for(inst.provider_id, inst.driver, inst.config or {}), ours


async def _read(rt, account_id: str, instance_id: str, workload: str, what: str, job,
                last: int | None) -> list[str]:
    """`job(inst, driver, ours, last)` in a read slot of the instance's provider, after our
    rows are read (from the loop when `rt.reads_on_loop`, where a driver with a `feed_row`
    makes the lines here instead, else on a request thread); `CallTimeout` (a `DriverError`)
    past the deadline."""
    answer = asyncio.get_running_loop().create_future()
    limit = rt.settings.driver_read_timeout_seconds

    def dispatch() -> None:  # on a request thread
        inst, driver, ours = _target(rt, account_id, instance_id, workload, what == "events")
        if driver.reads_inline:  # a read of our own database: no thread of its own needed
            lines = job(inst, driver, ours, last)  # what it raises settles `answer` (`hand`)
            answer.get_loop().call_soon_threadsafe(settle, answer, True, lines)
            return
        if driver.call_timeout < limit:  # the provider's own, shorter deadline
            answer.get_loop().call_soon_threadsafe(expire_after, answer, driver.call_timeout,
                                                   what)
        rt.calls.start_read(inst.provider_id, answer, job, inst, driver, ours, last)

    if rt.reads_on_loop:
        inst, driver, ours = await _target_on_loop(rt, account_id, instance_id, workload,
                                                   what == "events")
        query = driver.feed_row(inst.id)
        if query is not None:  # the driver's row read like ours, the lines made here
            row = await rt.read(*query, then=lambda rows: rt.db.reader.convert(query[0], rows[0])
                                if rows else None)
            if what == "logs":
                return driver.logs_from(row, last)
            return _merged(ours, driver.events_from(row), last)
        if driver.call_timeout < limit:
            expire_after(answer, driver.call_timeout, what)
        rt.calls.start_read(inst.provider_id, answer, job, inst, driver, ours, last)
    else:
        rt.requests.hand(answer, dispatch)
    timer = expire_after(answer, limit, what)
    try:
        return await answer
    finally:
        timer.cancel()


async def _target_on_loop(rt, account_id: str, instance_id: str, workload: str,
                          with_events: bool):
    """`_target` read through `rt.read` (sent from the event loop)."""
    stmt, params = service.feed_target_query(account_id, instance_id, workload, with_events)
    convert_all = rt.db.reader.convert_all
    inst, ours = service.feed_target_from(
        await rt.read(stmt, params, then=lambda rows: convert_all(stmt, rows)), with_events)
    return inst, rt.driver_for(inst.provider_id, inst.driver, inst.config or {}), ours


def _lines(entries: list[tuple[dt.datetime, str]], last: int | None) -> list[str]:
    return stamped(entries[-last:] if last else entries)


def _logs(inst: Any, driver, ours: list, last: int | None) -> list[str]:
    lines = driver.logs(inst.id, inst.driver_state, last)
    return lines[-last:] if last else lines


def _events(inst: Any, driver, ours: list, last: int | None) -> list[str]:
    try:
        theirs = driver.events(inst.id, inst.driver_state)
    except DriverError:
        theirs = []  # the provider is unreachable; our own record still tells the story
    return _merged(ours, theirs, last)


def _merged(ours: list, theirs: list, last: int | None) -> list[str]:
    theirs = [(e.at, e.message) for e in theirs]
    return _lines(sorted(ours + theirs, key=lambda e: e[0]), last)  # stable: ours first on ties



async def logs(rt, account_id: str, instance_id: str, last: int | None,
               workload: str = "container") -> list[str]:
    try:
        return await _read(rt, account_id, instance_id, workload, "logs", _logs, last)
    except DriverError:  # CallTimeout included
        raise BadRequest(LOGS_UNAVAILABLE) from None


async def events(rt, account_id: str, instance_id: str, last: int | None,
                 workload: str = "container") -> list[str]:
    """gpucloud's own lifecycle lines merged with the provider's, oldest first (containers,
    VMs and bare metal alike)."""
    try:
        return await _read(rt, account_id, instance_id, workload, "events", _events, last)
    except DriverError:  # no answer in time: our own lines alone
        _, _, ours = await rt.offload(_target, rt, account_id, instance_id, workload, True)
        return _lines(ours, last)
