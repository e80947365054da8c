"""Provider config of the `redfish` driver: what an operator writes, checked at registration.

BMC passwords are stored sealed (`password_enc`, Fernet like registry credentials): the
control plane seals them at registration with `seal_secrets` and opens them for the driver
with `open_secrets`; listings show neither.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gpucloud.drivers.configs import parse_model

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
SECRET_MARK = "password_enc"


class BootImage(BaseModel):
    """A kernel and initrd booted from gpucloud's ISO (an OS option, or the wipe image)."""

    model_config = ConfigDict(extra="forbid")

    kernel: str = Field(description="Kernel on the gpucloud server.")
    initrd: str = Field(description="Initrd on the gpucloud server.")
    cmdline: str = Field("console=ttyS0,115200", max_length=1000,
                         description="Kernel command line.")
    user: str = Field("root", pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
                      description="OS options: the login that receives the customer's key.")

    @model_validator(mode="after")
    def _paths(self) -> BootImage:
        for what in ("kernel", "initrd"):
            if not os.path.isabs(getattr(self, what)):
                raise ValueError(f"{what} must be an absolute path")
        return self


class BmcConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://[^/\s]+$", description="BMC base URL, no path.")
    system: str = Field(pattern=r"^/redfish/v1/Systems/[^/\s]+$",
                        description="The Redfish System of this machine.")
    username: str = Field(min_length=1, max_length=128, description="BMC user.")
    password: str | None = Field(None, max_length=256, description="BMC password (sealed "
                                 "at registration, never shown).")
    password_enc: str | None = Field(None, description="The sealed password (stored form).")
    verify_tls: bool = Field(True, description="Check the BMC's TLS certificate.")

    @model_validator(mode="after")
    def _one_password(self) -> BmcConfig:
        if self.password is None and self.password_enc is None:
            raise ValueError("password is required")
        return self


class SshEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1, max_length=253, description="Where customers SSH to.")
    port: int = Field(22, ge=1, le=65535, description="SSH port.")


class MachineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Unique within the provider.")
    bmc: BmcConfig
    ssh: SshEndpoint
    offers: list[str] | None = Field(
        None, description="Offer ids it serves; default every bare-metal offer it matches.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("name must be letters, digits, '.', '_' or '-' (at most 63)")
        return v


class RedfishConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    media_url: str = Field(pattern=r"^https?://[^\s]+$",
                           description="Base URL at which the BMCs reach gpucloud's boot media.")
    media_listen: str = Field("0.0.0.0:8470", pattern=r"^[^\s:]*:\d{1,5}$",
                              description="host:port gpucloud's media server listens on.")
    media_dir: str = Field("/var/lib/gpucloud/boot-media",
                           description="Where per-instance boot ISOs are written.")
    media_ttl_seconds: float = Field(3600.0, gt=0, description="A media URL expires this long "
                                     "after it was made.")
    images: dict[str, BootImage] = Field(min_length=1, description="OS option → boot image.")
    wipe: BootImage = Field(description="The cleaning image; it powers the machine off when "
                            "done.")
    machines: list[MachineConfig] = Field(min_length=1, description="The provider's servers.")
    boot_timeout_seconds: float = Field(900.0, gt=0, le=7200,
                                        description="Power on → SSH banner, at most.")
    wipe_timeout_seconds: float = Field(1800.0, gt=0, le=86400,
                                        description="Wipe boot → power off, at most.")
    graceful_off_seconds: float = Field(60.0, ge=0, le=3600, description="How long a graceful "
                                        "shutdown may take before power is forced off.")
    health_grace_seconds: float = Field(300.0, ge=0, description="A rented machine off or "
                                        "unreachable this long ends its instance.")
    confirm_seconds: float = Field(60.0, gt=0, le=3600, description="How long a BMC may take "
                                   "to show a change it accepted.")

    @field_validator("media_dir")
    @classmethod
    def _dir(cls, v: str) -> str:
        if not os.path.isabs(v):
            raise ValueError("media_dir must be an absolute path")
        return os.path.normpath(v)

    @field_validator("machines")
    @classmethod
    def _distinct(cls, v: list[MachineConfig]) -> list[MachineConfig]:
        if len({m.name for m in v}) != len(v):
            raise ValueError("machine names must be distinct")
        if len({(m.bmc.url, m.bmc.system) for m in v}) != len(v):
            raise ValueError("two machines name the same BMC system")
        return v

    def machine(self, name: str) -> MachineConfig | None:
        return next((m for m in self.machines if m.name == name), None)


def parse_config(config: dict[str, Any]) -> RedfishConfig:
    """The typed config, or ValueError with a one-line reason per problem."""
    return parse_model(RedfishConfig, config)


def normalized(config: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in; boot image files must exist on this server."""
    cfg = parse_config(config)
    images = {f"images.{n}": i for n, i in cfg.images.items()} | {"wipe": cfg.wipe}
    missing = [f"{where}: {what} {getattr(img, what)} does not exist on this server"
               for where, img in images.items() for what in ("kernel", "initrd")
               if not os.path.isfile(getattr(img, what))]
    if missing:
        raise ValueError("; ".join(missing))
    return cfg.model_dump(exclude_none=True)


def seal_secrets(config: dict[str, Any], seal: Callable[[str], str]) -> dict[str, Any]:
    """Replace every clear BMC password by its sealed form."""
    out = dict(config)
    out["machines"] = []
    for m in config.get("machines") or []:
        bmc = dict(m.get("bmc") or {})
        if bmc.get("password") is not None:
            bmc[SECRET_MARK] = seal(bmc.pop("password"))
        out["machines"].append({**m, "bmc": bmc})
    return out


def open_secrets(config: dict[str, Any], unseal: Callable[[str], str]) -> dict[str, Any]:
    out = dict(config)
    out["machines"] = []
    for m in config.get("machines") or []:
        bmc = dict(m.get("bmc") or {})
        if bmc.get(SECRET_MARK):
            bmc["password"] = unseal(bmc.pop(SECRET_MARK))
        out["machines"].append({**m, "bmc": bmc})
    return out


def public(config: dict[str, Any]) -> dict[str, Any]:
    out = dict(config)
    out["machines"] = [{**m, "bmc": {k: v for k, v in (m.get("bmc") or {}).items()
                                     if k not in ("password", SECRET_MARK)}}
                       for m in config.get("machines") or []]
    return out
