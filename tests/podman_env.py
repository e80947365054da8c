"""The real container engine the docker-driver tests talk to (Podman, set up by
scripts/setup-podman.sh), and small helpers around it.

The engine is not optional for these tests: when it does not answer they FAIL with the command
that fixes it, rather than skip and hide that containers were never exercised.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

SOCKET = os.environ.get("GPUCLOUD_PODMAN_SOCKET", "/run/gpucloud-podman/podman.sock")
ENGINE_URL = f"unix://{SOCKET}"
IMAGE = os.environ.get("GPUCLOUD_TEST_IMAGE", "localhost/gpucloud-busybox:latest")
MISSING_IMAGE = "docker.io/library/gpucloud-no-such-image:1"
# The local registry scripts/setup-podman.sh serves (plain HTTP, known to the engine).
REGISTRY = os.environ.get("GPUCLOUD_TEST_REGISTRY", "127.0.0.1:5070")

# busybox httpd on 80 serving a page that names the instance, and a TCP echo on 7000.
SERVE = ("sh -c 'mkdir -p /www && echo \"hello from $GREETING\" > /www/index.html && "
         "echo \"serving $GREETING\" && httpd -f -p 80 -h /www & "
         "while true; do nc -l -p 7000 -e cat; done'")


def engine_client():
    import docker

    client = docker.DockerClient(base_url=ENGINE_URL, version="auto", timeout=30)
    return client


def require_engine():
    """A docker-py client on the test engine, or a clear failure."""
    import docker

    try:
        client = engine_client()
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        pytest.fail(f"No container engine answers on {ENGINE_URL} ({exc}). "
                    "Run scripts/setup-podman.sh (the README's test command does).")
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"Test image {IMAGE} missing: run scripts/setup-podman.sh")
    return client


def image_to_pull(client, name: str = "pull-test") -> str:
    """A reference the engine does not have but the test registry serves: the test image
    pushed under a fresh tag, and that tag removed from the engine again. A deploy of it
    makes the engine really pull (its layers are shared with the test image, so it is quick)."""
    import uuid

    import docker

    repo = f"{REGISTRY}/gpucloud/{name}"
    tag = uuid.uuid4().hex[:12]
    try:
        client.images.get(IMAGE).tag(repo, tag)
        for line in client.api.push(repo, tag=tag, stream=True, decode=True):
            if line.get("error"):
                raise docker.errors.APIError(line["error"])
        client.images.remove(f"{repo}:{tag}")
    except (docker.errors.DockerException, OSError) as exc:
        pytest.fail(f"Could not push a test image to the registry {REGISTRY} ({exc}). "
                    "Run scripts/setup-podman.sh.")
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(f"{repo}:{tag}")
    return f"{repo}:{tag}"


def remove_image_later(client, ref: str) -> None:
    """Untag a pulled test image (its layers are the test image's: nothing else goes)."""
    import docker

    try:
        client.images.remove(ref)
    except docker.errors.APIError:
        pass  # still used by a container being removed: the next setup leaves it be


def _by_label(client, *labels: str) -> list[Any]:
    """Containers with all these labels. Listed without per-container inspects, then fetched
    one by one, skipping any removed meanwhile (Podman answers 500 for those)."""
    import docker

    out = []
    for row in client.api.containers(all=True, filters={"label": list(labels)}):
        try:
            out.append(client.containers.get(row["Id"]))
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError as exc:
            if "no such container" not in str(exc):
                raise
    return out


def for_instance(client, instance_id: str) -> list[Any]:
    return _by_label(client, f"gpucloud.instance={instance_id}")


def remove_provider_containers(client, provider_id: str) -> None:
    import docker

    for row in client.api.containers(all=True,
                                     filters={"label": [f"gpucloud.provider={provider_id}"]}):
        try:
            client.api.remove_container(row["Id"], force=True, v=True)
        except docker.errors.APIError:
            continue  # already being removed


def wait_for(fn: Callable[[], Any], timeout: float = 20.0, every: float = 0.1,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def http_get(port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> str:
    """GET / on a published port, retried while the server inside comes up."""
    url = f"http://{host}:{port}/"

    def attempt():
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except OSError:
            return None

    return wait_for(attempt, timeout, 0.1, f"HTTP answer on {url}")


def tcp_echo(port: int, payload: bytes = b"ping\n", host: str = "127.0.0.1",
             timeout: float = 15.0) -> bytes:
    def attempt():
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.sendall(payload)
                s.settimeout(2)
                return s.recv(1024) or None
        except OSError:
            return None

    return wait_for(attempt, timeout, 0.1, f"TCP echo on {port}")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
