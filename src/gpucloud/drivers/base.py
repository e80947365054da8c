"""The driver contract: how the control plane turns an instance into a workload at a provider.

Drivers are called OUTSIDE database transactions (they may be slow) by a worker that holds a
lease on the instance row; the worker applies what they report only if it still holds the lease.

Contract every driver keeps (the simulated one included):
- `create` is idempotent, keyed by `spec.instance_id`: calling it again after a crash finds
  the workload it already made instead of making a second one.
- `status` never raises for a workload that does not exist: it reports `phase="gone"`.
- `delete` is safe to repeat and succeeds when the workload is already gone.
- `list_owned` returns the ids of every instance this provider holds a workload for, so the
  reconciler can remove what no live instance owns.
- Errors that the control plane should retry raise `DriverTransientError`; errors that make
  the workload impossible (bad image, …) are reported as `phase="failed"` with a reason.
"""

from __future__ import annotations

import abc
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, ClassVar


class DriverError(Exception):
    pass


class DriverTransientError(DriverError):
    """Retry later (engine unreachable, timeout…)."""


@dataclass
class PortSpec:
    port: int
    protocol: str  # tcp | udp | http


@dataclass
class ForwardedPort:
    port: int
    external_port: int
    protocol: str


@dataclass
class WorkloadSpec:
    instance_id: str
    provider_id: str
    workload: str  # container | vm | baremetal
    name: str
    gpu_count: int
    gpu_model: str
    vcpu: int
    memory_gib: int
    storage_gib: int
    location: str
    image: str | None = None
    expose: list[PortSpec] = field(default_factory=list)
    environment: list[tuple[str, str]] = field(default_factory=list)  # SSH_PUBKEY included
    startup_command: str | None = None
    credentials: dict[str, str] | None = None  # decrypted; never log it
    ssh_key: str | None = None
    os_image: str | None = None
    # Allocated by the control plane before `create` (see docs/libvirt-driver.md): host ports
    # for what `Driver.wanted_ports` asked, and the PCI addresses of the GPUs to pass through.
    ports: list[ForwardedPort] = field(default_factory=list)
    gpu_devices: list[str] = field(default_factory=list)


@dataclass
class WorkloadStatus:
    phase: str  # pending | running | failed | gone
    reason: str | None = None
    domain: str | None = None
    forwarded_ports: list[ForwardedPort] = field(default_factory=list)
    uri: str | None = None
    ssh_user: str | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    container_started: bool | None = None  # containers: the process runs right now
    # Config the running workload has (after an update completes), for containers.
    applied_generation: int | None = None
    state: dict[str, Any] | None = None  # opaque driver bookkeeping persisted on the instance
    # While pending: when it is worth asking again (server clock); None = the caller's default.
    check_again_at: dt.datetime | None = None


@dataclass
class DriverEvent:
    at: dt.datetime
    message: str


class Driver(abc.ABC):
    """One instance of a driver serves one provider (its config)."""

    name: ClassVar[str]
    workloads: ClassVar[frozenset[str]] = frozenset({"container", "vm", "baremetal"})

    # Host ports the control plane hands out for `wanted_ports` (None: the driver needs none).
    port_range: tuple[int, int] | None = None

    def __init__(self, provider_id: str, config: dict[str, Any], runtime: Any):
        self.provider_id = provider_id
        self.config = config
        self.runtime = runtime  # gives access to clock/db/settings for drivers that need them

    def wanted_ports(self, spec: WorkloadSpec) -> list[tuple[int, str]]:
        """(internal port, protocol) pairs that need a host port from `port_range`."""
        return []

    def port_free(self, port: int, protocol: str) -> bool:
        """Whether `port` may be handed out (a driver whose engine runs on this machine vetoes
        ports something else already listens on)."""
        return True

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Return the normalized config or raise ValueError (→ 422 at registration)."""
        return config

    @classmethod
    def public_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The config minus secrets, for admin listings."""
        return config

    @abc.abstractmethod
    def create(self, spec: WorkloadSpec) -> WorkloadStatus: ...

    @abc.abstractmethod
    def status(self, instance_id: str, state: dict[str, Any] | None) -> WorkloadStatus: ...

    def update(self, spec: WorkloadSpec, generation: int) -> WorkloadStatus:
        """Redeploy a container with a new config; keep its external ports.

        A failed update must leave the old workload running and report phase="running" with
        `reason` saying why (the caller records it as an event)."""
        raise DriverError(f"{self.name} does not support updates")

    @abc.abstractmethod
    def delete(self, instance_id: str, state: dict[str, Any] | None) -> None: ...

    @abc.abstractmethod
    def logs(
        self, instance_id: str, state: dict[str, Any] | None, last: int | None
    ) -> list[str]: ...

    def events(self, instance_id: str, state: dict[str, Any] | None) -> list[DriverEvent]:
        return []

    @abc.abstractmethod
    def list_owned(self) -> list[str]: ...

    def close(self) -> None:
        """Release connections."""
