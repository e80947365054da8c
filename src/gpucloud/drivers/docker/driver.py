"""The `docker` driver: each container instance is one container on a Docker or Podman engine.

Containers carry labels that make them findable without any local bookkeeping:
`gpucloud.managed=true`, `gpucloud.provider=<provider id>`, `gpucloud.instance=<instance id>`,
`gpucloud.generation=<config generation>`, `gpucloud.expose=<80/http=30000,...>`. That is what
makes `create` idempotent (a retry finds the container by label), lets `list_owned` see strays
after a crash, and lets an update hand over from one container to its replacement.

Host ports and GPU devices are allocated by the control plane (instances/allocations.py) and
arrive in the spec (`ports`, `gpu_devices`): the driver touches no database. A container that
vanished is reported `gone`; recreating it is the lifecycle's decision. See
docs/docker-driver.md for the operator view, docs/drivers.md for the contract.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import docker

from gpucloud.drivers.base import (
    Driver,
    DriverContext,
    DriverEvent,
    WorkloadSpec,
    WorkloadStatus,
)
from gpucloud.drivers.docker.build import ContainerBuilder
from gpucloud.drivers.docker.config import normalized, parse_config
from gpucloud.drivers.docker.containers import Containers, note
from gpucloud.drivers.docker.engine import Engine, EngineError
from gpucloud.drivers.docker.events import to_driver_events
from gpucloud.drivers.docker.labels import (
    FIRST_GENERATION,
    L_INSTANCE,
    L_MANAGED,
    L_PROVIDER,
    container_name,
    since_of,
)
from gpucloud.drivers.docker.pulls import Pulls
from gpucloud.drivers.docker.update import Updater
from gpucloud.drivers.hostports import host_port_free

# The whole log (no `last`) is the container's last LOG_LINES lines, and any answer at most
# the last LOG_BYTES of what the engine sends: a container that prints without end (or one
# endless line) must not make a poll of its logs hold all of it in memory.
LOG_LINES = 10_000
LOG_BYTES = 1 << 20
# Podman refuses a logs read that meets a torn line (see `logs`); the tries are spread over
# LOG_PAUSE × (1 + 2 + 4 + 8) = 0.75 s so that a writer descheduled mid-line can finish it.
LOG_TRIES = 5
LOG_PAUSE = 0.05


def _end_of(chunks, limit: int) -> tuple[bytes, bool]:
    """The last `limit` bytes of a stream, and whether anything before them was dropped."""
    kept = bytearray()
    dropped = False
    for chunk in chunks:
        kept += chunk
        if len(kept) > 2 * limit:
            del kept[:-limit]
            dropped = True
    if len(kept) > limit:
        del kept[:-limit]
        dropped = True
    return bytes(kept), dropped


class DockerDriver(Driver):
    name = "docker"
    workloads = frozenset({"container"})

    def __init__(self, provider_id: str, config: dict[str, Any], ctx: DriverContext):
        super().__init__(provider_id, config, ctx)
        self.cfg = parse_config(config)
        self.engine = Engine(self.cfg)
        self.port_range = tuple(self.cfg.port_range)
        self.containers = Containers(self.engine, self.cfg, provider_id)
        self.pulls = Pulls(self.engine)
        self.builder = ContainerBuilder(self.engine, self.cfg, provider_id)
        self.updater = Updater(self.containers, self.builder, self.pulls,
                               ctx.clock, self._create)

    # -- what the control plane allocates ----------------------------------------------------
    def wanted_ports(self, spec: WorkloadSpec) -> list[tuple[int, str]]:
        return [(p.port, p.protocol) for p in spec.expose]

    def port_free(self, port: int, protocol: str) -> bool:
        # An engine on this machine publishes on this machine's ports: one that another
        # process listens on would make the container fail to start.
        return host_port_free(port, protocol) if self.cfg.is_local else True

    def gpu_pool(self, spec: WorkloadSpec) -> list[str]:
        return list(self.cfg.gpus) if self.cfg.gpu_mode != "none" else []

    # -- config ------------------------------------------------------------------------------
    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        return normalized(config)

    @classmethod
    def public_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        # TLS options are file paths on this server, not key material; still, keep listings
        # to what an operator needs to recognize the provider.
        out = dict(config)
        if out.get("tls"):
            out["tls"] = {k: v for k, v in out["tls"].items() if k == "verify"}
        return out

    # -- create ------------------------------------------------------------------------------
    def create(self, spec: WorkloadSpec) -> WorkloadStatus:
        return self._create(spec, spec.generation or FIRST_GENERATION)

    def _create(self, spec: WorkloadSpec, generation: int) -> WorkloadStatus:
        notes: list[dict[str, str]] = []
        existing = self.containers.pick(self.containers.of_instance(spec.instance_id))
        if existing is not None:
            # A retry after a crash (or a recreate of a lost workload): reuse what exists.
            if existing.status == "created":
                try:
                    self.engine.call(existing.start)
                except EngineError as exc:
                    return WorkloadStatus(phase="failed",
                                          reason=f"Container could not start: {exc}")
            return self.containers.status_of(existing, None)
        # The image first: pulled in the background while this call returns `pending`.
        waiting, image_note = self.pulls.image_ready(spec, self.ctx.clock)
        if waiting is not None:
            return waiting
        since = int(time.time()) - 1
        state = {"since": since, "notes": notes}
        note(notes, image_note)
        ports = {(p.port, p.protocol): p.external_port for p in spec.ports}
        try:
            container = self.builder.make(spec, generation, ports,
                                          container_name(spec.instance_id), since)
        except EngineError as exc:
            return WorkloadStatus(phase="failed", reason=f"Container could not be created: "
                                  f"{exc}", state=state)
        try:
            self.engine.call(container.start)
        except EngineError as exc:
            return WorkloadStatus(phase="failed", reason=f"Container could not start: {exc}",
                                  state=state)
        exec_error = self.containers.exec_failure(container)
        if exec_error:
            what = spec.startup_command or "the image's default command"
            return WorkloadStatus(phase="failed", reason=f"Container could not start "
                                  f"({what[:200]}): {exec_error}", state=state)
        return self.containers.status_of(container, state)

    def update(self, spec: WorkloadSpec, generation: int) -> WorkloadStatus:
        return self.updater.update(spec, generation)

    # -- status ------------------------------------------------------------------------------
    def status(self, instance_id: str, state: dict[str, Any] | None) -> WorkloadStatus:
        container = self.containers.pick(self.containers.of_instance(instance_id))
        if container is not None:
            try:
                return self.containers.status_of(container, state)
            except docker.errors.NotFound:
                pass  # removed while we looked
        return WorkloadStatus(phase="gone", reason="The container no longer exists",
                              state=state)

    # -- delete ------------------------------------------------------------------------------
    def delete(self, instance_id: str, state: dict[str, Any] | None) -> None:
        for container in self.containers.of_instance(instance_id):
            if container.status == "running":
                try:
                    self.engine.call(container.stop, timeout=self.cfg.stop_timeout_seconds)
                except (docker.errors.NotFound, EngineError):
                    pass  # already stopping or gone: removal below settles it
            self.containers.remove(container)

    # -- observation -------------------------------------------------------------------------
    def logs(self, instance_id: str, state: dict[str, Any] | None, last: int | None) -> list[str]:
        container = self.containers.pick(self.containers.of_instance(instance_id))
        if container is None:
            return []
        for attempt in range(LOG_TRIES):
            try:
                raw, cut = self.engine.call(lambda: _end_of(container.logs(
                    stdout=True, stderr=True, stream=True, follow=False,
                    tail=last if last else LOG_LINES), LOG_BYTES))
                break
            except docker.errors.NotFound:
                return []
            except EngineError:
                # Podman refuses a read that meets a line its monitor is still writing, or a
                # log it is truncating at `log_max_mib` ("… is not a valid container log
                # line"): 3% of polls of a container printing without end. Three immediate
                # tries all met the same torn line on a loaded host (a full test run): the
                # writer had not run since. A read changes nothing: again, after a pause.
                if attempt == LOG_TRIES - 1:
                    raise
                time.sleep(LOG_PAUSE * 2 ** attempt)
        lines = raw.decode("utf-8", errors="replace").splitlines()
        if cut and lines:
            lines = lines[1:]  # begins mid-line: not a line the container printed
        return lines[-last:] if last else lines

    def events(self, instance_id: str, state: dict[str, Any] | None) -> list[DriverEvent]:
        state = state or {}
        out = [DriverEvent(at=dt.datetime.fromisoformat(n["at"]), message=n["message"])
               for n in state.get("notes") or []]
        since = state.get("since")
        if since is None:
            stamps = [since_of(c) for c in self.containers.of_instance(instance_id)]
            if not stamps:
                return out
            since = min(stamps)
        client = self.engine.client
        raw = self.engine.call(lambda: list(client.events(
            since=int(since), until=int(time.time()) + 1, decode=True,
            filters={"label": [f"{L_INSTANCE}={instance_id}",
                               f"{L_PROVIDER}={self.provider_id}"]})))
        out.extend(to_driver_events(raw, instance_id))
        out.sort(key=lambda e: e.at)
        return out

    def list_owned(self) -> list[str]:
        rows = self.containers.summaries(f"{L_MANAGED}=true")
        return sorted({r["Labels"][L_INSTANCE] for r in rows
                       if (r.get("Labels") or {}).get(L_INSTANCE)})

    def ping(self) -> bool:
        return self.engine.ping()

    def close(self) -> None:
        self.engine.close()
