"""Request and response shapes of the catalog: admin providers/offers, public plans, images.

Public response models exist for the OpenAPI document only; the routes render bytes themselves
(see catalog/routes.py) so the hot path never runs pydantic serialization.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints, field_validator

from gpucloud.common import MoneyOut, PositiveMoneyIn, RequestModel, StrictCount

Country = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$"),
                    Field(examples=["US"], description="ISO 3166-1 alpha-2, uppercase")]
DataCenter = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}[a-z0-9]$"),
                       Field(examples=["us-central-3"], description="Data-center id")]
Workload = Literal["container", "vm", "baremetal"]
ProviderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"),
                         Field(examples=["massed-compute"])]
# Lowercase identifiers go straight into plan names (`h100-80gi-sxm-…`), so keep them tame.
Ident = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1,
                                         max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
OsOption = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128,
                                            pattern=r"^[^\x00-\x1f\x7f]+$")]


# --- admin: providers -------------------------------------------------------------------------

class ProviderCreate(RequestModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "massed-compute", "driver": "simulated", "config": {"provision_seconds": 5}}]})
    name: ProviderName
    driver: str = Field(min_length=1, max_length=32, examples=["simulated"])
    config: dict[str, Any] = Field(default_factory=dict, examples=[{"provision_seconds": 5}])
    enabled: StrictBool = True


class ProviderPatch(RequestModel):
    model_config = ConfigDict(extra="forbid")
    enabled: StrictBool = Field(examples=[False])


class ProviderOut(BaseModel):
    id: str
    name: str
    driver: str
    config: dict[str, Any] = Field(description="Driver config with secrets removed")
    warnings: list[str] = Field(
        default_factory=list, description="What the driver wants the operator to know about "
        "this config (a libvirt host without GPUs to pass through, …)")
    enabled: bool
    created_at: dt.datetime
    offers: int = Field(0, description="Number of offers (enabled or not)")
    capacity: int = Field(0, description="Sum of capacity over the provider's offer zones")
    in_use: int = Field(0, description="Units of that capacity held by live instances")


# --- admin: offers ----------------------------------------------------------------------------

class GpuIn(RequestModel):
    model_config = ConfigDict(extra="forbid")
    vendor: Ident = Field(examples=["nvidia"])
    model: Ident = Field(examples=["h100"])
    vram: Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,4}Gi$")] = Field(
        examples=["80Gi"], description="Memory per GPU, `<n>Gi`")
    interface: Annotated[str, StringConstraints(strip_whitespace=True, to_upper=True,
                                                min_length=1, max_length=16,
                                                pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")] = Field(
        examples=["SXM"], description="`SXM`, `PCIE`, … in any case; stored upper case, shown "
                                      "upper case in container plans and lower case in VM and "
                                      "bare-metal plans and instances")


class OfferFields(RequestModel):
    """What an offer is, shared by POST /admin/offers and the YAML catalog import."""

    model_config = ConfigDict(extra="forbid")
    workload: Workload = Field(examples=["container"])
    gpu: GpuIn
    gpu_count: StrictCount = Field(ge=1, le=64, examples=[1])
    vcpu: StrictCount = Field(ge=1, le=4096, examples=[16])
    memory_gib: StrictCount = Field(ge=1, le=65536, examples=[128])
    storage_gib: StrictCount = Field(ge=1, le=10_000_000, examples=[200])
    price_hour: PositiveMoneyIn = Field(description="USDC per hour, ≤ 6 decimals", examples=[2.96])
    location: DataCenter | None = Field(
        None, description="Data-center id; required for vm/baremetal, optional for containers")
    country: Country | None = None
    countries: list[Country] | None = Field(
        None, min_length=1, max_length=64, description="Containers only: several countries",
        examples=[["US", "DE"]])
    capacity: StrictCount = Field(ge=0, le=1_000_000_000, examples=[8],
                          description="Instances that may run at once, per country")
    nvlink: StrictBool = False
    os_options: list[OsOption] | None = Field(
        None, max_length=64, examples=[["Ubuntu Server 22.04", "Ubuntu Server 24.04"]],
        description="vm/baremetal only: OS images the user may pick")
    enabled: StrictBool = True

    @field_validator("countries", "os_options")
    @classmethod
    def _unique(cls, value: list[str] | None):
        if value is not None and len(set(value)) != len(value):
            raise ValueError("Entries must be unique")
        return value


class OfferCreate(OfferFields):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "provider_id": "6f1c8a8e-2b7e-4a55-9a53-0d8f3b8f2a11", "workload": "vm",
        "gpu": {"vendor": "nvidia", "model": "a100", "vram": "80Gi", "interface": "pcie"},
        "gpu_count": 1, "vcpu": 14, "memory_gib": 93, "storage_gib": 582, "price_hour": 1.07,
        "location": "us-central-3", "country": "US", "capacity": 4,
        "os_options": ["Ubuntu Server 22.04"]}]})
    provider_id: str = Field(min_length=1, max_length=64)


class OfferPatch(RequestModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"capacity": 0}, {"price_hour": 2.49, "enabled": True}]})
    enabled: StrictBool | None = None
    capacity: StrictCount | None = Field(None, ge=0, le=1_000_000_000,
                                 description="New capacity of every zone of the offer")
    price_hour: PositiveMoneyIn | None = Field(
        None, description="Applies to new deploys; running instances keep their price")


class ZoneOut(BaseModel):
    id: int
    country: str
    capacity: int
    in_use: int


class GpuOut(BaseModel):
    vendor: str = Field(examples=["nvidia"])
    model: str = Field(examples=["h200"])
    vram: str = Field(examples=["141Gi"])
    interface: str = Field(examples=["SXM"])


class OfferOut(BaseModel):
    id: str
    name: str = Field(description="The derived plan name")
    provider_id: str
    provider: str
    workload: Workload
    gpu: GpuOut
    gpu_count: int
    vcpu: int
    memory_gib: int
    storage_gib: int
    price_hour: MoneyOut
    location: str | None
    countries: list[str]
    nvlink: bool
    os_options: list[str]
    enabled: bool
    capacity: int = Field(description="Sum over zones")
    in_use: int = Field(description="Sum over zones")
    zones: list[ZoneOut]
    created_at: dt.datetime


# --- public: plans ----------------------------------------------------------------------------

class Count(BaseModel):
    count: int = Field(examples=[16])


class SizeGi(BaseModel):
    count: int = Field(examples=[128])
    units: Literal["Gi"] = "Gi"


class Supply(BaseModel):
    vcpu: Count
    memory: SizeGi
    storage: SizeGi
    gpu_count: int = Field(examples=[1])


class Pricing(BaseModel):
    hour: MoneyOut
    upfront_hours: int = Field(3, examples=[3])
    currency: Literal["USDC"] = "USDC"


class PlanBody(BaseModel):
    id: str
    name: str = Field(examples=["h200-141gi-sxm-1gpu-16cpu-128gi-120gi"])
    supply: Supply
    gpu_model: GpuOut
    pricing: Pricing


class PlanAttributes(BaseModel):
    location: list[str] = Field(examples=[["US", "DE"]],
                                description="Countries with free capacity now")


class ContainerPlan(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "plan": {"id": "0d6f3c1e-8f0b-4d3f-9a3e-3b1c2f4e5a6b",
                 "name": "h200-141gi-sxm-1gpu-16cpu-128gi-120gi",
                 "supply": {"vcpu": {"count": 16}, "memory": {"count": 128, "units": "Gi"},
                            "storage": {"count": 120, "units": "Gi"}, "gpu_count": 1},
                 "gpu_model": {"vendor": "nvidia", "model": "h200", "vram": "141Gi",
                               "interface": "SXM"},
                 "pricing": {"hour": 2.96, "upfront_hours": 3, "currency": "USDC"}},
        "attributes": {"location": ["US"]}}]})
    plan: PlanBody
    attributes: PlanAttributes


class VmOption(BaseModel):
    id: str
    location: str = Field(examples=["us-central-3"])
    provider: str = Field(examples=["massed-compute"])
    vcpu: Count
    memory: SizeGi
    storage: SizeGi
    deployment_type: Literal["VM", "BAREMETAL"]
    pricing: Pricing
    nvlink: bool
    os_options: list[str] = Field(examples=[["Ubuntu Server 22.04"]])


class Availability(BaseModel):
    gpu_count: int
    minimum_price: MoneyOut
    options_available_total: int
    providers_available_total: int
    data_center_available_total: int
    locations: list[str]
    providers: list[str]
    options: list[VmOption]


class VmGroup(BaseModel):
    gpu_model: GpuOut
    minimum_price: MoneyOut
    availability_by_number: list[Availability]


class VmPlans(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [{
        "gpu_model": {"vendor": "nvidia", "model": "a100", "vram": "80Gi", "interface": "pcie"},
        "minimum_price": 1.07,
        "availability_by_number": [{
            "gpu_count": 1, "minimum_price": 1.07, "options_available_total": 1,
            "providers_available_total": 1, "data_center_available_total": 1,
            "locations": ["us-central-3"], "providers": ["massed-compute"],
            "options": [{"id": "5b0c2a9e-1d1f-4c47-8d8e-6f2f0b9a7c31", "location": "us-central-3",
                         "provider": "massed-compute", "vcpu": {"count": 14},
                         "memory": {"count": 93, "units": "Gi"},
                         "storage": {"count": 582, "units": "Gi"}, "deployment_type": "VM",
                         "pricing": {"hour": 1.07, "upfront_hours": 3, "currency": "USDC"},
                         "nvlink": False, "os_options": ["Ubuntu Server 22.04"]}]}]}]}]})
    data: list[VmGroup]


class PortOut(BaseModel):
    port: str = Field(examples=["22"], description="1–65535, as a string")
    protocol: Literal["tcp", "udp", "http"] = "tcp"


class EnvOut(BaseModel):
    name: str = Field(examples=["JUPYTER_TOKEN"])
    value: str = Field(examples=["change-me"])


class DefaultImageOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "slug": "debian-ssh", "name": "Debian 11 with SSH (root)",
        "description": "Minimal Debian with an OpenSSH server; your key comes from SSH_PUBKEY.",
        "image": "docker.io/fluencelabs/debian-ssh-root:11",
        "expose": [{"port": "22", "protocol": "tcp"}], "environment": [],
        "startup_command": None, "requires_ssh": True}]})
    slug: str
    name: str
    description: str | None
    image: str
    expose: list[PortOut]
    environment: list[EnvOut]
    startup_command: str | None
    requires_ssh: bool | None
