"""Resources unique across a provider (host ports, GPU devices), handed out by the control
plane before a driver is asked to create anything, and given to the driver in the spec.

Drivers touch no database (docs/drivers.md): a driver only says what it needs
(`wanted_ports`, `port_range`, `port_free`, `gpu_pool`), and this module decides.

The `port_allocations` table is unique on (provider, port) and `gpu_allocations` on
(provider, device), so two instances can never hold the same port or GPU, even when several
server processes allocate at once: a collision is an IntegrityError, and the short
transaction is simply retried. Allocation is keyed by instance (and internal port), so asking
again (a create retried after a crash, an update, a recreate) returns the same ports and GPUs.
Everything is released in the transaction that closes the instance (`release`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gpucloud.catalog import machines as catalog_machines
from gpucloud.catalog.models import (
    MACHINE_DIRTY,
    MACHINE_FREE,
    MACHINE_MAINTENANCE,
    MACHINE_RENTED,
    Machine,
    Provider,
)
from gpucloud.db import NEW_WORK, after_commit
from gpucloud.drivers.base import Driver, ForwardedPort, WorkloadSpec
from gpucloud.errors import PLAN_UNAVAILABLE, BadRequest, NotFound
from gpucloud.instances import events
from gpucloud.instances.models import OP_DELETE, GpuAllocation, Instance, PortAllocation

Key = tuple[int, str]  # (internal port, protocol as exposed: tcp | udp | http)


class AllocationError(Exception):
    """The provider has nothing left to give: the instance cannot be provisioned there."""


class PortsExhausted(AllocationError):
    pass


class GpusExhausted(AllocationError):
    pass


class MachinesBusy(AllocationError):
    """No clean free machine right now (some may be wiping): worth waiting for."""


def for_spec(rt, driver: Driver, spec: WorkloadSpec) -> WorkloadSpec:
    """Fill `spec.ports` and `spec.gpu_devices` with what the instance holds, allocating what
    is missing. Raises AllocationError when the provider has none left."""
    wanted = driver.wanted_ports(spec)
    if wanted and driver.port_range is None:
        raise PortsExhausted("The provider has no port range for published ports")
    if wanted:
        ports = allocate(rt, spec.provider_id, spec.instance_id, wanted,
                         tuple(driver.port_range), driver.port_free)
        spec.ports = [ForwardedPort(port=p, external_port=ports[(p, proto)], protocol=proto)
                      for p, proto in dict.fromkeys(wanted)]
    pool = driver.gpu_pool(spec)
    if pool and spec.gpu_count > 0:
        spec.gpu_devices = allocate_gpus(rt, spec.provider_id, spec.instance_id, pool,
                                         spec.gpu_count)
    machines = driver.machine_pool(spec)
    if machines:
        spec.machine = rent_machine(rt, spec.provider_id, spec.instance_id, machines)
    return spec


def allocate(rt, provider_id: str, instance_id: str, wanted: Iterable[Key],
             port_range: tuple[int, int],
             probe: Callable[[int, str], bool] | None = None) -> dict[Key, int]:
    """Host port for every wanted (port, protocol) of the instance; existing ones are kept.

    Lowest free port first, so a released port is reused predictably."""
    wanted = list(dict.fromkeys(wanted))
    for _ in range(8):
        try:
            with rt.db.write() as s:
                conn = s.connection()
                have = {(r.internal_port, r.protocol): r.port
                        for r in conn.execute(_PORTS_OF, {"instance_id": instance_id})
                        if r.provider_id == provider_id}
                missing = [k for k in wanted if k not in have]
                if missing:
                    taken = set(conn.execute(_TAKEN_PORTS, {"provider_id": provider_id})
                                .scalars())
                    candidates = _free_ports(port_range, taken, probe)
                    rows = []
                    for key in missing:
                        port = next(candidates, None)
                        if port is None:
                            raise PortsExhausted(
                                f"No free external port left in {port_range[0]}-{port_range[1]}")
                        rows.append({"provider_id": provider_id, "port": port,
                                     "instance_id": instance_id, "internal_port": key[0],
                                     "protocol": key[1]})
                        have[key] = port
                    conn.execute(_INSERT_PORTS, rows)
                return {k: have[k] for k in wanted}
        except IntegrityError:
            continue  # another process took one of these ports first: look again
    raise PortsExhausted("Could not allocate host ports (too much contention)")


# Built once: every create asks (bench/lifecycle.py: statement building cost more than the
# statements).
_PA = PortAllocation.__table__
_PORTS_OF = select(_PA.c.internal_port, _PA.c.protocol, _PA.c.port, _PA.c.provider_id).where(
    _PA.c.instance_id == bindparam("instance_id"))
_TAKEN_PORTS = select(_PA.c.port).where(_PA.c.provider_id == bindparam("provider_id"))
_INSERT_PORTS = insert(_PA)


def _free_ports(port_range: tuple[int, int], taken: set[int],
                probe: Callable[[int, str], bool] | None):
    for port in range(port_range[0], port_range[1] + 1):
        if port in taken:
            continue
        # Probe both protocols: the same number may later be wanted for tcp or udp.
        if probe is not None and not (probe(port, "tcp") and probe(port, "udp")):
            continue
        yield port


def allocate_gpus(rt, provider_id: str, instance_id: str, pool: list[str],
                  count: int) -> list[str]:
    """`count` devices of the provider's inventory for the instance (the ones it already
    holds first), in inventory order."""
    for _ in range(8):
        try:
            with rt.db.write() as s:
                rows = s.execute(select(GpuAllocation.device, GpuAllocation.instance_id)
                                 .where(GpuAllocation.provider_id == provider_id)).all()
                mine = [d for d, owner in rows if owner == instance_id]
                busy = {d for d, owner in rows if owner != instance_id}
                free = [d for d in pool if d not in busy and d not in mine]
                if len(mine) + len(free) < count:
                    raise GpusExhausted(f"Not enough free GPUs at the provider "
                                        f"({len(free) + len(mine)} free, {count} wanted)")
                for device in free[:max(0, count - len(mine))]:
                    s.add(GpuAllocation(provider_id=provider_id, device=device,
                                        instance_id=instance_id))
                    mine.append(device)
                s.flush()
                order = {d: i for i, d in enumerate(pool)}
                return sorted(mine, key=lambda d: order.get(d, len(order)))[:count]
        except IntegrityError:
            continue  # another process took one of these devices first: look again
    raise GpusExhausted("Could not allocate GPUs (too much contention)")


def rent_at_deploy(s: Session, provider_id: str, offer_id: str, instance_id: str,
                   now: dt.datetime) -> str | None:
    """In the deploy's transaction: rent a free machine serving the offer, or refuse the
    deploy (the contract's 400, nothing written). None: the provider has no machines.

    The compare-and-set on `state = free` is the exact arbiter (on PostgreSQL a second writer
    re-checks it under the row lock; SQLite serializes writers), so two deploys never get one
    machine, whatever the offer's capacity showed them."""
    provider = s.get(Provider, provider_id)
    names = catalog_machines.served(provider) if provider is not None else {}
    if not names:
        return None
    pool = [n for n, limited in names.items() if catalog_machines.serves(limited, offer_id)]
    if pool and s.scalar(select(Machine.id).where(Machine.provider_id == provider_id)
                         .limit(1)) is None:
        catalog_machines.sync_rows(s, provider, now)  # a provider registered before the rows
    for name in pool:
        taken = s.execute(
            update(Machine).where(Machine.provider_id == provider_id, Machine.name == name,
                                  Machine.state == MACHINE_FREE)
            .values(state=MACHINE_RENTED, instance_id=instance_id, reason=None, updated_at=now)
            .execution_options(synchronize_session=False)).rowcount
        if taken == 1:
            catalog_machines.sync_capacity(s, [provider_id])
            return name
    raise BadRequest(PLAN_UNAVAILABLE)


def rent_machine(rt, provider_id: str, instance_id: str, pool: list[str]) -> str:
    """The machine the instance rents: the one its deploy rented (`rent_at_deploy`), else
    (an instance deployed before machines were rented at deploy) the first free one of
    `pool`. The rent is a compare-and-set on `state = free`, so two processes never rent one
    machine."""
    for _ in range(8):
        try:
            with rt.db.write() as s:
                rows = {m.name: m for m in s.scalars(
                    select(Machine).where(Machine.provider_id == provider_id))}
                for name in pool:
                    if name not in rows:
                        rows[name] = Machine(provider_id=provider_id, name=name,
                                             state=MACHINE_FREE)
                        s.add(rows[name])
                s.flush()
                mine = [m for m in rows.values()
                        if m.instance_id == instance_id and m.state == MACHINE_RENTED]
                if mine:
                    return mine[0].name
                for name in pool:
                    if rows[name].state != MACHINE_FREE:
                        continue
                    taken = s.execute(
                        update(Machine).where(Machine.id == rows[name].id,
                                              Machine.state == MACHINE_FREE)
                        .values(state=MACHINE_RENTED, instance_id=instance_id, reason=None)
                        .execution_options(synchronize_session=False)).rowcount
                    if taken == 1:
                        catalog_machines.sync_capacity(s, [provider_id])
                        return name
                raise MachinesBusy("No clean machine is free at the provider")
        except IntegrityError:
            continue  # another process added the same rows first: look again
    raise MachinesBusy("Could not rent a machine (too much contention)")


def machine_of(rt, instance_id: str) -> str | None:
    """The machine the instance rents or last rented (dirty, maintenance)."""
    with rt.db.read() as s:
        return s.scalar(select(Machine.name).where(Machine.instance_id == instance_id))


def machine_wiped(s: Session, instance_id: str, now: dt.datetime) -> None:
    """The instance's machine is clean: offer it again."""
    pids = list(s.scalars(select(Machine.provider_id).where(Machine.instance_id == instance_id)))
    s.execute(update(Machine).where(Machine.instance_id == instance_id,
                                    Machine.state.in_([MACHINE_DIRTY, MACHINE_RENTED]))
              .values(state=MACHINE_FREE, instance_id=None, reason=None, updated_at=now)
              .execution_options(synchronize_session=False))
    catalog_machines.sync_capacity(s, pids)


def machine_maintenance(s: Session, instance_id: str, reason: str, now: dt.datetime) -> None:
    s.execute(update(Machine).where(Machine.instance_id == instance_id)
              .values(state=MACHINE_MAINTENANCE, reason=reason, updated_at=now)
              .execution_options(synchronize_session=False))


def allocated(rt, instance_id: str) -> dict[Key, int]:
    with rt.db.read() as s:
        rows = s.scalars(select(PortAllocation)
                         .where(PortAllocation.instance_id == instance_id)).all()
        return {(r.internal_port, r.protocol): r.port for r in rows}


def release(s: Session, instance_ids) -> None:
    """Free every port and GPU of the instances, in the caller's transaction (the one that
    closes them); safe to repeat. `instance_ids`: a list or a subquery of ids."""
    if isinstance(instance_ids, str):
        instance_ids = [instance_ids]
    s.execute(delete(PortAllocation).where(PortAllocation.instance_id.in_(instance_ids))
              .execution_options(synchronize_session=False))
    s.execute(delete(GpuAllocation).where(GpuAllocation.instance_id.in_(instance_ids))
              .execution_options(synchronize_session=False))
    # A machine is not free when its renter ends: it still holds the customer's data until
    # the driver's delete (the wipe) succeeded (`machine_wiped`). Called after the zone's
    # in_use went down (transitions._close, billing's end_exhausted), so the capacity synced
    # here counts it once.
    pids = list(s.scalars(select(Machine.provider_id).where(
        Machine.instance_id.in_(instance_ids), Machine.state == MACHINE_RENTED)))
    if pids:
        s.execute(update(Machine).where(Machine.instance_id.in_(instance_ids),
                                        Machine.state == MACHINE_RENTED)
                  .values(state=MACHINE_DIRTY)
                  .execution_options(synchronize_session=False))
        catalog_machines.sync_capacity(s, pids)


# --- operator actions on a machine (POST /admin/machines/{id}/...) ----------------------------

def _machine(s: Session, machine_id: int) -> Machine:
    m = s.get(Machine, machine_id, with_for_update=not _is_sqlite(s))
    if m is None:
        raise NotFound("Machine not found")
    return m


def _is_sqlite(s: Session) -> bool:
    return s.get_bind().dialect.name == "sqlite"


def retry_wipe(s: Session, machine_id: int, now: dt.datetime) -> Machine:
    """Maintenance → dirty, and the release of its last instance scheduled again: the
    lifecycle worker wipes it (free when the wipe succeeds, maintenance again if not)."""
    m = _machine(s, machine_id)
    if m.state != MACHINE_MAINTENANCE:
        raise BadRequest(f"Machine {m.name} is {m.state}: only a machine in maintenance can "
                         "be wiped again")
    inst = s.get(Instance, m.instance_id) if m.instance_id else None
    if inst is None:
        raise BadRequest(f"Machine {m.name} has no instance whose release would wipe it; "
                         "return it to service once it is clean")
    m.state, m.reason, m.updated_at = MACHINE_DIRTY, None, now
    inst.op, inst.next_check_at, inst.attempts = OP_DELETE, now, 0
    inst.lock_token = inst.lock_expires_at = None
    events.record(s, inst.id, now, f"Operator asked for the wipe of machine {m.name} again")
    after_commit(s, NEW_WORK)
    s.flush()
    return m


def return_to_service(s: Session, machine_id: int, now: dt.datetime) -> Machine:
    """Maintenance → free, on the operator's word that it is clean and healthy."""
    m = _machine(s, machine_id)
    if m.state != MACHINE_MAINTENANCE:
        raise BadRequest(f"Machine {m.name} is {m.state}: only a machine in maintenance can "
                         "be returned to service")
    if m.instance_id:
        events.record(s, m.instance_id, now, f"Operator returned machine {m.name} to service")
    m.state, m.instance_id, m.reason, m.updated_at = MACHINE_FREE, None, None, now
    s.flush()
    catalog_machines.sync_capacity(s, [m.provider_id])
    return m


def record_inventory(s: Session, machine_id: int, inventory: dict, now: dt.datetime):
    """Store what the BMC just reported; a contradiction with an offer the machine serves
    takes a free machine out of service (maintenance, with the reason) and is returned as
    the 422 to raise once this is committed."""
    m = _machine(s, machine_id)
    m.inventory, m.inventory_at = inventory, now
    provider = s.get(Provider, m.provider_id)
    err = catalog_machines.machine_field_error(s, provider, m.name, inventory, ["machine"])
    if err is not None and m.state == MACHINE_FREE:
        m.state, m.updated_at = MACHINE_MAINTENANCE, now
        m.reason = f"Inventory contradicts its offers: {err}"
        s.flush()
        catalog_machines.sync_capacity(s, [m.provider_id])
    s.flush()
    return m, err
