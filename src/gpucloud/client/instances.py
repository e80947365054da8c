"""Instances of any type behind one small shape, for code that only has an id."""

from __future__ import annotations

from dataclasses import dataclass

from gpucloud.client import models as m

ACTIVE = "ACTIVE"
FAILED = "FAILED"
ENDED = "ENDED"
SETTLED = frozenset({ACTIVE, FAILED, ENDED})  # a deploy has nothing more to wait for
FINISHED = frozenset({FAILED, ENDED})  # nothing will ever change again
INSTANCE_KINDS = ("container", "vm", "baremetal")


@dataclass(frozen=True)
class Instance:
    kind: str  # container | vm | baremetal
    details: m.ContainerDetails | m.VmDetails

    @property
    def id(self) -> str:
        return self.details.id

    @property
    def status(self) -> str:
        return status_of(self.details)


def status_of(item: m.ContainerInstance | m.VmInstance) -> str:
    return item.instance_status if isinstance(item, m.ContainerInstance) else item.status


def ssh_command(inst: Instance) -> str | None:
    """How to log in: the VM's own `ssh_connection`, or for a container the external port
    that maps its port 22."""
    d = inst.details
    if isinstance(d, m.VmDetails):
        return d.ssh_connection
    domain = (d.network.domain if d.network else None) or d.domain
    if not domain or not d.network:
        return None
    for fp in d.network.forwarded_ports:
        if fp.port == "22" and fp.protocol == "tcp" and fp.external_port:
            return f"ssh -p {fp.external_port} root@{domain}"
    return None
