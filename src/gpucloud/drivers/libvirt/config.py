"""Provider config of the `libvirt` driver: what an operator writes, checked at registration.

Disks, seeds and console logs are files this server writes next to the hypervisor, so the
hypervisor must run on this machine (`qemu:///system`); image paths are checked here, at
registration, because a typo found at the first deploy costs a customer a failed VM.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PORT_RANGE = (30000, 32767)
PCI_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
NETWORK_RE = re.compile(r"^(user|network:[A-Za-z0-9_.-]+|bridge:[A-Za-z0-9_.-]+)$")
LOCAL_URIS = ("qemu:///system", "qemu:///session")


class ImageConfig(BaseModel):
    """One OS option: a base disk image with cloud-init, and how it boots."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Base disk image on the host (qcow2 or raw) with cloud-init.")
    user: str = Field("debian", pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
                      description="Login user that receives the customer's SSH key.")
    kernel: str | None = Field(None, description="Boot this kernel directly (no bootloader).")
    initrd: str | None = Field(None, description="Initrd for `kernel`.")
    cmdline: str = Field("root=/dev/vda console=ttyS0",
                         description="Kernel command line for `kernel`.")

    @model_validator(mode="after")
    def _paths(self) -> ImageConfig:
        for what, value in self.files():
            if not os.path.isabs(value):
                raise ValueError(f"{what} must be an absolute path")
        if self.initrd and not self.kernel:
            raise ValueError("initrd needs kernel")
        return self

    def files(self) -> list[tuple[str, str]]:
        return [(what, value) for what in ("path", "kernel", "initrd")
                if (value := getattr(self, what)) is not None]


class GpuConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pci: str = Field(description="PCI address of the GPU, like 0000:41:00.0 (passed with VFIO).")
    model: str = Field(min_length=1, description="GPU model it serves offers of, like h100.")

    @field_validator("pci")
    @classmethod
    def _pci(cls, v: str) -> str:
        v = v.lower()
        if not PCI_RE.match(v):
            raise ValueError("pci must look like 0000:41:00.0")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return v.lower()


class LibvirtConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uri: str = Field("qemu:///system", description="libvirt connection URI (local hypervisor).")
    domain_type: Literal["kvm", "qemu"] = Field(
        "kvm", description="`kvm`, or `qemu` for software emulation on hosts without KVM.")
    images: dict[str, ImageConfig] = Field(
        min_length=1, description="OS option name (as in offers' os_options) → base image.")
    storage_dir: str = Field(
        "/var/lib/gpucloud/vms", description="Per-instance overlays, seeds and console logs.")
    network: str = Field(
        "user", description="`user` (QEMU user networking, SSH forwarded from a host port), "
        "`network:NAME` (a libvirt network) or `bridge:NAME`.")
    public_host: str = Field(
        "127.0.0.1", min_length=1, max_length=253,
        description="Host customers reach forwarded SSH ports on (network `user`).")
    port_range: tuple[int, int] = Field(
        DEFAULT_PORT_RANGE, description="Host ports for forwarded SSH (network `user`).")
    gpus: list[GpuConfig] = Field(
        default_factory=list, description="GPUs of the host, passed through to VMs.")
    tb_cache_mib: int = Field(
        128, ge=16, le=4096, description="domain_type qemu: size of TCG's translation cache "
        "(QEMU's default reserves 1 GiB per VM).")
    call_timeout_seconds: float = Field(
        120.0, gt=0, le=3600, description="How long the control plane waits for one driver "
        "operation (a create writes the overlay and seed and starts the domain; it never waits "
        "for the boot) before it gives up on that attempt and retries.")
    boot_timeout_seconds: float = Field(
        900.0, gt=0, le=7200,
        description="A guest whose SSH server has not answered this long after start failed.")

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        if v not in LOCAL_URIS:
            raise ValueError(f"uri must be one of {', '.join(LOCAL_URIS)}: disks and seeds are "
                             "written by this server, so the hypervisor must run on it")
        return v

    @field_validator("storage_dir")
    @classmethod
    def _storage(cls, v: str) -> str:
        if not os.path.isabs(v):
            raise ValueError("storage_dir must be an absolute path")
        return os.path.normpath(v)

    @field_validator("network")
    @classmethod
    def _network(cls, v: str) -> str:
        if not NETWORK_RE.match(v):
            raise ValueError("network must be user, network:NAME or bridge:NAME")
        return v

    @field_validator("port_range", mode="before")
    @classmethod
    def _range_text(cls, v: Any) -> Any:
        if isinstance(v, str):
            lo, sep, hi = v.partition("-")
            if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
                raise ValueError("port_range must look like 30000-32767")
            return (int(lo), int(hi))
        return v

    @field_validator("port_range")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1024 <= v[0] <= v[1] <= 65535:
            raise ValueError("port_range must be within 1024-65535, low end first")
        return v

    @field_validator("gpus")
    @classmethod
    def _distinct(cls, v: list[GpuConfig]) -> list[GpuConfig]:
        if len({g.pci for g in v}) != len(v):
            raise ValueError("gpus must have distinct pci addresses")
        return v

    @property
    def user_network(self) -> bool:
        return self.network == "user"


def parse_config(config: dict[str, Any]) -> LibvirtConfig:
    """The typed config, or ValueError with a one-line reason per problem."""
    try:
        return LibvirtConfig.model_validate(config)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {msg}" if where else msg)
        raise ValueError("; ".join(problems)) from None


def normalized(config: dict[str, Any]) -> dict[str, Any]:
    """What gets stored: defaults filled in, JSON-friendly. Registration also checks that the
    image files exist (later, a file gone missing fails only the VMs that need it)."""
    cfg = parse_config(config)
    missing = [f"images.{name}: {what} {value} does not exist on this host"
               for name, image in cfg.images.items() for what, value in image.files()
               if not os.path.isfile(value)]
    if missing:
        raise ValueError("; ".join(missing))
    out = cfg.model_dump(exclude_none=True)
    out["port_range"] = list(cfg.port_range)
    return out


def warnings(cfg: LibvirtConfig) -> list[str]:
    """What an operator should know about a valid config."""
    out = []
    if not cfg.gpus:
        out.append("No gpus listed: VMs on this provider get no GPU passed through, whatever "
                   "their offer says.")
    if cfg.domain_type == "qemu":
        out.append("domain_type qemu emulates the CPU in software: fine for tests, slow for "
                   "customers.")
    return out
