"""The libvirt/QEMU driver: VMs on a hypervisor next to this server (see driver.py)."""

from gpucloud.drivers.libvirt.driver import LibvirtDriver

__all__ = ["LibvirtDriver"]
