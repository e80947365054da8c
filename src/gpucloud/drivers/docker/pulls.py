"""Image pulls in the background, so that no driver call waits for a registry.

A pull of a large image takes minutes; a driver call must return within its timeout and its
caller must not hold the instance's lease meanwhile. So `create` (and `update`) start the pull
here and return `pending` with the pull's progress; the lifecycle calls again later and, once
the engine has the image, the container is made.

A collaborator of DockerDriver, one per provider (per driver object). Pulls are kept in memory
only, keyed by image and registry user: several instances of the same image wait on one pull.
Nothing needs to survive a restart: the pull runs in the engine, and after a restart the next
call finds the image there, or starts the pull again (the engine keeps the layers it already
has).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import docker
from docker.utils import parse_repository_tag

from gpucloud.drivers.base import Clock, DriverTransientError, WorkloadSpec, WorkloadStatus
from gpucloud.drivers.docker.engine import Engine, EngineError, short_error

KEEP_FINISHED = 60.0  # seconds a finished pull is remembered, for every instance waiting on it
DONE_STATES = ("download complete", "pull complete", "already exists")


@dataclass
class Pull:
    image: str
    started: float = field(default_factory=time.time)  # wall clock, epoch seconds
    finished: float | None = None
    error: str | None = None  # the registry's or engine's refusal: the create fails
    transient: str | None = None  # the engine went away mid-pull: worth another try
    layers: dict[str, str] = field(default_factory=dict)  # layer id → its latest status
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # id → (current, total)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def done(self) -> bool:
        return self.finished is not None

    def seen(self, line: dict[str, Any]) -> None:
        """One line of the engine's pull stream."""
        layer, status = line.get("id"), str(line.get("status") or "")
        if not layer or not status or status.lower().startswith("pulling from"):
            return
        with self.lock:
            self.layers[layer] = status
            detail = line.get("progressDetail") or {}
            if detail.get("total"):
                self.sizes[layer] = (int(detail.get("current") or 0), int(detail["total"]))

    def progress(self) -> str:
        """A line for the instance's events. Coarse on purpose (layers, tens of percent): the
        lifecycle records it whenever it changes."""
        with self.lock:
            total = len(self.layers)
            done = sum(1 for s in self.layers.values() if s.lower() in DONE_STATES)
            current = sum(c for c, _ in self.sizes.values())
            size = sum(t for _, t in self.sizes.values())
        line = f"Pulling image {self.image}"
        if total:
            line += f": {done} of {total} layer{'s' if total != 1 else ''} done"
        if size:
            line += f", {current * 100 // size // 10 * 10}% of {size / 1e6:.0f} MB downloaded"
        return line

    def seconds(self) -> float:
        return (self.finished or time.time()) - self.started


def pull_key(spec: WorkloadSpec) -> tuple[str, str | None, str | None]:
    creds = spec.credentials or {}
    return (spec.image or "", creds.get("username"), creds.get("host"))


class Pulls:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._pulls: dict[tuple[str, str | None, str | None], Pull] = {}
        self._lock = threading.Lock()

    def has_image(self, image: str) -> bool:
        """Raises EngineError when the engine refuses to say, DriverTransientError when it does
        not answer."""
        try:
            self.engine.call(self.engine.client.images.get, image)
            return True
        except docker.errors.NotFound:
            return False

    def ensure(self, spec: WorkloadSpec) -> Pull:
        """The pull of the spec's image: the one under way or just finished, else a new one."""
        key = pull_key(spec)
        now = time.time()
        with self._lock:
            for k, p in list(self._pulls.items()):
                if p.finished is not None and now - p.finished > KEEP_FINISHED:
                    del self._pulls[k]
            pull = self._pulls.get(key)
            if pull is None or pull.transient:
                pull = self._pulls[key] = Pull(image=spec.image or "")
                thread = threading.Thread(target=self._run, args=(pull, spec.credentials),
                                          name="gpucloud-docker-pull", daemon=True)
                thread.start()
            return pull

    def known(self, spec: WorkloadSpec) -> Pull | None:
        with self._lock:
            return self._pulls.get(pull_key(spec))

    def forget(self, spec: WorkloadSpec, pull: Pull) -> None:
        with self._lock:
            if self._pulls.get(pull_key(spec)) is pull:
                del self._pulls[pull_key(spec)]

    def _run(self, pull: Pull, credentials: dict[str, str] | None) -> None:
        image = pull.image
        repo, tag = parse_repository_tag(image)
        auth = None
        if credentials:
            auth = {"username": credentials.get("username"),
                    "password": credentials.get("password"),
                    "serveraddress": credentials.get("host")}
        try:
            # docker-py streams a pull without a read timeout: a layer of many GB may keep the
            # stream silent for minutes (Podman reports a layer only when it is complete).
            stream = self.engine.call(self.engine.client.api.pull, repo, tag=tag or "latest",
                                      stream=True, decode=True, auth_config=auth)
            for line in stream:
                if not isinstance(line, dict):
                    continue
                if line.get("error"):
                    pull.error = (f"Image {image} could not be pulled: "
                                  f"{' '.join(str(line['error']).split())[:500]}")
                    break
                pull.seen(line)
        except docker.errors.NotFound as exc:
            pull.error = f"Image {image} could not be pulled: {short_error(exc)}"
        except EngineError as exc:
            pull.error = f"Image {image} could not be pulled: {exc}"
        except DriverTransientError as exc:
            pull.transient = str(exc)
        except Exception as exc:  # the stream broke off (engine restarted, socket closed)
            pull.transient = f"Container engine error while pulling {image}: {short_error(exc)}"
        finally:
            pull.finished = time.time()

    def image_ready(self, spec: WorkloadSpec, clock: Clock) -> tuple[WorkloadStatus | None, str]:
        """(None, note for the events) when the engine has the spec's image; otherwise the
        status to answer with: `pending` while the pull runs, `failed` when it was refused.
        Raises DriverTransientError when the engine does not answer (or dropped the pull)."""
        image = spec.image or ""
        try:
            present = self.has_image(image)
        except EngineError as exc:
            return WorkloadStatus(phase="failed",
                                  reason=f"Image {image} could not be inspected: {exc}"), ""
        if present:
            pull = self.known(spec)
            if pull is not None and pull.done and not pull.error:
                return None, f"Image {image} pulled in {pull.seconds():.1f} s"
            return None, f"Image {image} present on the host (no pull needed)"
        pull = self.ensure(spec)
        if pull.error:
            self.forget(spec, pull)
            return WorkloadStatus(phase="failed", reason=pull.error), ""
        if pull.transient:
            raise DriverTransientError(pull.transient)
        if pull.done:  # finished, yet the image is not there (removed meanwhile): again
            self.forget(spec, pull)
            pull = self.ensure(spec)
        return WorkloadStatus(phase="pending", progress=pull.progress(),
                              check_again_at=clock.now() + self.check_again_in(pull)), ""

    @staticmethod
    def check_again_in(pull: Pull) -> dt.timedelta:
        """Often at first (small images are there in a second), then every few seconds."""
        return dt.timedelta(seconds=min(5.0, 1.0 + pull.seconds() / 10))
