"""Updates: replace an instance's container with one of the new config, same host ports.

A collaborator of DockerDriver. Host ports can only be bound once, so the old container is
stopped just before the new one starts, and started again if the new one does not; the
replacement is created (not started) beforehand, so most failures (bad image, bad config)
never touch the running container.
"""

from __future__ import annotations

from collections.abc import Callable

from gpucloud.drivers.base import Clock, WorkloadSpec, WorkloadStatus
from gpucloud.drivers.docker.build import ContainerBuilder
from gpucloud.drivers.docker.containers import Containers
from gpucloud.drivers.docker.engine import EngineError
from gpucloud.drivers.docker.labels import container_name, generation_of, since_of
from gpucloud.drivers.docker.pulls import Pulls


class Updater:
    def __init__(self, containers: Containers, builder: ContainerBuilder, pulls: Pulls,
                 clock: Clock, create: Callable[[WorkloadSpec, int], WorkloadStatus]):
        self.containers = containers
        self.pulls = pulls
        self.clock = clock
        self.builder = builder
        self.engine = containers.engine
        self.cfg = containers.cfg
        self._create = create  # the driver's create, for an instance with nothing to replace

    def update(self, spec: WorkloadSpec, generation: int) -> WorkloadStatus:
        containers = self.containers.of_instance(spec.instance_id)
        current = self.containers.pick(containers)
        if current is None:
            # Nothing to replace (lost meanwhile): start the new config afresh.
            return self._create(spec, generation)
        if generation_of(current) == generation and current.status == "running":
            self.containers.remove_others(containers, keep=current)
            return self._applied(current)
        # The new image is pulled in the background; the old container serves meanwhile.
        waiting, _ = self.pulls.image_ready(spec, self.clock)
        if waiting is not None and waiting.phase == "failed":
            return self._kept(current, waiting.reason or "the image could not be pulled")
        if waiting is not None:
            return waiting
        # The instance's existing ports (allocated by the control plane): unchanged.
        ports = {(p.port, p.protocol): p.external_port for p in spec.ports}
        replacement = next((c for c in containers if generation_of(c) == generation
                            and c.id != current.id), None)
        if replacement is None:
            try:
                replacement = self.builder.make(
                    spec, generation, ports, f"{container_name(spec.instance_id)}-g{generation}",
                    since_of(current))
            except EngineError as exc:
                return self._kept(current, f"Container could not be created: {exc}")
        # Host ports can only be bound once: stop the old container, then start the new one,
        # and bring the old one back if the new one does not start.
        self.engine.call(current.stop, timeout=self.cfg.stop_timeout_seconds)
        try:
            self.engine.call(replacement.start)
            failure = self.containers.exec_failure(replacement)
        except EngineError as exc:
            failure = str(exc)
        if failure:
            self.containers.remove(replacement)
            self.engine.call(current.start)
            return self._kept(current, f"Container could not start: {failure}")
        self.containers.remove(current)
        self.containers.remove_others(containers, keep=replacement)
        self.engine.call(replacement.rename, container_name(spec.instance_id))
        return self._applied(replacement)

    def _applied(self, container) -> WorkloadStatus:
        # The new config is in place: a process that then exits is the container's business
        # (shown as NOT_STARTED by the watch), not a failed update.
        status = self.containers.status_of(container, None)
        status.reason = None
        return status

    def _kept(self, current, reason: str) -> WorkloadStatus:
        """The old container goes on; `reason` (the cause only: the lifecycle words the
        event) tells the caller the update did not happen."""
        status = self.containers.status_of(current, None)
        status.reason = reason
        return status
