"""Updates: replace an instance's container with one of the new config, same host ports.

A mixin of DockerDriver. Host ports can only be bound once, so the old container is stopped
just before the new one starts, and started again if the new one does not; the replacement is
created (not started) beforehand, so most failures (bad image, bad config) never touch the
running container.
"""

from __future__ import annotations

from typing import Any

from gpucloud.drivers.base import WorkloadSpec, WorkloadStatus
from gpucloud.drivers.docker_engine import EngineError
from gpucloud.drivers.docker_labels import container_name, generation_of, since_of


class UpdateMixin:
    # -- update ------------------------------------------------------------------------------
    def update(self, spec: WorkloadSpec, generation: int) -> WorkloadStatus:
        containers = self._containers(spec.instance_id)
        current = self._pick(containers)
        if current is None:
            # Nothing to replace (lost meanwhile): start the new config afresh.
            return self._create(spec, generation)
        if generation_of(current) == generation and current.status == "running":
            self._remove_others(containers, keep=current)
            return self._applied(current)
        notes: list[dict[str, str]] = []
        reason = self._ensure_image(spec, notes)
        if reason is not None:
            return self._kept(current, reason)
        ports = self._ports(spec)  # the instance's existing ports: unchanged
        replacement = next((c for c in containers if generation_of(c) == generation
                            and c.id != current.id), None)
        if replacement is None:
            try:
                replacement = self._make_container(
                    spec, generation, ports, f"{container_name(spec.instance_id)}-g{generation}",
                    since_of(current))
            except EngineError as exc:
                return self._kept(current, f"Container could not be created: {exc}")
        # Host ports can only be bound once: stop the old container, then start the new one,
        # and bring the old one back if the new one does not start.
        self.engine.call(current.stop, timeout=self.cfg.stop_timeout_seconds)
        try:
            self.engine.call(replacement.start)
            failure = self._exec_failure(replacement)
        except EngineError as exc:
            failure = str(exc)
        if failure:
            self._remove(replacement)
            self.engine.call(current.start)
            return self._kept(current, f"Container could not start: {failure}")
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

    def _kept(self, current, reason: str) -> WorkloadStatus:
        """The old container goes on; `reason` (the cause only: the lifecycle words the
        event) tells the caller the update did not happen."""
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
