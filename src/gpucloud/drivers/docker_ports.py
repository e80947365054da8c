"""Host ports for published container ports, handed out through the database.

The `port_allocations` table is unique on (provider, port), so two instances can never hold the
same host port, even when several server processes allocate at once: a collision is an
IntegrityError, and the short transaction is simply retried. Allocation is keyed by instance and
internal port, so asking again (a create retried after a crash, an update) returns the same
ports.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from gpucloud.instances.models import PortAllocation

Key = tuple[int, str]  # (internal port, protocol as exposed: tcp | udp | http)


def host_port_free(port: int, protocol: str) -> bool:
    """Whether nothing on this machine listens on `port` (for engines on this machine: a port
    taken by a process gpucloud does not know would make the container fail to start)."""
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class PortsExhausted(Exception):
    pass


def allocate(rt, provider_id: str, instance_id: str, wanted: Iterable[Key],
             port_range: tuple[int, int],
             probe: Callable[[int, str], bool] | None = None) -> dict[Key, int]:
    """Host port for every wanted (port, protocol) of the instance; existing ones are kept.

    Lowest free port first, so a released port is reused predictably."""
    wanted = list(dict.fromkeys(wanted))
    for _ in range(8):
        try:
            with rt.db.write() as s:
                rows = s.scalars(select(PortAllocation)
                                 .where(PortAllocation.instance_id == instance_id)).all()
                have = {(r.internal_port, r.protocol): r.port for r in rows
                        if r.provider_id == provider_id}
                missing = [k for k in wanted if k not in have]
                if missing:
                    taken = set(s.scalars(select(PortAllocation.port)
                                          .where(PortAllocation.provider_id == provider_id)))
                    candidates = _free_ports(port_range, taken, probe)
                    for key in missing:
                        port = next(candidates, None)
                        if port is None:
                            raise PortsExhausted(
                                f"No free host port left in {port_range[0]}-{port_range[1]}")
                        s.add(PortAllocation(provider_id=provider_id, port=port,
                                             instance_id=instance_id, internal_port=key[0],
                                             protocol=key[1]))
                        have[key] = port
                    s.flush()
                return {k: have[k] for k in wanted}
        except IntegrityError:
            continue  # another process took one of these ports first: look again
    raise PortsExhausted("Could not allocate host ports (too much contention)")


def _free_ports(port_range: tuple[int, int], taken: set[int],
                probe: Callable[[int, str], bool] | None):
    for port in range(port_range[0], port_range[1] + 1):
        if port in taken:
            continue
        # Probe both protocols: the same number may later be wanted for tcp or udp.
        if probe is not None and not (probe(port, "tcp") and probe(port, "udp")):
            continue
        yield port


def allocated(rt, instance_id: str) -> dict[Key, int]:
    with rt.db.read() as s:
        rows = s.scalars(select(PortAllocation)
                         .where(PortAllocation.instance_id == instance_id)).all()
        return {(r.internal_port, r.protocol): r.port for r in rows}


def release(rt, instance_id: str) -> int:
    """Free every host port of the instance; safe to repeat."""
    with rt.db.write() as s:
        result = s.execute(delete(PortAllocation)
                           .where(PortAllocation.instance_id == instance_id))
        return result.rowcount or 0
