"""Whether a host port is free on this machine: for drivers whose engine runs here
(`Driver.port_free`), so the control plane's allocator skips ports it does not know are taken."""

from __future__ import annotations

import socket


def host_port_free(port: int, protocol: str) -> bool:
    """Whether nothing on this machine listens on `port` (a port taken by a process gpucloud
    does not know would make the workload fail to start)."""
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
