"""The `docker` driver: each container instance is one container on a Docker or Podman engine.

Containers carry labels that make them findable without any local bookkeeping:
`gpucloud.managed=true`, `gpucloud.provider=<provider id>`, `gpucloud.instance=<instance id>`,
`gpucloud.generation=<config generation>`, `gpucloud.expose=<80/http=30000,...>`. That is what
makes `create` idempotent (a retry finds the container by label), lets `list_owned` see strays
after a crash, and lets an update hand over from one container to its replacement.

Host ports and GPU devices are allocated by the control plane (instances/allocations.py) and
arrive in the spec (`ports`, `gpu_devices`): the driver touches no database, so they are
unique per provider across processes and survive updates. See docs/docker-driver.md for the
operator view.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from gpucloud.drivers.base import (
    Driver,
    DriverContext,
    DriverEvent,
    DriverTransientError,
    WorkloadSpec,
    WorkloadStatus,
)
from gpucloud.drivers.docker_build import ContainerBuilder
from gpucloud.drivers.docker_config import normalized, parse_config
from gpucloud.drivers.docker_engine import Engine, EngineError, short_error
from gpucloud.drivers.docker_events import to_driver_events
from gpucloud.drivers.docker_labels import (
    FIRST_GENERATION,
    L_EXPOSE,
    L_INSTANCE,
    L_MANAGED,
    L_PROVIDER,
    MAX_NOTES,
    container_name,
    forwarded_ports,
    generation_of,
    since_of,
)
from gpucloud.drivers.docker_startcheck import exec_failure
from gpucloud.drivers.docker_update import UpdateMixin
from gpucloud.drivers.hostports import host_port_free


def _wall() -> dt.datetime:
    # Engine events carry the engine host's wall time; our own notes use the same clock so
    # the two interleave correctly.
    return dt.datetime.now(dt.UTC)


class DockerDriver(ContainerBuilder, UpdateMixin, Driver):
    name = "docker"
    workloads = frozenset({"container"})

    def __init__(self, provider_id: str, config: dict[str, Any], ctx: DriverContext):
        super().__init__(provider_id, config, ctx)
        self.cfg = parse_config(config)
        self.engine = Engine(self.cfg)
        self.port_range = tuple(self.cfg.port_range)

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

    # -- lookups -----------------------------------------------------------------------------
    def _summaries(self, *labels: str) -> list[dict[str, Any]]:
        """The engine's container list (no per-container inspect: one call, and no race with
        a container removed between listing and inspecting)."""
        client = self.engine.client
        return self.engine.call(client.api.containers, all=True,
                                filters={"label": [f"{L_PROVIDER}={self.provider_id}", *labels]})

    def _containers(self, instance_id: str) -> list[Any]:
        import docker

        client = self.engine.client
        out = []
        for row in self._summaries(f"{L_INSTANCE}={instance_id}"):
            try:
                out.append(self.engine.call(client.containers.get, row["Id"]))
            except docker.errors.NotFound:
                continue  # removed since the listing
        return out

    def _pick(self, containers: list[Any]):
        """The instance's current container: a running one wins (an update in flight or
        half-done must not hide the container that serves), then the newest config."""
        if not containers:
            return None
        return max(containers, key=lambda c: (c.status == "running", generation_of(c)))

    # -- create ------------------------------------------------------------------------------
    def create(self, spec: WorkloadSpec) -> WorkloadStatus:
        return self._create(spec, spec.generation or FIRST_GENERATION)

    def _create(self, spec: WorkloadSpec, generation: int) -> WorkloadStatus:
        notes: list[dict[str, str]] = []
        existing = self._pick(self._containers(spec.instance_id))
        if existing is not None:
            # A retry after a crash (or a recreate of a lost workload): reuse what exists.
            if existing.status == "created":
                try:
                    self.engine.call(existing.start)
                except EngineError as exc:
                    return WorkloadStatus(phase="failed",
                                          reason=f"Container could not start: {exc}")
            return self._status_of(existing, None)
        since = int(time.time()) - 1
        state = {"since": since, "notes": notes}
        reason = self._ensure_image(spec, notes)
        if reason is not None:
            return WorkloadStatus(phase="failed", reason=reason, state=state)
        ports = self._ports(spec)
        try:
            container = self._make_container(spec, generation, ports,
                                             container_name(spec.instance_id), since)
        except EngineError as exc:
            return WorkloadStatus(phase="failed", reason=f"Container could not be created: "
                                  f"{exc}", state=state)
        try:
            self.engine.call(container.start)
        except EngineError as exc:
            return WorkloadStatus(phase="failed", reason=f"Container could not start: {exc}",
                                  state=state)
        exec_error = self._exec_failure(container)
        if exec_error:
            what = spec.startup_command or "the image's default command"
            return WorkloadStatus(phase="failed", reason=f"Container could not start "
                                  f"({what[:200]}): {exec_error}", state=state)
        return self._status_of(container, state)

    def _exec_failure(self, container) -> str | None:
        return exec_failure(self.engine, container, self.cfg.start_check_seconds,
                            self.cfg.is_local)

    def _ensure_image(self, spec: WorkloadSpec, notes: list[dict[str, str]]) -> str | None:
        """Pull the image unless the engine already has it. None, or why it failed."""
        import docker

        image = spec.image or ""
        client = self.engine.client
        try:
            self.engine.call(client.images.get, image)
            self._note(notes, f"Image {image} present on the host (no pull needed)")
            return None
        except docker.errors.NotFound:
            pass
        except EngineError as exc:
            return f"Image {image} could not be inspected: {exc}"
        from docker.utils import parse_repository_tag

        repo, tag = parse_repository_tag(image)
        auth = None
        if spec.credentials:
            auth = {"username": spec.credentials.get("username"),
                    "password": spec.credentials.get("password"),
                    "serveraddress": spec.credentials.get("host")}
        self._note(notes, f"Pulling image {image}")
        try:
            stream = self.engine.call(client.api.pull, repo, tag=tag or "latest", stream=True,
                                      decode=True, auth_config=auth)
            for line in stream:
                if isinstance(line, dict) and line.get("error"):
                    return f"Image {image} could not be pulled: " \
                           f"{' '.join(str(line['error']).split())[:500]}"
        except docker.errors.NotFound as exc:
            return f"Image {image} could not be pulled: {short_error(exc)}"
        except EngineError as exc:
            return f"Image {image} could not be pulled: {exc}"
        self._note(notes, f"Image {image} pulled")
        return None

    def _ports(self, spec: WorkloadSpec) -> dict[tuple[int, str], int]:
        """The host ports the control plane allocated, by (internal port, protocol)."""
        return {(p.port, p.protocol): p.external_port for p in spec.ports}

    # -- status ------------------------------------------------------------------------------
    def status(self, instance_id: str, state: dict[str, Any] | None) -> WorkloadStatus:
        import docker

        container = self._pick(self._containers(instance_id))
        if container is not None:
            try:
                return self._status_of(container, state)
            except docker.errors.NotFound:
                pass  # removed while we looked
        return WorkloadStatus(phase="gone", reason="The container no longer exists",
                              state=state)

    def _status_of(self, container, state: dict[str, Any] | None) -> WorkloadStatus:
        self.engine.call(container.reload)
        st = container.attrs.get("State") or {}
        new_state = dict(state or {})
        new_state.update(container_id=container.id, name=container.name,
                         generation=generation_of(container))
        new_state.setdefault("since", since_of(container))
        if container.status == "created":
            if st.get("Error"):
                return WorkloadStatus(phase="failed", state=new_state,
                                      reason=f"Container could not start: {st['Error']}")
            # Made but not started (a crash between the two): finish the job.
            try:
                self.engine.call(container.start)
            except EngineError as exc:
                return WorkloadStatus(phase="failed", state=new_state,
                                      reason=f"Container could not start: {exc}")
            self.engine.call(container.reload)
            st = container.attrs.get("State") or {}
        if container.status == "removing":
            return WorkloadStatus(phase="gone", reason="The container is being removed",
                                  state=new_state)
        started = bool(st.get("Running")) and not st.get("Restarting") and not st.get("Paused")
        forwarded = forwarded_ports(container.labels.get(L_EXPOSE, ""))
        uri = next((f"http://{self.cfg.host}:{f.external_port}" for f in forwarded
                    if f.port == 80 and f.protocol == "http"), None)
        reason = None
        if not started and not st.get("Running"):
            code = st.get("ExitCode")
            reason = f"Container exited with code {code}" + (" (out of memory)"
                                                             if st.get("OOMKilled") else "")
        return WorkloadStatus(phase="running", domain=self.cfg.host, forwarded_ports=forwarded,
                              uri=uri, container_started=started, reason=reason,
                              applied_generation=generation_of(container), state=new_state)

    # -- delete ------------------------------------------------------------------------------
    def delete(self, instance_id: str, state: dict[str, Any] | None) -> None:
        import docker

        for container in self._containers(instance_id):
            if container.status == "running":
                try:
                    self.engine.call(container.stop, timeout=self.cfg.stop_timeout_seconds)
                except (docker.errors.NotFound, EngineError):
                    pass  # already stopping or gone: removal below settles it
            self._remove(container)

    # -- observation -------------------------------------------------------------------------
    def logs(self, instance_id: str, state: dict[str, Any] | None, last: int | None) -> list[str]:
        import docker

        container = self._pick(self._containers(instance_id))
        if container is None:
            return []
        try:
            raw = self.engine.call(container.logs, stdout=True, stderr=True,
                                   tail=last if last else "all")
        except docker.errors.NotFound:
            return []
        lines = raw.decode("utf-8", errors="replace").splitlines()
        return lines[-last:] if last else lines

    def events(self, instance_id: str, state: dict[str, Any] | None) -> list[DriverEvent]:
        state = state or {}
        out = [DriverEvent(at=dt.datetime.fromisoformat(n["at"]), message=n["message"])
               for n in state.get("notes") or []]
        since = state.get("since")
        if since is None:
            stamps = [since_of(c) for c in self._containers(instance_id)]
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
        rows = self._summaries(f"{L_MANAGED}=true")
        return sorted({r["Labels"][L_INSTANCE] for r in rows
                       if (r.get("Labels") or {}).get(L_INSTANCE)})

    def ping(self) -> bool:
        return self.engine.ping()

    def close(self) -> None:
        self.engine.close()

    @staticmethod
    def _note(notes: list[dict[str, str]], message: str) -> None:
        notes.append({"at": _wall().isoformat(), "message": message})
        del notes[:-MAX_NOTES]


__all__ = ["DockerDriver", "DriverTransientError", "container_name"]
