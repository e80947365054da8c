"""Driver names → classes."""

from __future__ import annotations

from gpucloud.drivers.base import Driver
from gpucloud.drivers.docker import DockerDriver
from gpucloud.drivers.simulated import SimulatedDriver

DRIVERS: dict[str, type[Driver]] = {"simulated": SimulatedDriver, "docker": DockerDriver}
DRIVER_NAMES = tuple(DRIVERS)


def driver_class(name: str) -> type[Driver]:
    cls = DRIVERS.get(name)
    if cls is None:
        raise ValueError(f"Unknown driver {name!r}; known drivers: {', '.join(DRIVER_NAMES)}")
    return cls
