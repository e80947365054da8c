"""Pydantic models of the public and admin API, as the client sees them.

Responses allow extra fields, so a newer server that adds fields does not break an older client.
Money is `Decimal`: the client parses JSON numbers as Decimal and never goes through a float.
Request models carry no rules of their own: the server validates, and its 422 (with the field
path) is what the user should see.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


class Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class Request(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- catalog -------------------------------------------------------------------------------------
class Quantity(Response):
    count: int
    units: str | None = None


class Supply(Response):
    vcpu: Quantity
    memory: Quantity
    storage: Quantity
    gpu_count: int


class GpuModel(Response):
    vendor: str
    model: str
    vram: str
    interface: str


class Pricing(Response):
    hour: Decimal
    upfront_hours: int = 3
    currency: str = "USDC"


class Plan(Response):
    id: str
    name: str
    supply: Supply
    gpu_model: GpuModel
    pricing: Pricing


class PlanAttributes(Response):
    location: list[str] = Field(default_factory=list)


class ContainerPlan(Response):
    """An element of `GET /gpu/plans/`: for containers an offer is a plan."""

    plan: Plan
    attributes: PlanAttributes = Field(default_factory=PlanAttributes)


class VmOption(Response):
    id: str
    location: str
    provider: str
    vcpu: Quantity
    memory: Quantity
    storage: Quantity
    deployment_type: str
    pricing: Pricing
    nvlink: bool = False
    os_options: list[str] = Field(default_factory=list)


class Availability(Response):
    gpu_count: int
    minimum_price: Decimal
    options_available_total: int = 0
    providers_available_total: int = 0
    data_center_available_total: int = 0
    locations: list[str] = Field(default_factory=list)
    providers: list[str] = Field(default_factory=list)
    options: list[VmOption] = Field(default_factory=list)


class PlanGroup(Response):
    gpu_model: GpuModel
    minimum_price: Decimal
    availability_by_number: list[Availability] = Field(default_factory=list)


class PlanGroups(Response):
    """`GET /gpu/plans/vms` and `/gpu/plans/baremetal`."""

    data: list[PlanGroup] = Field(default_factory=list)


def _port_text(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# Ports are strings on the wire, as the Fluence docs type them; an int given by the caller (or
# sent by an older server) becomes one, so `port == "22"` always holds for port 22.
PortText = Annotated[str, BeforeValidator(_port_text)]


class Port(Response):
    port: PortText
    protocol: str = "tcp"


class EnvVar(Response):
    name: str
    value: str


class DefaultImage(Response):
    slug: str
    name: str
    description: str | None = None
    image: str
    expose: list[Port] = Field(default_factory=list)
    environment: list[EnvVar] = Field(default_factory=list)
    startup_command: str | None = None
    requires_ssh: bool | None = None


# -- requests ------------------------------------------------------------------------------------
class Credentials(Request):
    host: str
    username: str
    password: str


class ContainerSettings(Request):
    image: str
    expose: list[Port] | None = None
    environment: list[EnvVar] | None = None
    startup_command: str | None = None
    credentials: Credentials | None = None


class Constraints(Request):
    location: str | None = None


class ContainerDeploy(Request):
    plan_id: str
    name: str
    container_settings: ContainerSettings
    constraints: Constraints | None = None
    ssh_key: str | None = None


class ContainerUpdate(Request):
    name: str
    container_settings: ContainerSettings
    ssh_key: str | None = None


class VmDeploy(Request):
    plan_id: str
    name: str
    ssh_key: str
    os_image: str


# -- instances -----------------------------------------------------------------------------------
InstanceKind = Literal["container", "vm", "baremetal"]


class Deployed(Response):
    instance_id: str


class Resources(Response):
    supply: Supply
    gpu_model: GpuModel


class Billing(Response):
    hourly_usage: Decimal = Decimal(0)
    total_spendings: Decimal = Decimal(0)
    reserved_amount: Decimal = Decimal(0)
    next_billing_period: dt.datetime | None = None


class ForwardedPort(Response):
    port: PortText
    external_port: PortText | None = None
    protocol: str = "tcp"


class Network(Response):
    domain: str | None = None
    forwarded_ports: list[ForwardedPort] = Field(default_factory=list)
    uri: str | None = None


class ContainerInfo(Response):
    image: str | None = None
    expose: list[Port] = Field(default_factory=list)
    environment: list[EnvVar] = Field(default_factory=list)
    startup_command: str | None = None


class ContainerInstance(Response):
    id: str
    name: str
    instance_status: str
    resources: Resources | None = None
    domain: str | None = None
    location: str | None = None
    created_at: dt.datetime
    updated_at: dt.datetime | None = None

    @property
    def status(self) -> str:
        return self.instance_status


class ContainerDetails(ContainerInstance):
    container_status: str | None = None
    container_info: ContainerInfo | None = None
    billing: Billing | None = None
    network: Network | None = None


class VmInstance(Response):
    id: str
    name: str
    status: str
    resources: Resources | None = None
    domain: str | None = None
    location: str | None = None
    created_at: dt.datetime
    updated_at: dt.datetime | None = None


class VmDetails(VmInstance):
    availability: str | None = None
    os_image: str | None = None
    ssh_connection: str | None = None
    billing: Billing | None = None
    network: Network | None = None
    ssh_key: str | None = None


# -- money ---------------------------------------------------------------------------------------
class Account(Response):
    id: str
    name: str
    balance: Decimal
    reserved: Decimal = Decimal(0)
    spent: Decimal = Decimal(0)


class AccountCreated(Response):
    id: str
    name: str
    balance: Decimal
    api_key: str


class ApiKeyCreated(Response):
    id: str
    api_key: str
    expires_at: dt.datetime | None = None


class Transaction(Response):
    id: str | int
    at: dt.datetime
    kind: str
    amount: Decimal
    instance_id: str | None = None
    balance_after: Decimal | None = None


class TransactionPage(Response):
    items: list[Transaction] = Field(default_factory=list)
    next_cursor: str | None = None


# -- operator ------------------------------------------------------------------------------------
class Provider(Response):
    id: str
    name: str
    driver: str
    enabled: bool = True
    config: dict[str, Any] = Field(default_factory=dict)
    offers: int | None = None
    capacity: int | None = None
    in_use: int | None = None


class OfferGpu(Response):
    vendor: str | None = None
    model: str
    vram: str | None = None
    interface: str | None = None


class Offer(Response):
    id: str
    name: str | None = None
    provider_id: str | None = None
    provider: str | None = None
    workload: str | None = None
    gpu: OfferGpu | None = None
    gpu_count: int | None = None
    vcpu: int | None = None
    memory_gib: int | None = None
    storage_gib: int | None = None
    price_hour: Decimal | None = None
    location: str | None = None
    countries: list[str] = Field(default_factory=list)
    os_options: list[str] = Field(default_factory=list)
    enabled: bool = True
    capacity: int | None = None
    in_use: int | None = None


class CatalogSummary(Response):
    """What `POST /admin/catalog` did; the fields are the server's (counts per kind)."""


class Clock(Response):
    now: dt.datetime


class AuditCheck(Response):
    name: str
    description: str = ""
    ok: bool
    failures: int
    examples: list[str] = []


class Audit(Response):
    """GET /admin/audit: the books re-derived from the ledger."""

    ok: bool
    deposits: Decimal
    balances: Decimal
    reserves: Decimal
    charges: Decimal
    entries: int
    checks: list[AuditCheck]
