"""Instance rules: deploy, update, rename, terminate, and the shared end/fail transitions.

Functions take the caller's session and only flush; the route (or worker step) owns the
transaction, so a deploy that fails half-way (no capacity, no balance) leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import orjson
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from gpucloud.billing import ledger
from gpucloud.catalog import service as catalog
from gpucloud.db import new_id
from gpucloud.drivers.base import PortSpec, WorkloadSpec
from gpucloud.errors import INSTANCE_NOT_FOUND, BadRequest, FieldError, NotFound
from gpucloud.instances import allocations, events
from gpucloud.instances.models import (
    ACTIVE,
    ENDED,
    FAILED,
    INITIALIZED,
    OP_CREATE,
    OP_DELETE,
    OP_UPDATE,
    Instance,
)
from gpucloud.instances.schemas import (
    ContainerDeploy,
    ContainerSettingsBase,
    ContainerUpdate,
    VmDeploy,
)

SSH_ENV = "SSH_PUBKEY"
CONTAINER = "container"
VM_KINDS = ("vm", "baremetal")


# --- building blocks ------------------------------------------------------------------------


def _reject_reserved_env(settings: ContainerSettingsBase, ssh_key: str | None) -> None:
    """SSH_PUBKEY is ours to set when a key is given; a second definition would be ambiguous."""
    if ssh_key is None:
        return
    for idx, env in enumerate(settings.environment or []):
        if env.name == SSH_ENV:
            raise FieldError(
                ["body", "container_settings", "environment", idx, "name"],
                "SSH_PUBKEY is reserved: it is set from ssh_key",
                env.name,
            )


def container_config(
    settings: ContainerSettingsBase,
    expose: list[dict[str, Any]],
    ssh_key: str | None,
    generation: int,
) -> dict[str, Any]:
    env = [{"name": e.name, "value": e.value} for e in settings.environment or []]
    if ssh_key is not None:
        env.append({"name": SSH_ENV, "value": ssh_key})
    return {
        "image": settings.image,
        "expose": expose,
        "environment": env,
        "startup_command": settings.startup_command,
        "generation": generation,
    }


def _new_instance(
    rt, account_id: str, workload: str, name: str, offer, provider, now: dt.datetime
) -> Instance:
    return Instance(
        id=new_id(),
        account_id=account_id,
        offer_id=offer.id,
        zone_id=None,
        provider_id=provider.provider_id,
        workload=workload,
        name=name,
        status=INITIALIZED,
        location=offer.location,
        resources=catalog.plan_resources(offer),
        price_hour=offer.price_hour,
        reserve=0,
        spent=0,
        op=OP_CREATE,
        next_check_at=now,
        attempts=0,
        container=None,
        credentials_enc=None,
        ssh_key=None,
        os_image=None,
        pending_update=None,
        pending_credentials_enc=None,
        domain=None,
        network=None,
        container_started=None,
        driver_state=None,
        status_reason=None,
        billed_until=None,
        lock_token=None,
        lock_expires_at=None,
        activated_at=None,
        ended_at=None,
        provision_deadline_at=now + dt.timedelta(seconds=rt.settings.provision_deadline_seconds),
        created_at=now,
        updated_at=now,
    )


_COLUMNS = [c.key for c in Instance.__table__.columns]
_INSERT = insert(Instance.__table__)  # one statement object: compiled once, then cached


def _finish_deploy(
    s: Session, inst: Instance, provider, country: str | None, now: dt.datetime
) -> Instance:
    # Lock order everywhere else is instance → account → zone (boundaries, terminate, end);
    # a deploy's instance is new, so it takes the account (money) first, then the zone, and
    # can never deadlock with an hour boundary ending an instance of the same account/zone.
    try:
        ledger.reserve_upfront(s, inst, now)
    except BadRequest:
        # A plan that is gone is the better answer than "no money" for a plan that is gone.
        catalog.check_free(s, inst.offer_id, country)
        raise
    zone = catalog.take_zone(s, inst.offer_id, country)
    inst.zone_id = zone.id
    if inst.workload == CONTAINER:
        inst.location = zone.country
    # Deploy is the hottest write: a Core INSERT instead of an ORM unit of work. The ledger
    # entry carries the instance id; it has no foreign key, so the order is free.
    s.execute(_INSERT, {k: getattr(inst, k) for k in _COLUMNS})
    events.record(
        s, inst.id, now, f"Instance scheduled on provider {provider.name} ({inst.location})"
    )
    return inst


# --- deploy ---------------------------------------------------------------------------------


def deploy_container(
    s: Session, rt, account_id: str, body: ContainerDeploy, now: dt.datetime
) -> Instance:
    settings = body.container_settings
    _reject_reserved_env(settings, body.ssh_key)
    country = body.constraints.location if body.constraints else None
    offer, provider = catalog.deployable(s, body.plan_id, CONTAINER)
    inst = _new_instance(rt, account_id, CONTAINER, body.name, offer, provider, now)
    expose = [{"port": p.port, "protocol": p.protocol} for p in settings.expose]
    inst.container = container_config(settings, expose, body.ssh_key, 1)
    inst.ssh_key = body.ssh_key
    if settings.credentials is not None:
        inst.credentials_enc = rt.secrets.seal(settings.credentials.model_dump())
    return _finish_deploy(s, inst, provider, country, now)


def deploy_vm(
    s: Session, rt, account_id: str, workload: str, body: VmDeploy, now: dt.datetime
) -> Instance:
    offer, provider = catalog.deployable(s, body.plan_id, workload)
    options = list(offer.os_options or [])
    if body.os_image not in options:
        raise BadRequest(
            f"Provided OS image {body.os_image} is not supported for the selected "
            f"offer. Available OS images: {', '.join(options)}"
        )
    inst = _new_instance(rt, account_id, workload, body.name, offer, provider, now)
    inst.os_image = body.os_image
    inst.ssh_key = body.ssh_key
    return _finish_deploy(s, inst, provider, None, now)


# --- lookups --------------------------------------------------------------------------------


def get_owned(
    s: Session,
    account_id: str,
    instance_id: str,
    workloads: tuple[str, ...],
    for_update: bool = False,
) -> Instance:
    """Another account's instance, or one of another type, is exactly as unknown as a typo."""
    q = select(Instance).where(
        Instance.id == instance_id,
        Instance.account_id == account_id,
        Instance.workload.in_(workloads),
    )
    if for_update and s.bind.dialect.name != "sqlite":
        q = q.with_for_update()
    inst = s.scalars(q).one_or_none()
    if inst is None:
        raise NotFound(INSTANCE_NOT_FOUND)
    return inst


_DETAIL_COLUMNS = (
    "id",
    "name",
    "status",
    "workload",
    "resources",
    "domain",
    "location",
    "created_at",
    "updated_at",
    "container_started",
    "container",
    "price_hour",
    "spent",
    "reserve",
    "billed_until",
    "network",
    "os_image",
    "ssh_key",
)
_JSON_COLUMNS = frozenset({"resources", "container", "network"})
_TIME_COLUMNS = frozenset({"created_at", "updated_at", "billed_until"})


def _decode(name: str, value: Any) -> Any:
    """What SQLAlchemy's column types would do, for the few types the details use."""
    if value is None:
        return None
    if name in _JSON_COLUMNS:
        return orjson.loads(value) if isinstance(value, (str, bytes)) else value
    if name in _TIME_COLUMNS:
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        return value.replace(tzinfo=dt.timezone.utc)
    if name == "container_started":
        return bool(value)
    return value


_DETAILS_SQL = (
    f"SELECT {', '.join(_DETAIL_COLUMNS)} FROM instances "
    "WHERE id = {m} AND account_id = {m} AND workload = {m}"
)
_DETAILS_SQL_SQLITE = _DETAILS_SQL.format(m="?")
_DETAILS_SQL_PG = _DETAILS_SQL.format(m="%s")


def fetch_details(db, account_id: str, instance_id: str, workload: str) -> SimpleNamespace:
    """The instance for GET …/{id}: one primary-key probe on the thread's own connection
    (`Database.probe`).

    This is the hottest read; SQLAlchemy's per-statement machinery (and the BEGIN/ROLLBACK
    around it) cost ten times the query itself. A single SELECT is a consistent snapshot on
    its own, so no explicit transaction is needed. Other accounts' and other types' ids
    are exactly as unknown as a typo."""
    row = db.probe(
        _DETAILS_SQL_SQLITE if db.is_sqlite else _DETAILS_SQL_PG,
        (instance_id, account_id, workload),
    )
    if row is None:
        raise NotFound(INSTANCE_NOT_FOUND)
    return SimpleNamespace(**{k: _decode(k, v) for k, v in zip(_DETAIL_COLUMNS, row, strict=True)})


def list_owned(s: Session, account_id: str, workload: str) -> list[Any]:
    return s.execute(
        select(Instance.__table__)
        .where(Instance.account_id == account_id, Instance.workload == workload)
        .order_by(Instance.created_at.desc(), Instance.id.desc())
    ).all()


# --- changes --------------------------------------------------------------------------------


def request_update(s: Session, rt, inst: Instance, body: ContainerUpdate, now: dt.datetime) -> None:
    """Store the new config as pending; the lifecycle worker redeploys and then swaps it in."""
    if inst.status != ACTIVE:
        raise BadRequest("Only an ACTIVE instance can be updated")
    if inst.pending_update is not None:
        raise BadRequest("An update of this instance is still being applied")
    settings = body.container_settings
    _reject_reserved_env(settings, body.ssh_key)
    current = inst.container or {}
    generation = int(current.get("generation", 1)) + 1
    config = container_config(settings, list(current.get("expose", [])), body.ssh_key, generation)
    inst.pending_update = {"name": body.name, "container": config, "ssh_key": body.ssh_key}
    inst.pending_credentials_enc = (
        rt.secrets.seal(settings.credentials.model_dump())
        if settings.credentials is not None
        else None
    )
    _schedule(inst, OP_UPDATE, now)
    inst.updated_at = now
    events.record(s, inst.id, now, f"Update requested: image {settings.image}")


def rename(inst: Instance, name: str, now: dt.datetime) -> None:
    inst.name = name
    inst.updated_at = now


def _schedule(inst: Instance, op: str, now: dt.datetime) -> None:
    """Hand the row to the lifecycle worker now; breaking any lease makes a worker that is
    still busy with the old op drop its (now stale) result."""
    inst.op = op
    inst.next_check_at = now
    inst.attempts = 0
    inst.lock_token = None
    inst.lock_expires_at = None


def terminate(s: Session, inst: Instance, now: dt.datetime) -> None:
    if inst.status != ACTIVE:
        raise BadRequest("Only an ACTIVE instance can be terminated")
    end(s, inst, now, "Terminated by user")


def end(s: Session, inst: Instance, now: dt.datetime, reason: str) -> None:
    """ACTIVE → ENDED: refund the unspent reserve, free the capacity, remove the workload."""
    _close(s, inst, now, ENDED, reason, f"Instance ended: {reason}")


def fail(s: Session, inst: Instance, now: dt.datetime, reason: str) -> None:
    """INITIALIZED → FAILED: everything reserved goes back; half-made workloads are removed."""
    _close(s, inst, now, FAILED, reason, f"Provisioning failed: {reason}")


def _close(
    s: Session, inst: Instance, now: dt.datetime, status: str, reason: str, message: str
) -> None:
    inst.status = status
    inst.status_reason = reason
    inst.ended_at = now
    inst.updated_at = now
    inst.pending_update = None
    inst.pending_credentials_enc = None
    ledger.refund_reserve(s, inst, now)
    catalog.release_capacity(s, inst.zone_id)
    allocations.release(s, inst.id)
    _schedule(inst, OP_DELETE, now)
    events.record(s, inst.id, now, message)


# --- driver specs ---------------------------------------------------------------------------


def workload_spec(rt, inst: Instance, pending: bool = False) -> WorkloadSpec:
    """What the driver needs; credentials are decrypted here and nowhere else."""
    supply = inst.resources["supply"]
    spec = WorkloadSpec(
        instance_id=inst.id,
        provider_id=inst.provider_id,
        workload=inst.workload,
        name=inst.name,
        gpu_count=supply["gpu_count"],
        gpu_model=inst.resources["gpu_model"]["model"],
        vcpu=supply["vcpu"]["count"],
        memory_gib=supply["memory"]["count"],
        storage_gib=supply["storage"]["count"],
        location=inst.location,
        ssh_key=inst.ssh_key,
        os_image=inst.os_image,
        offer_id=inst.offer_id,
    )
    if inst.workload != CONTAINER:
        return spec
    config, creds = inst.container or {}, inst.credentials_enc
    if pending and inst.pending_update:
        config, creds = inst.pending_update["container"], inst.pending_credentials_enc
        spec.name = inst.pending_update["name"]
        spec.ssh_key = inst.pending_update["ssh_key"]
    spec.generation = int(config.get("generation", 1))
    spec.image = config.get("image")
    spec.expose = [PortSpec(int(p["port"]), p["protocol"]) for p in config.get("expose", [])]
    spec.environment = [(e["name"], e["value"]) for e in config.get("environment", [])]
    spec.startup_command = config.get("startup_command")
    spec.credentials = rt.secrets.open(creds)
    return spec


def apply_pending_update(inst: Instance, now: dt.datetime) -> None:
    pending = inst.pending_update or {}
    inst.name = pending.get("name", inst.name)
    inst.container = pending.get("container", inst.container)
    inst.ssh_key = pending.get("ssh_key")
    inst.credentials_enc = inst.pending_credentials_enc
    inst.pending_update = None
    inst.pending_credentials_enc = None
    inst.updated_at = now
