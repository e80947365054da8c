"""The Engine API connection of one provider: client construction and error translation.

docker-py speaks the Docker Engine API, which Podman serves too. The client is made lazily (an
engine that is down at server start must not break anything) and negotiates the API version on
first use, because Docker 29 refuses old versions while Podman 4 serves at most 1.41.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import docker
import requests
from docker.tls import TLSConfig

from gpucloud.drivers.base import DriverError, DriverTransientError
from gpucloud.drivers.docker.config import DockerConfig

T = TypeVar("T")


class EngineError(DriverError):
    """The engine answered and refused (bad image, bad config…): not worth retrying."""


_UNREACHABLE = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                ConnectionError, TimeoutError)


def short_error(exc: BaseException) -> str:
    """The engine's own explanation, without docker-py's URL preamble."""
    explanation = getattr(exc, "explanation", None)
    if explanation:
        text = explanation.decode() if isinstance(explanation, bytes) else str(explanation)
    else:
        text = str(exc)
    return " ".join(text.split())[:500]


class Engine:
    def __init__(self, cfg: DockerConfig):
        self.cfg = cfg
        self._client = None
        self._lock = threading.Lock()
        self._is_podman: bool | None = None

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                tls: Any = False
                if self.cfg.tls is not None:
                    t = self.cfg.tls
                    cert = (t.client_cert, t.client_key) if t.client_cert else None
                    tls = TLSConfig(client_cert=cert, ca_cert=t.ca_cert,
                                    verify=t.ca_cert if (t.verify and t.ca_cert) else t.verify)
                base_url = self.cfg.engine_url
                if base_url.startswith("tcp://") and tls:
                    base_url = "https://" + base_url[len("tcp://"):]
                try:
                    self._client = docker.DockerClient(base_url=base_url, tls=tls,
                                                       timeout=self.cfg.timeout_seconds,
                                                       version="auto")
                except docker.errors.DockerException as exc:
                    raise DriverTransientError(f"Container engine not reachable: "
                                               f"{short_error(exc)}") from None
            return self._client

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one engine call; unreachable/slow engine → DriverTransientError (retried until
        the provisioning deadline), engine refusal → EngineError (a final answer)."""
        try:
            return fn(*args, **kwargs)
        except docker.errors.NotFound:
            raise
        except docker.errors.APIError as exc:
            status = getattr(exc.response, "status_code", None)
            if _vanished(exc):
                # Podman answers 500 for a container removed while we looked at it.
                raise docker.errors.NotFound(short_error(exc)) from None
            if status is not None and status >= 500 and _looks_transient(exc):
                raise DriverTransientError(f"Container engine error: {short_error(exc)}") \
                    from None
            raise EngineError(short_error(exc)) from None
        except _UNREACHABLE as exc:
            raise DriverTransientError(f"Container engine not reachable: {short_error(exc)}") \
                from None
        except docker.errors.DockerException as exc:
            raise DriverTransientError(f"Container engine error: {short_error(exc)}") from None

    def is_podman(self) -> bool:
        if self._is_podman is None:
            version = self.call(self.client.version)
            names = [c.get("Name", "") for c in version.get("Components") or []]
            self._is_podman = any("podman" in n.lower() for n in names)
        return self._is_podman

    def ping(self) -> bool:
        try:
            return bool(self.call(self.client.ping))
        except (DriverTransientError, EngineError):
            return False

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _vanished(exc: BaseException) -> bool:
    text = short_error(exc).lower()
    return "no such container" in text or "does not exist in database" in text


def _looks_transient(exc: BaseException) -> bool:
    text = short_error(exc).lower()
    # "no such process": Podman inspecting a container whose process is exiting right now.
    return any(word in text for word in ("timeout", "temporarily", "try again", "locked",
                                         "connection reset", "no such process"))
