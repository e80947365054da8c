"""The Redfish driver: bare-metal servers deployed and wiped through their BMCs (driver.py)."""

from gpucloud.drivers.redfish.driver import RedfishDriver

__all__ = ["RedfishDriver"]
