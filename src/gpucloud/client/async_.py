"""The asyncio client: method for method the same as `Client` in sync.py (keep them in step).
Each method is one endpoint from `endpoints.py`; `locate`, `all_instances`, `wait` combine calls."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, TypeVar

import httpx

from gpucloud.client import endpoints as ep
from gpucloud.client import models as m
from gpucloud.client.errors import GpuCloudError, NotFoundError
from gpucloud.client.instances import INSTANCE_KINDS, SETTLED, Instance, status_of
from gpucloud.client.wire import DEFAULT_URL, USER_AGENT, finish, request_kwargs, transport_error

T = TypeVar("T")


class AsyncClient:
    """`AsyncClient(url, api_key=...)`; `async with` it or `await close()`."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None,
                 admin_key: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.admin_key = admin_key
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, transport=transport,
                                  headers={"User-Agent": USER_AGENT})

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def send(self, call: ep.Call[T]) -> T:
        kwargs = request_kwargs(call, self.api_key, self.admin_key)
        try:
            response = await self._http.request(call.method, call.path, **kwargs)
        except httpx.HTTPError as exc:
            raise transport_error(self.url, exc) from exc
        return finish(call, response)

    # -- catalog ---------------------------------------------------------------------------------
    async def container_plans(self) -> list[m.ContainerPlan]:
        return await self.send(ep.container_plans())

    async def vm_plans(self) -> m.PlanGroups:
        return await self.send(ep.grouped_plans("vm"))

    async def baremetal_plans(self) -> m.PlanGroups:
        return await self.send(ep.grouped_plans("baremetal"))

    async def default_images(self) -> list[m.DefaultImage]:
        return await self.send(ep.default_images())

    # -- containers ------------------------------------------------------------------------------
    async def deploy_container(self, request: m.ContainerDeploy | Mapping[str, Any]
                               ) -> m.Deployed:
        return await self.send(ep.deploy_container(request))

    async def containers(self) -> list[m.ContainerInstance]:
        return await self.send(ep.containers())

    async def container(self, instance_id: str) -> m.ContainerDetails:
        return await self.send(ep.container(instance_id))

    async def update_container(self, instance_id: str,
                         request: m.ContainerUpdate | Mapping[str, Any]) -> None:
        await self.send(ep.update_container(instance_id, request))

    async def container_logs(self, instance_id: str, last: int | None = None) -> list[str]:
        return await self.send(ep.container_logs(instance_id, last))

    async def container_events(self, instance_id: str, last: int | None = None) -> list[str]:
        return await self.send(ep.container_events(instance_id, last))

    async def vm_events(self, instance_id: str, last: int | None = None) -> list[str]:
        """A VM's lifecycle events (an extension beyond the Fluence API)."""
        return await self.send(ep.vm_events(instance_id, last))

    async def machines(self) -> list[dict]:
        """Operator: bare-metal machines (free, rented, dirty, maintenance with the reason)."""
        return await self.send(ep.machines())

    async def wipe_machine(self, machine_id: int) -> dict:
        """Operator: wipe a machine in maintenance again."""
        return await self.send(ep.machine_action(machine_id, "wipe"))

    async def return_machine(self, machine_id: int) -> dict:
        """Operator: return a machine in maintenance to service."""
        return await self.send(ep.machine_action(machine_id, "return"))

    async def check_machine_inventory(self, machine_id: int) -> dict:
        """Operator: read a machine's inventory from its BMC and check it against its offers."""
        return await self.send(ep.machine_action(machine_id, "inventory"))

    async def console(self, instance_id: str, last: int | None = None) -> list[str]:
        """Operator: a VM's serial console log."""
        return await self.send(ep.console(instance_id, last))

    async def terminate_container(self, instance_id: str) -> None:
        await self.send(ep.terminate_container(instance_id))

    # -- VMs and bare metal (kind: "vm" or "baremetal") ------------------------------------------
    async def deploy_vm(self, request: m.VmDeploy | Mapping[str, Any],
                        kind: str = "vm") -> m.Deployed:
        return await self.send(ep.deploy_vm(request, kind))

    async def vms(self, kind: str = "vm") -> list[m.VmInstance]:
        return await self.send(ep.vms(kind))

    async def vm(self, instance_id: str, kind: str = "vm") -> m.VmDetails:
        return await self.send(ep.vm(instance_id, kind))

    async def rename_vm(self, instance_id: str, name: str, kind: str = "vm") -> None:
        await self.send(ep.rename_vm(instance_id, name, kind))

    async def terminate_vm(self, instance_id: str, kind: str = "vm") -> None:
        await self.send(ep.terminate_vm(instance_id, kind))

    # -- the caller's money ----------------------------------------------------------------------
    async def account(self) -> m.Account:
        return await self.send(ep.account())

    async def transactions(self, limit: int | None = None,
                     cursor: str | None = None) -> m.TransactionPage:
        return await self.send(ep.transactions(limit, cursor))

    # -- operator (admin key) --------------------------------------------------------------------
    async def create_account(self, name: str,
                       balance: Decimal | str | int | None = None) -> m.AccountCreated:
        return await self.send(ep.create_account(name, balance))

    async def get_account(self, account_id: str) -> m.Account:
        return await self.send(ep.get_account(account_id))

    async def deposit(self, account_id: str, amount: Decimal | str | int) -> m.Account:
        return await self.send(ep.deposit(account_id, amount))

    async def create_api_key(self, account_id: str,
                       expires_at: dt.datetime | None = None) -> m.ApiKeyCreated:
        return await self.send(ep.create_api_key(account_id, expires_at))

    async def revoke_api_key(self, key_id: str) -> None:
        await self.send(ep.revoke_api_key(key_id))

    async def providers(self) -> list[m.Provider]:
        return await self.send(ep.providers())

    async def create_provider(self, name: str, driver: str,
                        config: Mapping[str, Any] | None = None) -> m.Provider:
        return await self.send(ep.create_provider(name, driver, config))

    async def set_provider_enabled(self, provider_id: str, enabled: bool) -> m.Provider:
        return await self.send(ep.update_provider(provider_id, enabled=enabled))

    async def offers(self) -> list[m.Offer]:
        return await self.send(ep.offers())

    async def create_offer(self, request: Mapping[str, Any]) -> m.Offer:
        return await self.send(ep.create_offer(request))

    async def update_offer(self, offer_id: str, *, enabled: bool | None = None,
                     capacity: int | None = None,
                     price_hour: Decimal | str | None = None) -> m.Offer:
        price = Decimal(str(price_hour)) if price_hour is not None else None
        return await self.send(ep.update_offer(offer_id, enabled=enabled, capacity=capacity,
                                         price_hour=price))

    async def import_catalog(self, document: Mapping[str, Any]) -> m.CatalogSummary:
        return await self.send(ep.import_catalog(document))

    async def audit(self) -> m.Audit:
        """The books checked: every balance and reserve re-derived from the ledger."""
        return await self.send(ep.audit())

    async def clock(self) -> m.Clock:
        return await self.send(ep.clock())

    async def advance_clock(self, seconds: float) -> m.Clock:
        return await self.send(ep.move_clock(advance_seconds=seconds))

    async def set_clock(self, now: dt.datetime) -> m.Clock:
        return await self.send(ep.move_clock(now=now))

    # -- helpers ---------------------------------------------------------------------------------
    async def get_instance(self, instance_id: str, kind: str) -> Instance:
        if kind == "container":
            return Instance("container", await self.container(instance_id))
        return Instance(kind, await self.vm(instance_id, kind))

    async def locate(self, instance_id: str) -> Instance:
        """Find an instance by id whatever its type (an id is only reachable under its own
        type's path, so ask each in turn)."""
        last: NotFoundError | None = None
        for kind in INSTANCE_KINDS:
            try:
                return await self.get_instance(instance_id, kind)
            except NotFoundError as exc:
                last = exc
        assert last is not None
        raise last

    async def all_instances(self, kinds: tuple[str, ...] = INSTANCE_KINDS
                            ) -> list[tuple[str, m.ContainerInstance | m.VmInstance]]:
        """Instances of the given kinds, newest first."""
        items: list[tuple[str, m.ContainerInstance | m.VmInstance]] = []
        for kind in kinds:
            found = await self.containers() if kind == "container" else await self.vms(kind)
            items.extend((kind, i) for i in found)
        return sorted(items, key=lambda ki: ki[1].created_at, reverse=True)

    async def wait(self, instance_id: str, kind: str, *, interval: float = 1.0,
                   timeout: float | None = None, until: frozenset[str] = SETTLED,
                   on_status: Callable[[Instance], None] | None = None) -> Instance:
        """Poll until the status is in `until` (ACTIVE, FAILED or ENDED by default)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            inst = await self.get_instance(instance_id, kind)
            if on_status:
                on_status(inst)
            if status_of(inst.details) in until:
                return inst
            if deadline is not None and time.monotonic() >= deadline:
                raise GpuCloudError(f"timed out waiting for {instance_id}: still {inst.status}")
            await asyncio.sleep(interval)
