"""Provider config of the `docker` driver: what an operator writes, checked at registration.

Everything here must be decidable without reaching the engine (the engine may be down while a
provider is registered); the engine itself is only contacted by the driver at work time.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gpucloud.drivers.configs import PortRange, parse_model

DEFAULT_PORT_RANGE = (30000, 32767)  # the range Kubernetes uses for NodePorts: rarely taken


class TLSOptions(BaseModel):
    """Client-certificate TLS for a `tcp://` engine (paths on the gpucloud server)."""

    model_config = ConfigDict(extra="forbid")

    ca_cert: str | None = Field(None, description="CA bundle that signed the engine's cert.")
    client_cert: str | None = Field(None, description="Client certificate (PEM file path).")
    client_key: str | None = Field(None, description="Client key (PEM file path).")
    verify: bool = Field(True, description="Verify the engine's certificate.")

    @model_validator(mode="after")
    def _pair(self) -> TLSOptions:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("tls.client_cert and tls.client_key go together")
        return self


class DockerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine_url: str = Field(
        description="`unix:///path/to/docker.sock` or `tcp://host:port` (Docker or Podman).")
    tls: TLSOptions | None = Field(None, description="TLS client options for tcp:// engines.")
    public_host: str | None = Field(
        None, description="Domain or IP customers connect to. Default: the tcp:// engine's "
        "host, or 127.0.0.1 for a local socket.")
    port_range: PortRange = Field(
        DEFAULT_PORT_RANGE, description="Inclusive range of host ports published for "
        "exposed container ports; `[30000, 32767]` or `\"30000-32767\"`.")
    gpu_mode: Literal["none", "nvidia", "cdi"] = Field(
        "none", description="`none`: no GPUs; `nvidia`: NVIDIA device requests; `cdi`: CDI "
        "device names.")
    gpus: list[str] = Field(
        default_factory=list, description="GPU inventory of the host: NVIDIA device indexes "
        "or UUIDs (`nvidia`), CDI names like `nvidia.com/gpu=0` (`cdi`). Each container gets "
        "`gpu_count` of them exclusively. Empty with `nvidia`: the engine picks by count.")
    network: str | None = Field(None, description="Engine network to attach containers to.")
    restart_policy: Literal["no", "on-failure", "always", "unless-stopped"] = Field(
        "no", description="Restart policy of created containers. `no` keeps a crash visible "
        "as NOT_STARTED instead of a restart loop.")
    timeout_seconds: float = Field(30.0, gt=0, le=600,
                                   description="Timeout of one Engine API call.")
    call_timeout_seconds: float = Field(
        900.0, gt=0, le=86400, description="How long the control plane waits for one driver "
        "operation (a create includes pulling the image) before it gives up on that attempt "
        "and retries; the lease on the instance is renewed meanwhile.")
    stop_timeout_seconds: int = Field(10, ge=0, le=300,
                                      description="Grace period before SIGKILL on stop.")
    pids_limit: int = Field(4096, ge=16, description="PIDs limit of each container.")
    log_max_mib: int | None = Field(
        100, ge=1, le=1_000_000, description="Most MiB of output the engine keeps per "
        "container (the `json-file` log driver's `max-size`; Podman truncates its log file "
        "there, Docker rotates it). null: the engine's own log driver and limits, which "
        "by default keep everything a container prints.")
    start_check_seconds: float = Field(
        0.1, ge=0, le=10, description="Engines whose processes this host cannot see "
        "(remote, or in another PID namespace) only: how long after start a container whose "
        "startup command cannot be executed (the init process exits at once) counts as "
        "failed to start rather than crashed. Otherwise the driver sees the command's "
        "process itself.")

    @field_validator("engine_url")
    @classmethod
    def _engine_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme == "unix":
            path = v[len("unix://"):]
            if not path.startswith("/"):
                raise ValueError("engine_url: unix:// needs an absolute socket path")
            return v
        if parts.scheme in ("tcp", "http", "https"):
            try:
                port = parts.port
            except ValueError:
                port = None
            if not parts.hostname or port is None:
                raise ValueError("engine_url: tcp:// needs host:port")
            return v
        raise ValueError("engine_url must start with unix:// or tcp://")

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or any(not g.strip() for g in v):
            raise ValueError("gpus must be distinct, non-empty device names")
        return v

    @model_validator(mode="after")
    def _combined(self) -> DockerConfig:
        if self.tls is not None and self.engine_url.startswith("unix://"):
            raise ValueError("tls only applies to tcp:// engines")
        if self.gpu_mode == "cdi" and not self.gpus:
            raise ValueError("gpu_mode cdi needs the gpus inventory (CDI device names)")
        if self.gpu_mode == "none" and self.gpus:
            raise ValueError("gpus given but gpu_mode is none")
        return self

    @property
    def host(self) -> str:
        if self.public_host:
            return self.public_host
        if self.engine_url.startswith("unix://"):
            return "127.0.0.1"
        return urlsplit(self.engine_url).hostname or "127.0.0.1"

    @property
    def is_local(self) -> bool:
        """The engine runs on this machine, so host ports can be probed here."""
        return self.engine_url.startswith("unix://")

    @property
    def socket_path(self) -> str:
        """The local engine's socket file (`unix:///run/x.sock` → `/run/x.sock`)."""
        return self.engine_url.removeprefix("unix://")


def parse_config(config: dict[str, Any]) -> DockerConfig:
    """The typed config, or ValueError with a one-line reason per problem."""
    return parse_model(DockerConfig, config)


def normalized(config: dict[str, Any]) -> dict[str, Any]:
    """What gets stored: defaults filled in, JSON-friendly."""
    cfg = parse_config(config)
    out = cfg.model_dump(exclude_none=True)
    out["port_range"] = list(cfg.port_range)
    return out
