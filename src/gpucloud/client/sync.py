"""The blocking client. Every method is one endpoint (see `endpoints.py`), plus a few helpers
that need several calls: `locate`, `all_instances`, `wait`."""

from __future__ import annotations

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


class Client:
    """`Client(url, api_key=..., admin_key=...)`; use as a context manager or call `close()`."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None,
                 admin_key: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.admin_key = admin_key
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                  headers={"User-Agent": USER_AGENT})

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: ep.Call[T]) -> T:
        kwargs = request_kwargs(call, self.api_key, self.admin_key)
        try:
            response = self._http.request(call.method, call.path, **kwargs)
        except httpx.HTTPError as exc:
            raise transport_error(self.url, exc) from exc
        return finish(call, response)

    # -- catalog ---------------------------------------------------------------------------------
    def container_plans(self) -> list[m.ContainerPlan]:
        return self.send(ep.container_plans())

    def vm_plans(self) -> m.PlanGroups:
        return self.send(ep.grouped_plans("vm"))

    def baremetal_plans(self) -> m.PlanGroups:
        return self.send(ep.grouped_plans("baremetal"))

    def default_images(self) -> list[m.DefaultImage]:
        return self.send(ep.default_images())

    # -- containers ------------------------------------------------------------------------------
    def deploy_container(self, request: m.ContainerDeploy | Mapping[str, Any]) -> m.Deployed:
        return self.send(ep.deploy_container(request))

    def containers(self) -> list[m.ContainerInstance]:
        return self.send(ep.containers())

    def container(self, instance_id: str) -> m.ContainerDetails:
        return self.send(ep.container(instance_id))

    def update_container(self, instance_id: str,
                         request: m.ContainerUpdate | Mapping[str, Any]) -> None:
        self.send(ep.update_container(instance_id, request))

    def container_logs(self, instance_id: str, last: int | None = None) -> list[str]:
        return self.send(ep.container_logs(instance_id, last))

    def container_events(self, instance_id: str, last: int | None = None) -> list[str]:
        return self.send(ep.container_events(instance_id, last))

    def vm_events(self, instance_id: str, last: int | None = None) -> list[str]:
        """A VM's lifecycle events (an extension beyond the Fluence API)."""
        return self.send(ep.vm_events(instance_id, last))

    def machines(self) -> list[dict]:
        """Operator: bare-metal machines (free, rented, dirty, maintenance with the reason)."""
        return self.send(ep.machines())

    def wipe_machine(self, machine_id: int) -> dict:
        """Operator: wipe a machine in maintenance again."""
        return self.send(ep.machine_action(machine_id, "wipe"))

    def return_machine(self, machine_id: int) -> dict:
        """Operator: return a machine in maintenance to service."""
        return self.send(ep.machine_action(machine_id, "return"))

    def check_machine_inventory(self, machine_id: int) -> dict:
        """Operator: read a machine's inventory from its BMC and check it against its offers."""
        return self.send(ep.machine_action(machine_id, "inventory"))

    def console(self, instance_id: str, last: int | None = None) -> list[str]:
        """Operator: a VM's serial console log."""
        return self.send(ep.console(instance_id, last))

    def terminate_container(self, instance_id: str) -> None:
        self.send(ep.terminate_container(instance_id))

    # -- VMs and bare metal (kind: "vm" or "baremetal") ------------------------------------------
    def deploy_vm(self, request: m.VmDeploy | Mapping[str, Any], kind: str = "vm") -> m.Deployed:
        return self.send(ep.deploy_vm(request, kind))

    def vms(self, kind: str = "vm") -> list[m.VmInstance]:
        return self.send(ep.vms(kind))

    def vm(self, instance_id: str, kind: str = "vm") -> m.VmDetails:
        return self.send(ep.vm(instance_id, kind))

    def rename_vm(self, instance_id: str, name: str, kind: str = "vm") -> None:
        self.send(ep.rename_vm(instance_id, name, kind))

    def terminate_vm(self, instance_id: str, kind: str = "vm") -> None:
        self.send(ep.terminate_vm(instance_id, kind))

    # -- the caller's money ----------------------------------------------------------------------
    def account(self) -> m.Account:
        return self.send(ep.account())

    def transactions(self, limit: int | None = None,
                     cursor: str | None = None) -> m.TransactionPage:
        return self.send(ep.transactions(limit, cursor))

    # -- operator (admin key) --------------------------------------------------------------------
    def create_account(self, name: str,
                       balance: Decimal | str | int | None = None) -> m.AccountCreated:
        return self.send(ep.create_account(name, balance))

    def get_account(self, account_id: str) -> m.Account:
        return self.send(ep.get_account(account_id))

    def deposit(self, account_id: str, amount: Decimal | str | int) -> m.Account:
        return self.send(ep.deposit(account_id, amount))

    def create_api_key(self, account_id: str,
                       expires_at: dt.datetime | None = None) -> m.ApiKeyCreated:
        return self.send(ep.create_api_key(account_id, expires_at))

    def revoke_api_key(self, key_id: str) -> None:
        self.send(ep.revoke_api_key(key_id))

    def providers(self) -> list[m.Provider]:
        return self.send(ep.providers())

    def create_provider(self, name: str, driver: str,
                        config: Mapping[str, Any] | None = None) -> m.Provider:
        return self.send(ep.create_provider(name, driver, config))

    def set_provider_enabled(self, provider_id: str, enabled: bool) -> m.Provider:
        return self.send(ep.update_provider(provider_id, enabled=enabled))

    def offers(self) -> list[m.Offer]:
        return self.send(ep.offers())

    def create_offer(self, request: Mapping[str, Any]) -> m.Offer:
        return self.send(ep.create_offer(request))

    def update_offer(self, offer_id: str, *, enabled: bool | None = None,
                     capacity: int | None = None,
                     price_hour: Decimal | str | None = None) -> m.Offer:
        price = Decimal(str(price_hour)) if price_hour is not None else None
        return self.send(ep.update_offer(offer_id, enabled=enabled, capacity=capacity,
                                         price_hour=price))

    def import_catalog(self, document: Mapping[str, Any]) -> m.CatalogSummary:
        return self.send(ep.import_catalog(document))

    def audit(self) -> m.Audit:
        """The books checked: every balance and reserve re-derived from the ledger."""
        return self.send(ep.audit())

    def clock(self) -> m.Clock:
        return self.send(ep.clock())

    def advance_clock(self, seconds: float) -> m.Clock:
        return self.send(ep.move_clock(advance_seconds=seconds))

    def set_clock(self, now: dt.datetime) -> m.Clock:
        return self.send(ep.move_clock(now=now))

    # -- helpers ---------------------------------------------------------------------------------
    def get_instance(self, instance_id: str, kind: str) -> Instance:
        if kind == "container":
            return Instance("container", self.container(instance_id))
        return Instance(kind, self.vm(instance_id, kind))

    def locate(self, instance_id: str) -> Instance:
        """Find an instance by id whatever its type (an id is only reachable under its own
        type's path, so ask each in turn)."""
        last: NotFoundError | None = None
        for kind in INSTANCE_KINDS:
            try:
                return self.get_instance(instance_id, kind)
            except NotFoundError as exc:
                last = exc
        assert last is not None
        raise last

    def all_instances(self, kinds: tuple[str, ...] = INSTANCE_KINDS
                      ) -> list[tuple[str, m.ContainerInstance | m.VmInstance]]:
        """Instances of the given kinds, newest first."""
        items: list[tuple[str, m.ContainerInstance | m.VmInstance]] = []
        for kind in kinds:
            found = self.containers() if kind == "container" else self.vms(kind)
            items.extend((kind, i) for i in found)
        return sorted(items, key=lambda ki: ki[1].created_at, reverse=True)

    def wait(self, instance_id: str, kind: str, *, interval: float = 1.0,
             timeout: float | None = None, until: frozenset[str] = SETTLED,
             on_status: Callable[[Instance], None] | None = None) -> Instance:
        """Poll until the status is in `until` (ACTIVE, FAILED or ENDED by default)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            inst = self.get_instance(instance_id, kind)
            if on_status:
                on_status(inst)
            if status_of(inst.details) in until:
                return inst
            if deadline is not None and time.monotonic() >= deadline:
                raise GpuCloudError(f"timed out waiting for {instance_id}: still {inst.status}")
            time.sleep(interval)
