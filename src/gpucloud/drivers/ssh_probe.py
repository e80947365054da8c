"""Is a machine's SSH server up? (shared by the drivers that wait for one to boot)

With a QEMU host forward, a TCP connect to the host port succeeds as soon as QEMU listens,
long before the guest's sshd does (QEMU accepts, then closes when the guest refuses). Only the
`SSH-` banner says sshd answers.
"""

from __future__ import annotations

import socket
import time


def ssh_banner(host: str, port: int, timeout: float = 3.0) -> str | None:
    """The server's identification line, or None when nothing SSH-like answered in time."""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            data = b""
            while b"\n" not in data and len(data) < 256:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                sock.settimeout(left)
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    line = data.split(b"\n", 1)[0].strip()
    return line.decode("ascii", errors="replace") if line.startswith(b"SSH-") else None
