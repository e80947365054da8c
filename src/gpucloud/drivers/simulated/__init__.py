"""The built-in `simulated` driver: a far side that behaves like a real provider."""

from gpucloud.drivers.simulated.driver import SimulatedDriver

__all__ = ["SimulatedDriver"]
