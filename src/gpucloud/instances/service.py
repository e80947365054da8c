"""Instance rules: deploy, update, rename. Status transitions (terminate, end, fail…) are in
transitions.py.

Functions take the caller's session and only flush; the route (or worker step) owns the
transaction, so a deploy that fails half-way (no capacity, no balance) leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Text,
    bindparam,
    cast,
    func,
    insert,
    literal_column,
    null,
    select,
    text,
    type_coerce,
    union_all,
)
from sqlalchemy.orm import Session

from gpucloud.billing import ledger
from gpucloud.catalog import service as catalog
from gpucloud.catalog.models import Provider
from gpucloud.db import NEW_WORK, after_commit, new_id, plausible_id
from gpucloud.drivers.base import PortSpec, WorkloadSpec
from gpucloud.errors import INSTANCE_NOT_FOUND, BadRequest, FieldError, NotFound
from gpucloud.instances import allocations, events
from gpucloud.instances.models import (
    ACTIVE,
    INITIALIZED,
    OP_CREATE,
    OP_UPDATE,
    Instance,
    InstanceEvent,
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


def _given(container: bool) -> list[str]:
    """The columns a PostgreSQL deploy binds; the zone's row gives the rest (its id, and a
    container's location)."""
    return [k for k in _COLUMNS if k != "zone_id" and not (container and k == "location")]


def _deploy_statement(container: bool, by_country: bool):
    """PostgreSQL: the zone take, the new row and its first lifecycle line in one statement,
    `SELECT id, country, in_use` of the zone taken (no row, and nothing written, when no zone
    had room). All three come after the debit, while the deploy holds its account's row, and
    each round trip there is time the account's other deploys wait (SQLite: no INSERT inside
    WITH, and one writer anyway). A container's location is its zone's country, so it and the
    line that names it are taken from the zone's row."""
    table = Instance.__table__
    zone = (text(catalog.take_zone_sql(by_country))
            .columns(id=BigInteger, country=Text, in_use=BigInteger).cte("zone"))
    given = _given(container)
    names = given + ["zone_id"] + (["location"] if container else [])
    values = [bindparam(f"p_{k}", type_=table.c[k].type) for k in given] + [zone.c.id] + (
        [zone.c.country] if container else [])
    new_row = (insert(table).from_select(names, select(*values))
               .returning(table.c.id, table.c.location).cte("new_instance"))
    message = (bindparam("event_prefix", type_=Text) + new_row.c.location + ")"
               if container else bindparam("event_message", type_=Text))
    first_line = insert(InstanceEvent.__table__).from_select(
        ["instance_id", "at", "message"],
        select(new_row.c.id, bindparam("event_at", type_=InstanceEvent.at.type), message),
    ).cte("first_line")
    return select(zone.c.id, zone.c.country, zone.c.in_use).add_cte(first_line)


# Built once per shape (statement construction cost more than the SQL; deploy is the hottest
# write). Only containers choose a country.
_DEPLOY_PG = {(container, by_country): _deploy_statement(container, by_country)
              for container, by_country in ((True, False), (True, True), (False, False))}


def _scheduled_prefix(provider_name: str) -> str:
    """A deploy's first lifecycle line up to its location (PostgreSQL adds a container's
    from the zone's row)."""
    return f"Instance scheduled on provider {provider_name} ("


def _scheduled(provider_name: str, location: str | None) -> str:
    return f"{_scheduled_prefix(provider_name)}{location})"


def _insert_pg(conn, inst: Instance, provider, country: str | None,
               now: dt.datetime) -> catalog.TakenZone | None:
    container = inst.workload == CONTAINER
    params: dict[str, Any] = {f"p_{k}": getattr(inst, k) for k in _given(container)}
    params.update(offer_id=inst.offer_id, event_at=now)
    if country is not None:
        params["country"] = country
    if container:
        params["event_prefix"] = _scheduled_prefix(provider.name)
    else:
        params["event_message"] = _scheduled(provider.name, inst.location)
    row = conn.execute(_DEPLOY_PG[container, country is not None], params).one_or_none()
    return catalog.TakenZone(*row) if row is not None else None


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
    conn = s.connection()
    on_pg = conn.dialect.name == "postgresql"
    zone = catalog.take_zone(s, inst.offer_id, country, take=(
        (lambda: _insert_pg(conn, inst, provider, country, now)) if on_pg else None))
    inst.zone_id = zone.id
    if inst.workload == CONTAINER:
        inst.location = zone.country
    if not on_pg:  # (PostgreSQL: the row and its first line came with the zone)
        # Deploy is the hottest write: a Core INSERT instead of an ORM unit of work. The
        # ledger entry carries the instance id; it has no foreign key, so the order is free.
        conn.execute(_INSERT, {k: getattr(inst, k) for k in _COLUMNS})
        events.record(s, inst.id, now, _scheduled(provider.name, inst.location))
    after_commit(s, NEW_WORK)
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
    _finish_deploy(s, inst, provider, None, now)
    # Bare metal: the machine is rented here, in the deploy's transaction, so a deploy is
    # accepted only when a clean free machine is there for it (else the contract's 400 and
    # nothing written).
    machine = allocations.rent_at_deploy(s, inst.provider_id, inst.offer_id, inst.id, now)
    if machine is not None:
        events.record(s, inst.id, now, f"Machine {machine} rented")
    return inst


# --- lookups --------------------------------------------------------------------------------


def get_owned(
    s: Session,
    account_id: str,
    instance_id: str,
    workloads: tuple[str, ...],
    for_update: bool = False,
) -> Instance:
    """Another account's instance, or one of another type, is exactly as unknown as a typo."""
    if not plausible_id(instance_id):
        raise NotFound(INSTANCE_NOT_FOUND)
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


# What the public shapes show (instances/views.py): lists and details select these columns
# only. The full row carries three more JSON documents (driver state, pending update,
# credentials) and five more timestamps, and decoding those was most of the cost of a list.
_LIST_COLUMNS = [Instance.__table__.c[name] for name in (
    "id", "name", "status", "workload", "resources", "domain", "location", "created_at",
    "updated_at",
)]
_DETAIL_COLUMNS = _LIST_COLUMNS + [Instance.__table__.c[name] for name in (
    "container_started", "container", "price_hour", "spent", "reserve", "billed_until",
    "network", "os_image", "ssh_key",
)]


# The same list with the JSON column as the text the database holds, for RenderedRows: every
# column a list item shows, hashable, unconverted (views.list_body converts only rows it has
# not rendered before).
LIST_RAW = (
    select(*[cast(c, Text).label(c.key) if c.key == "resources" else c for c in _LIST_COLUMNS])
    .where(Instance.account_id == bindparam("account_id"),
           Instance.workload == bindparam("workload"))
    .order_by(Instance.created_at.desc(), Instance.id.desc())
)


# Details the same way (views.details_body): every JSON column as the text the database holds,
# so the row is hashable and its rendering can be kept. Built once: constructing a statement
# and its cache key costs more than running it.
_JSON_COLUMNS = ("resources", "container", "network")
DETAILS_RAW = select(
    *[cast(c, Text).label(c.key) if c.key in _JSON_COLUMNS else c for c in _DETAIL_COLUMNS]
).where(
    Instance.id == bindparam("instance_id"),
    Instance.account_id == bindparam("account_id"),
    Instance.workload == bindparam("workload"),
)


async def read_details(rt, account_id: str, instance_id: str, workload: str, render):
    """`render(row)` of the instance for GET …/{id}, its row as the database returns
    DETAILS_RAW's columns (read with `rt.read`). Other accounts' and other types' ids are
    exactly as unknown as a typo."""
    if not plausible_id(instance_id):
        raise NotFound(INSTANCE_NOT_FOUND)

    def found(rows):
        if not rows:
            raise NotFound(INSTANCE_NOT_FOUND)
        return render(rows[0])

    return await rt.read(DETAILS_RAW, {"instance_id": instance_id, "account_id": account_id,
                                       "workload": workload}, then=found)


_DRIVER_TARGET = (
    select(Instance.id, Instance.driver_state, Provider.id.label("provider_id"),
           Provider.driver, Provider.config)
    .join(Provider, Provider.id == Instance.provider_id)
    .where(Instance.id == bindparam("instance_id"),
           Instance.account_id == bindparam("account_id"),
           Instance.workload == bindparam("workload"))
)


# The same row and the instance's own lifecycle lines in one statement (one round trip for a
# polled events feed): the instance's row first, its `at`/`message` NULL, then one row per
# line with the instance's columns NULL. Typed NULLs keep each column's result processing.
_TARGET_AND_EVENTS = union_all(
    _DRIVER_TARGET.add_columns(type_coerce(null(), InstanceEvent.at.type).label("at"),
                               type_coerce(null(), InstanceEvent.message.type).label("message"),
                               literal_column("0", BigInteger).label("seq")),
    select(*[type_coerce(null(), c.type) for c in _DRIVER_TARGET.selected_columns],
           InstanceEvent.at, InstanceEvent.message, InstanceEvent.id)
    .where(InstanceEvent.instance_id == bindparam("instance_id")),
).order_by(literal_column("seq"))


def feed_target_query(account_id: str, instance_id: str, workload: str, with_events: bool
                      ) -> tuple[Any, dict]:
    """The statement and parameters of a feed's own rows (`feed_target_from` reads its rows);
    `NotFound` for an id no instance can have."""
    if not plausible_id(instance_id):
        raise NotFound(INSTANCE_NOT_FOUND)
    return (_TARGET_AND_EVENTS if with_events else _DRIVER_TARGET), \
        {"instance_id": instance_id, "account_id": account_id, "workload": workload}


def feed_target_from(rows: list, with_events: bool) -> tuple[Any, list[tuple[dt.datetime, str]]]:
    """`feed_target_query`'s rows as the instance's target row and, with events, its own
    lifecycle lines, oldest first; `NotFound` when there is no such instance."""
    if not rows or (with_events and rows[0].seq != 0):
        raise NotFound(INSTANCE_NOT_FOUND)
    return rows[0], [(r.at, r.message) for r in rows[1:]] if with_events else []


def driver_target_and_events(conn, account_id: str, instance_id: str, workload: str
                             ) -> tuple[Any, list[tuple[dt.datetime, str]]]:
    """`driver_target`'s row (its first five columns) and the instance's own lifecycle lines,
    oldest first, in one read."""
    stmt, params = feed_target_query(account_id, instance_id, workload, True)
    return feed_target_from(conn.execute(stmt, params).all(), True)


def driver_target(conn, account_id: str, instance_id: str, workload: str) -> Any:
    """What a logs/events read needs to ask the provider: the instance's id and driver state,
    its provider's id, driver and config (one statement)."""
    stmt, params = feed_target_query(account_id, instance_id, workload, False)
    return feed_target_from(conn.execute(stmt, params).all(), False)[0]


_BY_STATE = select(Instance.status, Instance.workload, func.count()).group_by(
    Instance.status, Instance.workload)
_OLDEST_DUE = select(func.min(Instance.next_check_at)).where(
    Instance.op.is_not(None), Instance.next_check_at <= bindparam("now"))


def count_by_state(conn) -> dict[tuple[str, str], int]:
    """(status, workload) → instances, for the operator's metrics."""
    return {(status, workload): n for status, workload, n in conn.execute(_BY_STATE)}


def queue_lag_seconds(conn, now: dt.datetime) -> float:
    """How long the oldest due background step has been waiting (server clock); 0 if none."""
    oldest = conn.execute(_OLDEST_DUE, {"now": now}).scalar()
    return max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0


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
    after_commit(s, NEW_WORK)
    inst.updated_at = now
    events.record(s, inst.id, now, f"Update requested: image {settings.image}")


def rename(inst: Instance, name: str, now: dt.datetime) -> None:
    # History is history: an ended or failed instance keeps the name it had.
    if inst.status not in (INITIALIZED, ACTIVE):
        raise BadRequest(f"Instance is {inst.status}; only an INITIALIZED or ACTIVE instance "
                         "can be renamed")
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


def status_counts(s: Session, account_id: str | None = None) -> dict[tuple[str, str], int]:
    """(workload, status) → how many instances; one account's, or everyone's (operators)."""
    q = select(Instance.workload, Instance.status, func.count()).group_by(Instance.workload,
                                                                          Instance.status)
    if account_id is not None:
        q = q.where(Instance.account_id == account_id)
    return {(w, st): int(n) for w, st, n in s.execute(q)}


_SUMMARY = (Instance.id, Instance.name, Instance.workload, Instance.status, Instance.resources,
            Instance.location, Instance.domain, Instance.created_at)


def list_summaries(s: Session, account_id: str) -> list[Any]:
    """All of an account's instances, every type, newest first, with only what a list shows
    (the console's instances page: one query instead of three full-row ones)."""
    return s.execute(
        select(*_SUMMARY).where(Instance.account_id == account_id)
        .order_by(Instance.created_at.desc(), Instance.id.desc())
    ).all()
