"""Driver names → classes."""

from __future__ import annotations

from gpucloud.drivers.base import Driver
from gpucloud.drivers.docker import DockerDriver
from gpucloud.drivers.simulated import SimulatedDriver

DRIVERS: dict[str, type[Driver]] = {"simulated": SimulatedDriver, "docker": DockerDriver}
# Drivers whose client library is an optional extra: why they are unavailable, when they are.
UNAVAILABLE: dict[str, str] = {}

try:
    from gpucloud.drivers.libvirt import LibvirtDriver
except ImportError as exc:  # libvirt-python builds against libvirt-dev: not every host has it
    UNAVAILABLE["libvirt"] = (f"The libvirt driver needs libvirt-python ({exc}); install "
                              "gpucloud[libvirt] on a host with libvirt-dev and pkg-config")
else:
    DRIVERS["libvirt"] = LibvirtDriver

try:
    from gpucloud.drivers.redfish import RedfishDriver
except ImportError as exc:  # sushy is the `redfish` extra
    UNAVAILABLE["redfish"] = (f"The redfish driver needs sushy ({exc}); install "
                              "gpucloud[redfish]")
else:
    DRIVERS["redfish"] = RedfishDriver

DRIVER_NAMES = tuple(DRIVERS)


def driver_class(name: str) -> type[Driver]:
    cls = DRIVERS.get(name)
    if cls is None:
        if name in UNAVAILABLE:
            raise ValueError(UNAVAILABLE[name])
        raise ValueError(f"Unknown driver {name!r}; known drivers: {', '.join(DRIVER_NAMES)}")
    return cls
