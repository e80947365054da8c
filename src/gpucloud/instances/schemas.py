"""Request and response shapes of instances (SPEC §3, §4).

Every rule that can be checked from the request alone lives here, so FastAPI reports it as a
422 pointing at the field. Response models exist for the OpenAPI document; the routes render
plain dicts through `gpucloud.jsonresp.JSON` (money as exact Decimals).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)

from gpucloud.catalog.schemas import GpuOut as GpuModel  # the plan's GPU, one schema
from gpucloud.catalog.schemas import PortOut, Supply
from gpucloud.common import MoneyOut, RequestModel

PORT_MESSAGE = "Port must be between 1 and 65535"

InstanceName = Annotated[str, StringConstraints(min_length=1, max_length=25,
                                                pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"),
                         Field(examples=["my-gpu-container"])]

# An image reference as the Docker distribution grammar defines it:
#   [registry[:port]/]path-component(/path-component)*[:tag][@algorithm:hex]
# Upper case is refused separately (with its own message) before this runs.
_HOST = r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:]+\])"
_REGISTRY = rf"(?:{_HOST}(?::[0-9]+)?/)"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[a-z0-9_][a-z0-9_.-]{0,127}"
_DIGEST = r"[a-z][a-z0-9]*(?:[-_+.][a-z][a-z0-9]*)*:[0-9a-f]{32,}"
IMAGE_RE = re.compile(
    rf"^(?:{_REGISTRY}(?={_COMPONENT}(?:/|:|@|$)))?{_COMPONENT}(?:/{_COMPONENT})*"
    rf"(?::{_TAG})?(?:@{_DIGEST})?$"
)

ENV_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")

# OpenSSH key types we accept, with the key class the blob must decode to.
_SSH_TYPES: dict[str, type] = {
    "ssh-ed25519": ed25519.Ed25519PublicKey,
    "ssh-rsa": rsa.RSAPublicKey,
    "ecdsa-sha2-nistp256": ec.EllipticCurvePublicKey,
    "ecdsa-sha2-nistp384": ec.EllipticCurvePublicKey,
    "ecdsa-sha2-nistp521": ec.EllipticCurvePublicKey,
}
SSH_KEY_EXAMPLE = ("ssh-ed25519 "
                   "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@host")


def check_image(value: str) -> str:
    if value != value.lower():
        raise ValueError("Image reference must be lowercase")
    if not IMAGE_RE.match(value):
        raise ValueError("Invalid image reference; expected [registry/]repository[:tag][@digest]")
    return value


def check_ssh_key(value: str) -> str:
    """Parse an OpenSSH public key line; returns it normalized (single spaces, no newline)."""
    parts = value.strip().split()
    if len(parts) < 2:
        raise ValueError("SSH key must look like '<type> <base64 key> [comment]'")
    kind, blob_b64 = parts[0], parts[1]
    if kind not in _SSH_TYPES:
        raise ValueError("Unsupported SSH key type; use ssh-ed25519, ssh-rsa or ecdsa-sha2-nistp*")
    try:
        blob = base64.b64decode(blob_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("SSH key is not valid base64") from None
    # The blob starts with its own type string; a key pasted under another header is a mistake.
    if len(blob) < 4 or blob[4:4 + int.from_bytes(blob[:4], "big")] != kind.encode():
        raise ValueError("SSH key type does not match the key data")
    try:
        key = load_ssh_public_key(f"{kind} {blob_b64}".encode())
    except (ValueError, TypeError):
        raise ValueError("SSH key could not be parsed") from None
    if not isinstance(key, _SSH_TYPES[kind]):
        raise ValueError("SSH key type does not match the key data")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise ValueError("RSA SSH keys must be at least 2048 bits")
    return " ".join(parts)


# Requests take a port as a string or an integer (the Fluence docs send strings); the
# validator below makes it an int. The schema says exactly that and nothing else.
PortIn = Annotated[int, WithJsonSchema({
    "anyOf": [{"type": "string", "pattern": "^\\s*[0-9]{1,5}\\s*$"},
              {"type": "integer", "minimum": 1, "maximum": 65535}],
    "description": "1–65535, as a string (`\"22\"`) or an integer (`22`)",
    "examples": ["22"]})]


class ExposedPort(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"port": "22", "protocol": "tcp"}]})
    port: PortIn
    protocol: Literal["tcp", "udp", "http"] = "tcp"

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError(PORT_MESSAGE)
        if isinstance(v, str) and re.fullmatch(r"\s*[0-9]{1,5}\s*", v):
            v = int(v)
        if not isinstance(v, int) or not 1 <= v <= 65535:
            raise ValueError(PORT_MESSAGE)
        return v

    @field_validator("protocol")
    @classmethod
    def _http_on_80(cls, v: str, info) -> str:
        if v == "http" and info.data.get("port") not in (None, 80):
            raise ValueError("Protocol http is only allowed on port 80")
        return v


class EnvVar(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "MODEL_PATH",
                                                                "value": "/models/llama"}]})
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Z][A-Z0-9_]*$")
    value: str = Field(max_length=32768)


class RegistryCredentials(RequestModel):
    """Used only to pull the image; stored encrypted, never returned."""

    host: Literal["docker.io", "ghcr.io"]
    username: str = Field(min_length=1, max_length=255)
    password: str = Field(min_length=1, max_length=4096)


Image = Annotated[str, Field(max_length=255, examples=["docker.io/fluencelabs/debian-ssh-root:11"])]


def _unique_env(v: list[EnvVar] | None) -> list[EnvVar] | None:
    if v:
        seen: set[str] = set()
        for item in v:
            if item.name in seen:
                raise ValueError(f"Duplicate environment variable {item.name}")
            seen.add(item.name)
    return v


class ContainerSettingsBase(RequestModel):
    image: Image
    environment: list[EnvVar] | None = Field(None, max_length=64)
    startup_command: str | None = Field(None, max_length=2048,
                                        examples=["python3 serve.py --port 8000"])
    credentials: RegistryCredentials | None = None

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        return check_image(v)

    @field_validator("environment")
    @classmethod
    def _env(cls, v: list[EnvVar] | None) -> list[EnvVar] | None:
        return _unique_env(v)


class ContainerSettings(ContainerSettingsBase):
    expose: list[ExposedPort] = Field(min_length=1, max_length=10)

    @field_validator("expose")
    @classmethod
    def _no_duplicates(cls, v: list[ExposedPort]) -> list[ExposedPort]:
        seen: set[tuple[int, str]] = set()
        for p in v:
            if (p.port, p.protocol) in seen:
                raise ValueError(f"Duplicate exposed port {p.port}/{p.protocol}")
            seen.add((p.port, p.protocol))
        return v


class ContainerSettingsUpdate(ContainerSettingsBase):
    """`expose` cannot change after deploy: if sent, it is ignored (extra fields are)."""


class Constraints(RequestModel):
    location: str | None = Field(None, pattern=r"^[A-Z]{2}$", examples=["US"])


SshKey = Annotated[str, Field(max_length=16384, examples=[SSH_KEY_EXAMPLE])]


class _WithSshKey(RequestModel):
    ssh_key: SshKey | None = None

    @field_validator("ssh_key")
    @classmethod
    def _ssh(cls, v: str | None) -> str | None:
        return None if v is None else check_ssh_key(v)


class ContainerDeploy(_WithSshKey):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "plan_id": "0b6f2b5e-6a55-4c1b-9a53-5d3e0e8f6d7a", "name": "my-gpu-container",
        "container_settings": {
            "image": "docker.io/fluencelabs/debian-ssh-root:11",
            "expose": [{"port": "22", "protocol": "tcp"}, {"port": "80", "protocol": "http"}],
            "environment": [{"name": "MODEL_PATH", "value": "/models/llama"}],
            "startup_command": "python3 serve.py --port 8000"},
        "constraints": {"location": "US"}, "ssh_key": SSH_KEY_EXAMPLE}]})
    plan_id: str = Field(min_length=1, max_length=64)
    name: InstanceName
    container_settings: ContainerSettings
    constraints: Constraints | None = None


class ContainerUpdate(_WithSshKey):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "my-gpu-container",
        "container_settings": {"image": "docker.io/library/ubuntu:24.04",
                               "environment": [{"name": "MODEL_PATH", "value": "/models/qwen"}],
                               "startup_command": "sleep infinity"},
        "ssh_key": SSH_KEY_EXAMPLE}]})
    name: InstanceName
    container_settings: ContainerSettingsUpdate


class VmDeploy(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "plan_id": "0b6f2b5e-6a55-4c1b-9a53-5d3e0e8f6d7a", "name": "my-vm",
        "ssh_key": SSH_KEY_EXAMPLE, "os_image": "Ubuntu Server 22.04"}]})
    plan_id: str = Field(min_length=1, max_length=64)
    name: InstanceName
    ssh_key: SshKey
    os_image: str = Field(min_length=1, max_length=128, examples=["Ubuntu Server 22.04"])

    @field_validator("ssh_key")
    @classmethod
    def _ssh(cls, v: str) -> str:
        return check_ssh_key(v)


class VmRename(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "renamed-vm"}]})
    name: InstanceName


# --- responses (OpenAPI only) -----------------------------------------------------------------

class Created(BaseModel):
    instance_id: str = Field(examples=["6f1c2d7e-9a0b-4c3d-8e5f-1a2b3c4d5e6f"])


class Resources(BaseModel):
    supply: Supply
    gpu_model: GpuModel


class ForwardedPortOut(BaseModel):
    port: str = Field(examples=["22"], description="The port inside the workload, a string")
    external_port: str = Field(examples=["30022"],
                               description="The port to connect to at `domain`, a string")
    protocol: Literal["tcp", "udp", "http"] = Field(examples=["tcp"])


class NetworkOut(BaseModel):
    domain: str | None = Field(examples=["6f1c2d7e.us.sim.gpucloud.local"])
    forwarded_ports: list[ForwardedPortOut]
    uri: str | None = Field(examples=["http://6f1c2d7e.us.sim.gpucloud.local:30080"])


class BillingOut(BaseModel):
    hourly_usage: MoneyOut
    total_spendings: MoneyOut
    reserved_amount: MoneyOut
    next_billing_period: str | None = Field(examples=["2026-01-05T11:00:00Z"])


class _ItemBase(BaseModel):
    id: str
    name: str
    resources: Resources
    domain: str | None
    location: str = Field(examples=["US"])
    created_at: str = Field(examples=["2026-01-05T10:00:00Z"])
    updated_at: str = Field(examples=["2026-01-05T10:00:05Z"])


Status = Literal["INITIALIZED", "ACTIVE", "ENDED", "FAILED"]


class ContainerItem(_ItemBase):
    instance_status: Status


class ContainerInfo(BaseModel):
    image: str
    expose: list[PortOut]
    environment: list[EnvVar]
    startup_command: str | None


class ContainerDetails(ContainerItem):
    container_status: Literal["STARTED", "NOT_STARTED"]
    container_info: ContainerInfo
    billing: BillingOut
    network: NetworkOut | None


class VmItem(_ItemBase):
    status: Status


class VmDetails(VmItem):
    availability: Literal["vm", "baremetal"]
    os_image: str | None = Field(examples=["Ubuntu Server 22.04"])
    ssh_connection: str | None = Field(examples=["ssh ubuntu@203.0.113.7"])
    billing: BillingOut
    network: NetworkOut | None
    ssh_key: str | None
