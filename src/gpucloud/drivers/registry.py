"""Driver names → classes. Imported lazily so a driver's client library is only needed when a
provider actually uses it."""

from __future__ import annotations

from gpucloud.drivers.base import Driver

DRIVER_NAMES = ("simulated", "docker", "libvirt", "redfish")


def driver_class(name: str) -> type[Driver]:
    if name == "simulated":
        from gpucloud.drivers.simulated import SimulatedDriver

        return SimulatedDriver
    if name == "docker":
        from gpucloud.drivers.docker import DockerDriver

        return DockerDriver
    if name == "libvirt":
        from gpucloud.drivers.libvirt import LibvirtDriver

        return LibvirtDriver
    if name == "redfish":
        from gpucloud.drivers.redfish import RedfishDriver

        return RedfishDriver
    raise ValueError(f"Unknown driver {name!r}; known drivers: {', '.join(DRIVER_NAMES)}")
