"""The `docker` driver (Docker or Podman engines): DockerDriver and its collaborators."""

from gpucloud.drivers.docker.driver import DockerDriver
from gpucloud.drivers.docker.labels import container_name

__all__ = ["DockerDriver", "container_name"]
