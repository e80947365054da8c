"""The driver contract: how the control plane turns an instance into a workload at a provider.

Drivers are called OUTSIDE database transactions (they may be slow) by a worker that holds a
lease on the instance row; the worker applies what they report only if it still holds the lease.

Drivers sit below every domain: they import nothing of gpucloud but this package (and the
clock), and real drivers touch no database. Resources unique across a provider (host ports,
GPU devices) are allocated by the control plane before `create` and handed over in the spec
(`ports`, `gpu_devices`); a driver says what it needs with `wanted_ports`, `port_range`,
`port_free` and `gpu_pool`. What to do when a workload is gone (recreate it, end the instance)
is the lifecycle's decision. See docs/drivers.md.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


class DriverError(Exception):
    pass


class DriverTransientError(DriverError):
    """Retry later (engine unreachable, timeout…)."""


class CleanupFailed(DriverError):
    """`delete` removed the workload but could not prove the machine clean (a bare-metal wipe
    that failed): the control plane must not rent the machine again (maintenance)."""


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
    # Allocated by the control plane (instances/allocations.py), never by the driver:
    # host ports, one per `wanted_ports` entry (port = internal, external_port = host port)…
    ports: list[ForwardedPort] = field(default_factory=list)
    # …and GPU device ids out of `gpu_pool` (empty when the provider lists none).
    gpu_devices: list[str] = field(default_factory=list)
    # …and, for a driver with a `machine_pool`, the machine (bare metal) it deploys on.
    machine: str | None = None
    offer_id: str | None = None
    generation: int = 1  # containers: the config generation this spec describes


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
    # While pending: what the provider is doing, in the customer's words ("Pulling image …: 2
    # of 5 layers done"); the lifecycle records it as an instance event whenever it changes.
    progress: str | None = None


@dataclass
class DriverEvent:
    at: dt.datetime
    message: str


class Clock(Protocol):
    def now(self) -> dt.datetime: ...


@dataclass
class DriverContext:
    """What the control plane lends a driver: the server clock. The database only for a
    driver whose `uses_database` is true (the simulated one keeps its far side there)."""

    clock: Clock
    db: Any = None


class Driver(abc.ABC):
    """One instance of a driver serves one provider (its config)."""

    name: ClassVar[str]
    workloads: ClassVar[frozenset[str]] = frozenset({"container", "vm", "baremetal"})
    uses_database: ClassVar[bool] = False
    # True when `logs` and `events` are reads of gpucloud's own database with no wait of their
    # own: a feed then asks right after reading our rows, on the same request thread, instead
    # of handing the call to a driver-call thread (instances/feed.py). Only such a read may;
    # a provider's API can hang, and only the driver-call pool's deadline bounds that.
    reads_inline: bool = False
    # How long the control plane waits for one call (provider config `call_timeout_seconds`
    # overrides it); past it the attempt counts as "the provider did not answer".
    default_call_timeout: ClassVar[float] = 60.0
    # Host ports for `wanted_ports` come from this range (provider config `port_range`);
    # None: this provider publishes no ports.
    port_range: tuple[int, int] | None = None

    def __init__(self, provider_id: str, config: dict[str, Any], ctx: DriverContext):
        self.provider_id = provider_id
        self.config = config
        self.ctx = ctx

    @property
    def call_timeout(self) -> float:
        return float(self.config.get("call_timeout_seconds") or self.default_call_timeout)

    # -- what the control plane allocates for the driver -------------------------------------
    def wanted_ports(self, spec: WorkloadSpec) -> list[tuple[int, str]]:
        """(internal port, protocol) pairs that need a host port at this provider."""
        return []

    def port_free(self, port: int, protocol: str) -> bool:
        """Veto a host port something outside gpucloud already uses (engines on this
        machine can check); the allocator skips vetoed ports."""
        return True

    def gpu_pool(self, spec: WorkloadSpec) -> list[str]:
        """The device ids GPUs are assigned from: the provider config's `gpus` list, entries
        either an id or `{pci: <id>, model: ...}`. Empty: the driver does not pin devices."""
        out = []
        for gpu in self.config.get("gpus") or []:
            device = gpu.get("pci") if isinstance(gpu, dict) else gpu
            if device:
                out.append(str(device))
        return out

    def machine_pool(self, spec: WorkloadSpec) -> list[str]:
        """Names of the whole servers that may serve the spec (bare metal); the control plane
        rents one that is clean and free and hands it over as `spec.machine`. Empty: this
        driver does not deploy on machines."""
        return []

    @classmethod
    def machines(cls, config: dict[str, Any]) -> list[tuple[str, list[str] | None]]:
        """The whole servers a config names (bare metal), each with the offer ids it is
        limited to (None: every bare-metal offer of the provider). The control plane keeps a
        row per machine and derives the offers' capacity from the free ones."""
        return []

    def machine_inventory(self, name: str) -> dict[str, Any]:
        """What the machine's management controller reports: `cpus`, `memory_gib`, `gpus`
        (None for each it does not report: unverified) and `power`. Network I/O."""
        raise DriverError(f"{self.name} has no machines")

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Return the normalized config or raise ValueError (→ 422 at registration)."""
        return config

    @classmethod
    def seal_config(cls, config: dict[str, Any], seal: Callable[[str], str]) -> dict[str, Any]:
        """The config as stored: secrets in it (BMC passwords…) sealed with `seal`."""
        return config

    @classmethod
    def open_config(cls, config: dict[str, Any], unseal: Callable[[str], str]) -> dict[str, Any]:
        """The stored config with its sealed secrets opened, for the driver object."""
        return config

    @classmethod
    def offer_problem(cls, config: dict[str, Any], workload: str, os_options: list[str],
                      gpu_model: str) -> tuple[str, str] | None:
        """(offer field, why) when this provider cannot serve such an offer (→ 422)."""
        return None

    @classmethod
    def config_warnings(cls, config: dict[str, Any]) -> list[str]:
        """What the operator should know about a valid (normalized) config; shown with the
        provider."""
        return []

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

    def feed_row(self, instance_id: str) -> tuple[Any, dict] | None:
        """For a driver whose `logs` and `events` are made from one row of gpucloud's own
        database (`reads_inline`): that SELECT (a prebuilt SQLAlchemy statement) and its
        parameters. The feeds then read the row where the API's own reads go, from the event
        loop, and hand it (or None) to the driver's `logs_from(row, last)` /
        `events_from(row)`, which give what `logs` / `events` would: a driver that returns a
        statement here defines those two (the simulated one). None (the default): the feeds
        call `logs` / `events`, and nothing else is asked of the driver."""
        return None

    @abc.abstractmethod
    def list_owned(self) -> list[str]: ...

    def close(self) -> None:
        """Release connections."""
