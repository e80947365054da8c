"""Every endpoint once, as a `Call`: method, path, body and how to parse the answer.

The sync and the async client only differ in how they send a `Call`, so the knowledge of paths
and shapes lives here and nowhere else.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, TypeAdapter

from gpucloud.client import models as m

T = TypeVar("T")

VM_KINDS = {"vm": "vms", "baremetal": "baremetal"}


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    json: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    admin: bool = False  # sends X-ADMIN-KEY instead of X-API-KEY


def _model(cls: type[T]) -> Callable[[Any], T]:
    adapter = TypeAdapter(cls)
    return adapter.validate_python


def _none(_: Any) -> None:
    return None


def _strings(body: Any) -> list[str]:
    return [str(x) for x in body or []]


def _id(value: str) -> str:
    # Ids go into the path; quoting keeps a stray "/" or "?" from reaching another route.
    return quote(str(value), safe="")


def _vm_base(kind: str) -> str:
    if kind not in VM_KINDS:
        raise ValueError(f"kind must be one of {', '.join(VM_KINDS)}, not {kind!r}")
    return f"/gpu/instances/{VM_KINDS[kind]}"


def body(value: BaseModel | Mapping[str, Any]) -> Any:
    """A request body: models drop unset optional fields, mappings go as given."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="python", exclude_none=True)
    return dict(value)


# -- catalog -------------------------------------------------------------------------------------
def container_plans() -> Call[list[m.ContainerPlan]]:
    return Call("GET", "/gpu/plans/", _model(list[m.ContainerPlan]))


def grouped_plans(kind: str) -> Call[m.PlanGroups]:
    path = {"vm": "/gpu/plans/vms", "baremetal": "/gpu/plans/baremetal"}[kind]
    return Call("GET", path, _model(m.PlanGroups))


def default_images() -> Call[list[m.DefaultImage]]:
    return Call("GET", "/gpu/default-images/", _model(list[m.DefaultImage]))


# -- containers ----------------------------------------------------------------------------------
def deploy_container(request: m.ContainerDeploy | Mapping[str, Any]) -> Call[m.Deployed]:
    return Call("POST", "/gpu/instances/", _model(m.Deployed), json=body(request))


def containers() -> Call[list[m.ContainerInstance]]:
    return Call("GET", "/gpu/instances/", _model(list[m.ContainerInstance]))


def container(instance_id: str) -> Call[m.ContainerDetails]:
    return Call("GET", f"/gpu/instances/{_id(instance_id)}", _model(m.ContainerDetails))


def update_container(instance_id: str,
                     request: m.ContainerUpdate | Mapping[str, Any]) -> Call[None]:
    return Call("PUT", f"/gpu/instances/{_id(instance_id)}", _none, json=body(request))


def container_logs(instance_id: str, last: int | None = None) -> Call[list[str]]:
    params = {"last": last} if last is not None else {}
    return Call("GET", f"/gpu/instances/{_id(instance_id)}/logs", _strings, params=params)


def container_events(instance_id: str, last: int | None = None) -> Call[list[str]]:
    params = {"last": last} if last is not None else {}
    return Call("GET", f"/gpu/instances/{_id(instance_id)}/events", _strings, params=params)


def vm_events(instance_id: str, last: int | None = None) -> Call[list[str]]:
    params = {"last": last} if last is not None else {}
    return Call("GET", f"/gpu/instances/vms/{_id(instance_id)}/events", _strings, params=params)


def console(instance_id: str, last: int | None = None) -> Call[list[str]]:
    params = {"last": last} if last is not None else {}
    return Call("GET", f"/admin/instances/{_id(instance_id)}/console", _strings, params=params,
                admin=True)


def _dicts(body: Any) -> list[dict[str, Any]]:
    return [dict(x) for x in body or []]


def machines() -> Call[list[dict[str, Any]]]:
    return Call("GET", "/admin/machines", _dicts, admin=True)


def machine_action(machine_id: int, action: str) -> Call[dict[str, Any]]:
    """action: wipe | return | inventory."""
    return Call("POST", f"/admin/machines/{int(machine_id)}/{action}", dict, admin=True)


def terminate_container(instance_id: str) -> Call[None]:
    return Call("DELETE", f"/gpu/instances/{_id(instance_id)}", _none)


# -- VMs and bare metal --------------------------------------------------------------------------
def deploy_vm(request: m.VmDeploy | Mapping[str, Any], kind: str = "vm") -> Call[m.Deployed]:
    return Call("POST", _vm_base(kind), _model(m.Deployed), json=body(request))


def vms(kind: str = "vm") -> Call[list[m.VmInstance]]:
    return Call("GET", _vm_base(kind), _model(list[m.VmInstance]))


def vm(instance_id: str, kind: str = "vm") -> Call[m.VmDetails]:
    return Call("GET", f"{_vm_base(kind)}/{_id(instance_id)}", _model(m.VmDetails))


def rename_vm(instance_id: str, name: str, kind: str = "vm") -> Call[None]:
    return Call("PUT", f"{_vm_base(kind)}/{_id(instance_id)}", _none, json={"name": name})


def terminate_vm(instance_id: str, kind: str = "vm") -> Call[None]:
    return Call("DELETE", f"{_vm_base(kind)}/{_id(instance_id)}", _none)


# -- the caller's money --------------------------------------------------------------------------
def account() -> Call[m.Account]:
    return Call("GET", "/gpu/account", _model(m.Account))


def _transaction_page(raw: Any) -> m.TransactionPage:
    # The page may come as a bare list or wrapped with a cursor; accept both.
    if isinstance(raw, list):
        return m.TransactionPage(items=raw)
    items = raw.get("items", raw.get("data", raw.get("transactions", [])))
    cursor = raw.get("next_cursor", raw.get("cursor"))
    return m.TransactionPage(items=items, next_cursor=cursor)


def transactions(limit: int | None = None, cursor: str | None = None) -> Call[m.TransactionPage]:
    params: dict[str, Any] = {}
    if limit is not None:
        params["limit"] = limit
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", "/gpu/account/transactions", _transaction_page, params=params)


# -- operator ------------------------------------------------------------------------------------
def create_account(name: str, balance: Decimal | str | int | None = None) -> Call[m.AccountCreated]:
    payload: dict[str, Any] = {"name": name}
    if balance is not None:
        payload["balance"] = Decimal(str(balance))
    return Call("POST", "/admin/accounts", _model(m.AccountCreated), json=payload, admin=True)


def get_account(account_id: str) -> Call[m.Account]:
    return Call("GET", f"/admin/accounts/{_id(account_id)}", _model(m.Account), admin=True)


def deposit(account_id: str, amount: Decimal | str | int) -> Call[m.Account]:
    return Call("POST", f"/admin/accounts/{_id(account_id)}/deposits", _model(m.Account),
                json={"amount": Decimal(str(amount))}, admin=True)


def create_api_key(account_id: str,
                   expires_at: dt.datetime | None = None) -> Call[m.ApiKeyCreated]:
    payload = {"expires_at": expires_at} if expires_at is not None else {}
    return Call("POST", f"/admin/accounts/{_id(account_id)}/api-keys", _model(m.ApiKeyCreated),
                json=payload, admin=True)


def revoke_api_key(key_id: str) -> Call[None]:
    return Call("DELETE", f"/admin/api-keys/{_id(key_id)}", _none, admin=True)


def providers() -> Call[list[m.Provider]]:
    return Call("GET", "/admin/providers", _model(list[m.Provider]), admin=True)


def create_provider(name: str, driver: str,
                    config: Mapping[str, Any] | None = None) -> Call[m.Provider]:
    payload = {"name": name, "driver": driver, "config": dict(config or {})}
    return Call("POST", "/admin/providers", _model(m.Provider), json=payload, admin=True)


def update_provider(provider_id: str, **changes: Any) -> Call[m.Provider]:
    return Call("PATCH", f"/admin/providers/{_id(provider_id)}", _model(m.Provider),
                json=changes, admin=True)


def offers() -> Call[list[m.Offer]]:
    return Call("GET", "/admin/offers", _model(list[m.Offer]), admin=True)


def create_offer(request: Mapping[str, Any]) -> Call[m.Offer]:
    return Call("POST", "/admin/offers", _model(m.Offer), json=body(request), admin=True)


def update_offer(offer_id: str, **changes: Any) -> Call[m.Offer]:
    return Call("PATCH", f"/admin/offers/{_id(offer_id)}", _model(m.Offer),
                json={k: v for k, v in changes.items() if v is not None}, admin=True)


def import_catalog(document: Mapping[str, Any]) -> Call[m.CatalogSummary]:
    return Call("POST", "/admin/catalog", _model(m.CatalogSummary), json=dict(document),
                admin=True)


def audit() -> Call[m.Audit]:
    return Call("GET", "/admin/audit", _model(m.Audit), admin=True)


def clock() -> Call[m.Clock]:
    return Call("GET", "/admin/clock", _model(m.Clock), admin=True)


def move_clock(advance_seconds: float | None = None,
               now: dt.datetime | None = None) -> Call[m.Clock]:
    payload = {"advance_seconds": advance_seconds} if now is None else {"now": now}
    return Call("POST", "/admin/clock", _model(m.Clock), json=payload, admin=True)
