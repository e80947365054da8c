"""Finding, reading and removing an instance's containers on one provider's engine. A
collaborator of DockerDriver, shared by its create, update and delete paths (images are pulled
by drivers/docker/pulls.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import docker

from gpucloud.drivers.base import WorkloadStatus
from gpucloud.drivers.docker.config import DockerConfig
from gpucloud.drivers.docker.engine import Engine, EngineError
from gpucloud.drivers.docker.labels import (
    L_EXPOSE,
    L_INSTANCE,
    L_PROVIDER,
    MAX_NOTES,
    forwarded_ports,
    generation_of,
    since_of,
)
from gpucloud.drivers.docker.startcheck import exec_failure, pid_view


def _wall() -> dt.datetime:
    # Engine events carry the engine host's wall time; our own notes use the same clock so
    # the two interleave correctly.
    return dt.datetime.now(dt.UTC)


def note(notes: list[dict[str, str]], message: str) -> None:
    """A line for the instance's events, kept in the driver state (newest MAX_NOTES)."""
    notes.append({"at": _wall().isoformat(), "message": message})
    del notes[:-MAX_NOTES]


class Containers:
    def __init__(self, engine: Engine, cfg: DockerConfig, provider_id: str):
        self.engine = engine
        self.cfg = cfg
        self.provider_id = provider_id
        self._pid_view: bool | None = None  # asked at the first start check until answered

    # -- lookups -----------------------------------------------------------------------------
    def summaries(self, *labels: str) -> list[dict[str, Any]]:
        """The engine's container list (no per-container inspect: one call, and no race with
        a container removed between listing and inspecting)."""
        client = self.engine.client
        return self.engine.call(client.api.containers, all=True,
                                filters={"label": [f"{L_PROVIDER}={self.provider_id}", *labels]})

    def of_instance(self, instance_id: str) -> list[Any]:
        client = self.engine.client
        out = []
        for row in self.summaries(f"{L_INSTANCE}={instance_id}"):
            try:
                out.append(self.engine.call(client.containers.get, row["Id"]))
            except docker.errors.NotFound:
                continue  # removed since the listing
        return out

    @staticmethod
    def pick(containers: list[Any]):
        """The instance's current container: a running one wins (an update in flight or
        half-done must not hide the container that serves), then the newest config."""
        if not containers:
            return None
        return max(containers, key=lambda c: (c.status == "running", generation_of(c)))

    # -- changes -----------------------------------------------------------------------------
    def remove(self, container) -> None:
        try:
            self.engine.call(container.remove, v=True, force=True)
        except docker.errors.NotFound:
            pass

    def remove_others(self, containers: list[Any], keep) -> None:
        for c in containers:
            if c.id != keep.id:
                self.remove(c)

    def exec_failure(self, container) -> str | None:
        view = self._pid_view
        if view is None:
            # A local engine whose socket could not be asked now (busy) is asked again at the
            # next check; this one goes by the time window.
            view = self._pid_view = pid_view(self.cfg.socket_path) if self.cfg.is_local \
                else False
        return exec_failure(self.engine, container, self.cfg.start_check_seconds, bool(view))

    # -- status ------------------------------------------------------------------------------
    def status_of(self, container, state: dict[str, Any] | None) -> WorkloadStatus:
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
