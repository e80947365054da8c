"""The `docker` driver: each container instance is one container on a Docker or Podman engine.

Containers carry labels that make them findable without any local bookkeeping:
`gpucloud.managed=true`, `gpucloud.provider=<provider id>`, `gpucloud.instance=<instance id>`,
`gpucloud.generation=<config generation>`, `gpucloud.expose=<80/http=30000,...>`. That is what
makes `create` idempotent (a retry finds the container by label), lets `list_owned` see strays
after a crash, and lets an update hand over from one container to its replacement.

Host ports come from the `port_allocations` table (see docker_ports), so they are unique per
provider across processes and survive updates. See docs/docker-driver.md for the operator view.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
import threading
import time
from typing import Any

from gpucloud.drivers import docker_ports
from gpucloud.drivers.base import (
    Driver,
    DriverEvent,
    DriverTransientError,
    ForwardedPort,
    WorkloadSpec,
    WorkloadStatus,
)
from gpucloud.drivers.docker_config import normalized, parse_config
from gpucloud.drivers.docker_engine import Engine, EngineError, short_error
from gpucloud.drivers.docker_events import to_driver_events

L_MANAGED, L_PROVIDER, L_INSTANCE = "gpucloud.managed", "gpucloud.provider", "gpucloud.instance"
L_GENERATION, L_EXPOSE, L_GPUS = "gpucloud.generation", "gpucloud.expose", "gpucloud.gpus"
# When the instance's first container was made (epoch seconds): carried over to replacements
# so /events still finds the engine's events of containers an update removed.
L_SINCE = "gpucloud.since"
FIRST_GENERATION = 1  # the control plane numbers container configs from 1
MAX_NOTES = 50
# catatonit: "failed to exec pid1: No such file…"; tini: "exec /x failed: No such file…".
_EXEC_FAILED = re.compile(r"failed to exec|exec .* failed", re.IGNORECASE)


def container_name(instance_id: str) -> str:
    return f"gpucloud-{instance_id}"


def _wall() -> dt.datetime:
    # Engine events carry the engine host's wall time; our own notes use the same clock so
    # the two interleave correctly.
    return dt.datetime.now(dt.UTC)


class DockerDriver(Driver):
    name = "docker"
    workloads = frozenset({"container"})

    def __init__(self, provider_id: str, config: dict[str, Any], runtime: Any):
        super().__init__(provider_id, config, runtime)
        self.cfg = parse_config(config)
        self.engine = Engine(self.cfg)
        self._gpu_lock = threading.Lock()

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
    def _containers(self, instance_id: str) -> list[Any]:
        client = self.engine.client
        found = self.engine.call(client.containers.list, all=True, filters={"label": [
            f"{L_PROVIDER}={self.provider_id}", f"{L_INSTANCE}={instance_id}"]})
        return list(found)

    @staticmethod
    def _generation(container) -> int:
        try:
            return int(container.labels.get(L_GENERATION, "0"))
        except ValueError:
            return 0

    def _pick(self, containers: list[Any]):
        """The instance's current container: a running one wins (an update in flight or
        half-done must not hide the container that serves), then the newest config."""
        if not containers:
            return None
        return max(containers, key=lambda c: (c.status == "running", self._generation(c)))

    # -- create ------------------------------------------------------------------------------
    def create(self, spec: WorkloadSpec) -> WorkloadStatus:
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
        try:
            ports = self._ports(spec)
        except docker_ports.PortsExhausted as exc:
            return WorkloadStatus(phase="failed", reason=str(exc), state=state)
        try:
            container = self._make_container(spec, FIRST_GENERATION, ports,
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
        """The init process (catatonit, tini) reports a startup command that cannot be
        executed and exits at once: that is a container that cannot start, not a crash."""
        deadline = time.monotonic() + self.cfg.start_check_seconds
        while True:
            self.engine.call(container.reload)
            if container.status != "running":
                break
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)
        raw = self.engine.call(container.logs, stdout=True, stderr=True, tail=5)
        for line in raw.decode("utf-8", errors="replace").splitlines():
            if _EXEC_FAILED.search(line):
                return line.strip()[:300]
        return None

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
        probe = docker_ports.host_port_free if self.cfg.is_local else None
        return docker_ports.allocate(self.runtime, self.provider_id, spec.instance_id,
                                     [(p.port, p.protocol) for p in spec.expose],
                                     tuple(self.cfg.port_range), probe)

    def _make_container(self, spec: WorkloadSpec, generation: int,
                        ports: dict[tuple[int, str], int], name: str, since: int):
        env = dict(spec.environment)
        if spec.ssh_key and "SSH_PUBKEY" not in env:
            env["SSH_PUBKEY"] = spec.ssh_key
        published = {f"{port}/{'udp' if proto == 'udp' else 'tcp'}": host
                     for (port, proto), host in ports.items()}
        labels = {L_MANAGED: "true", L_PROVIDER: self.provider_id,
                  L_INSTANCE: spec.instance_id, L_GENERATION: str(generation),
                  L_SINCE: str(since),
                  L_EXPOSE: ",".join(f"{p}/{proto}={h}" for (p, proto), h in ports.items())}
        kwargs: dict[str, Any] = {
            "image": spec.image, "name": name, "labels": labels, "environment": env, "ports": published,
            "nano_cpus": int(spec.vcpu) * 1_000_000_000, "mem_limit": f"{int(spec.memory_gib)}g",
            "memswap_limit": f"{int(spec.memory_gib)}g", "pids_limit": self.cfg.pids_limit,
            "init": True, "detach": True, "stop_signal": "SIGTERM",
            "restart_policy": {"Name": self.cfg.restart_policy} if self.cfg.restart_policy != "no"
            else None,
        }
        if spec.startup_command:
            kwargs["command"] = _command(spec.startup_command)
        if self.cfg.network:
            kwargs["network"] = self.cfg.network
        if self.cfg.gpu_mode != "none" and spec.gpu_count > 0:
            with self._gpu_lock:
                devices = self._pick_gpus(spec)
                labels[L_GPUS] = ",".join(devices)
                self._gpu_kwargs(kwargs, spec.gpu_count, devices)
                return self._create_named(kwargs, spec.instance_id, name)
        return self._create_named(kwargs, spec.instance_id, name)

    def _create_named(self, kwargs: dict[str, Any], instance_id: str, name: str):
        import docker

        client = self.engine.client
        try:
            return self.engine.call(client.containers.create, **kwargs)
        except EngineError as exc:
            if "already in use" not in str(exc) and "conflict" not in str(exc).lower():
                raise
            # Another worker made it between our lookup and create: take that one.
            try:
                return self.engine.call(client.containers.get, name)
            except docker.errors.NotFound:
                raise exc from None

    def _pick_gpus(self, spec: WorkloadSpec) -> list[str]:
        if not self.cfg.gpus:
            return []
        client = self.engine.client
        busy: set[str] = set()
        for c in self.engine.call(client.containers.list, all=True, filters={"label": [
                f"{L_PROVIDER}={self.provider_id}"]}):
            if c.labels.get(L_INSTANCE) == spec.instance_id:
                continue
            busy.update(g for g in c.labels.get(L_GPUS, "").split(",") if g)
        free = [g for g in self.cfg.gpus if g not in busy]
        if len(free) < spec.gpu_count:
            raise EngineError(f"Not enough free GPUs on the host ({len(free)} free, "
                              f"{spec.gpu_count} wanted)")
        return free[:spec.gpu_count]

    def _gpu_kwargs(self, kwargs: dict[str, Any], count: int, devices: list[str]) -> None:
        import docker

        if self.cfg.gpu_mode == "nvidia":
            if devices:
                req = docker.types.DeviceRequest(driver="nvidia", device_ids=devices,
                                                 capabilities=[["gpu"]])
            else:
                req = docker.types.DeviceRequest(driver="nvidia", count=count,
                                                 capabilities=[["gpu"]])
            kwargs["device_requests"] = [req]
        elif self.engine.is_podman():
            kwargs["devices"] = devices  # Podman resolves CDI names given as devices
        else:
            kwargs["device_requests"] = [docker.types.DeviceRequest(driver="cdi",
                                                                    device_ids=devices)]

    # -- status ------------------------------------------------------------------------------
    def status(self, instance_id: str, state: dict[str, Any] | None) -> WorkloadStatus:
        container = self._pick(self._containers(instance_id))
        if container is None:
            return WorkloadStatus(phase="gone", reason="The container no longer exists",
                                  state=state)
        return self._status_of(container, state)

    def _status_of(self, container, state: dict[str, Any] | None) -> WorkloadStatus:
        self.engine.call(container.reload)
        st = container.attrs.get("State") or {}
        new_state = dict(state or {})
        new_state.update(container_id=container.id, name=container.name,
                         generation=self._generation(container))
        new_state.setdefault("since", _since(container))
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
        forwarded = _forwarded(container.labels.get(L_EXPOSE, ""))
        uri = next((f"http://{self.cfg.host}:{f.external_port}" for f in forwarded
                    if f.port == 80 and f.protocol == "http"), None)
        reason = None
        if not started and not st.get("Running"):
            code = st.get("ExitCode")
            reason = f"Container exited with code {code}" + (" (out of memory)"
                                                             if st.get("OOMKilled") else "")
        return WorkloadStatus(phase="running", domain=self.cfg.host, forwarded_ports=forwarded,
                              uri=uri, container_started=started, reason=reason,
                              applied_generation=self._generation(container), state=new_state)

    # -- update ------------------------------------------------------------------------------
    def update(self, spec: WorkloadSpec, generation: int) -> WorkloadStatus:
        containers = self._containers(spec.instance_id)
        current = self._pick(containers)
        if current is None:
            # Nothing to replace (lost meanwhile): start the new config afresh.
            status = self.create_generation(spec, generation)
            return status
        if self._generation(current) == generation and current.status == "running":
            self._remove_others(containers, keep=current)
            return self._applied(current)
        notes: list[dict[str, str]] = []
        reason = self._ensure_image(spec, notes)
        if reason is not None:
            return self._kept(current, f"Update failed, previous container kept: {reason}")
        ports = self._ports(spec)  # the instance's existing ports: unchanged
        replacement = next((c for c in containers if self._generation(c) == generation
                            and c.id != current.id), None)
        if replacement is None:
            try:
                replacement = self._make_container(
                    spec, generation, ports, f"{container_name(spec.instance_id)}-g{generation}",
                    _since(current))
            except EngineError as exc:
                return self._kept(current, f"Update failed, previous container kept: {exc}")
        # Host ports can only be bound once: stop the old container, then start the new one,
        # and bring the old one back if the new one does not start.
        self.engine.call(current.stop, timeout=self.cfg.stop_timeout_seconds)
        try:
            self.engine.call(replacement.start)
        except EngineError as exc:
            self._remove(replacement)
            self.engine.call(current.start)
            return self._kept(current, f"Update failed, previous container kept: "
                                       f"container could not start: {exc}")
        self._remove(current)
        self._remove_others(containers, keep=replacement)
        self.engine.call(replacement.rename, container_name(spec.instance_id))
        return self._applied(replacement)

    def _applied(self, container) -> WorkloadStatus:
        # The new config is in place: a process that then exits is the container's business
        # (shown as NOT_STARTED by the watch), not a failed update.
        status = self._status_of(container, None)
        status.reason = None
        return status

    def create_generation(self, spec: WorkloadSpec, generation: int) -> WorkloadStatus:
        notes: list[dict[str, str]] = []
        reason = self._ensure_image(spec, notes)
        if reason is not None:
            return WorkloadStatus(phase="failed", reason=reason)
        container = self._make_container(spec, generation, self._ports(spec),
                                         container_name(spec.instance_id),
                                         int(time.time()) - 1)
        try:
            self.engine.call(container.start)
        except EngineError as exc:
            return WorkloadStatus(phase="failed", reason=f"Container could not start: {exc}")
        return self._status_of(container, None)

    def _kept(self, current, reason: str) -> WorkloadStatus:
        status = self._status_of(current, None)
        status.reason = reason
        return status

    def _remove(self, container) -> None:
        import docker

        try:
            self.engine.call(container.remove, v=True, force=True)
        except docker.errors.NotFound:
            pass

    def _remove_others(self, containers: list[Any], keep) -> None:
        for c in containers:
            if c.id != keep.id:
                self._remove(c)

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
        docker_ports.release(self.runtime, instance_id)

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
            stamps = [_since(c) for c in self._containers(instance_id)]
            if not stamps:
                return out
            since = min(stamps)
        client = self.engine.client
        raw = self.engine.call(lambda: list(client.events(
            since=int(since), until=int(time.time()) + 1, decode=True,
            filters={"label": [f"{L_INSTANCE}={instance_id}",
                               f"{L_PROVIDER}={self.provider_id}"]})))
        out.extend(to_driver_events(raw))
        out.sort(key=lambda e: e.at)
        return out

    def list_owned(self) -> list[str]:
        client = self.engine.client
        found = self.engine.call(client.containers.list, all=True, filters={"label": [
            f"{L_MANAGED}=true", f"{L_PROVIDER}={self.provider_id}"]})
        return sorted({c.labels[L_INSTANCE] for c in found if c.labels.get(L_INSTANCE)})

    def ping(self) -> bool:
        return self.engine.ping()

    def close(self) -> None:
        self.engine.close()

    @staticmethod
    def _note(notes: list[dict[str, str]], message: str) -> None:
        notes.append({"at": _wall().isoformat(), "message": message})
        del notes[:-MAX_NOTES]


def _command(startup_command: str) -> list[str]:
    """Split like a shell would (as `docker run IMAGE cmd…` and compose do); the image's
    ENTRYPOINT stays. Unbalanced quotes: let a shell make sense of it."""
    try:
        return shlex.split(startup_command)
    except ValueError:
        return ["/bin/sh", "-c", startup_command]


def _forwarded(label: str) -> list[ForwardedPort]:
    out = []
    for item in filter(None, label.split(",")):
        inner, _, host = item.partition("=")
        port, _, proto = inner.partition("/")
        out.append(ForwardedPort(port=int(port), external_port=int(host), protocol=proto))
    return out


def _since(container) -> int:
    label = container.labels.get(L_SINCE, "")
    if label.isdigit():
        return int(label)
    created = container.attrs.get("Created")
    return int(_parse_ts(created).timestamp()) - 1 if created else int(time.time()) - 3600


def _parse_ts(value: str) -> dt.datetime:
    # Engines give RFC 3339 with nanoseconds; Python wants at most microseconds.
    head, _, frac = value.rstrip("Z").partition(".")
    frac = "".join(ch for ch in frac if ch.isdigit())[:6]
    base = dt.datetime.fromisoformat(head + (f".{frac}" if frac else ""))
    if base.tzinfo is None:
        base = base.replace(tzinfo=dt.UTC)
    return base


__all__ = ["DockerDriver", "DriverTransientError", "container_name"]
