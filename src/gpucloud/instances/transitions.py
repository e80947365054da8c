"""Every change of an instance's status, each written once: activate, fail, end, terminate,
and recreate (a lost container made again). The lifecycle worker, the routes and billing's
set-based ENDED (billing/batch_sql.py, through `closed_columns`) all go through here, so an
instance ended by an hour boundary and one ended by DELETE end with the same row.

Functions take the caller's session and only flush. Closing an instance (FAILED or ENDED)
refunds the reserve, frees the capacity, the host ports and GPUs, and hands the workload to the
lifecycle worker for removal; the plans cache and the worker hear of it after commit
(db.after_commit), never before.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from gpucloud.billing import ledger
from gpucloud.catalog import service as catalog
from gpucloud.db import NEW_WORK, after_commit
from gpucloud.drivers.base import WorkloadStatus
from gpucloud.errors import BadRequest
from gpucloud.instances import allocations, events
from gpucloud.instances.models import (
    ACTIVE,
    ENDED,
    FAILED,
    INITIALIZED,
    OP_DELETE,
    OP_WATCH,
    Instance,
)

TERMINATED = "Terminated by user"


def closed_columns(status: str, reason: str, now: dt.datetime) -> dict[str, Any]:
    """The row of an instance that just closed (FAILED or ENDED), besides its money: what it
    says, when, and the workload's removal scheduled at once with any lease broken (a worker
    still busy with the instance drops its stale result)."""
    return {"status": status, "status_reason": reason, "ended_at": now, "updated_at": now,
            "pending_update": None, "pending_credentials_enc": None,
            "op": OP_DELETE, "next_check_at": now, "attempts": 0,
            "lock_token": None, "lock_expires_at": None}


def ended_message(reason: str) -> str:
    return f"Instance ended: {reason}"


def failed_message(reason: str) -> str:
    return f"Provisioning failed: {reason}"


def _close(s: Session, inst: Instance, now: dt.datetime, status: str, reason: str,
           message: str) -> None:
    for column, value in closed_columns(status, reason, now).items():
        setattr(inst, column, value)
    ledger.refund_reserve(s, inst, now)
    catalog.release_capacity(s, inst.zone_id)
    allocations.release(s, inst.id)
    after_commit(s, NEW_WORK)
    events.record(s, inst.id, now, message)


def locked(s: Session, inst: Instance) -> None:
    """`inst` was just loaded with a locking SELECT in this transaction: its money columns
    need not be read again before the ledger moves them (billing.ledger.held)."""
    ledger.held(s, inst)


def end(s: Session, inst: Instance, now: dt.datetime, reason: str) -> None:
    """ACTIVE → ENDED: refund the unspent reserve, free the capacity, remove the workload."""
    _close(s, inst, now, ENDED, reason, ended_message(reason))


def fail(s: Session, inst: Instance, now: dt.datetime, reason: str) -> None:
    """INITIALIZED → FAILED: everything reserved goes back; half-made workloads are removed."""
    _close(s, inst, now, FAILED, reason, failed_message(reason))


def terminate(s: Session, inst: Instance, now: dt.datetime) -> None:
    if inst.status != ACTIVE:
        raise BadRequest("Only an ACTIVE instance can be terminated")
    end(s, inst, now, TERMINATED)


def absorb(inst: Instance, st: WorkloadStatus) -> None:
    """Copy what the driver reports about a running workload onto the row."""
    inst.domain = st.domain
    ssh = ({"user": st.ssh_user, "host": st.ssh_host or st.domain, "port": st.ssh_port or 22}
           if st.ssh_user else None)
    inst.network = {"forwarded_ports": [{"port": p.port, "external_port": p.external_port,
                                         "protocol": p.protocol} for p in st.forwarded_ports],
                    "uri": st.uri, "ssh": ssh}
    inst.container_started = st.container_started
    if st.state is not None:
        inst.driver_state = st.state


def activate(s: Session, inst: Instance, now: dt.datetime, st: WorkloadStatus,
             watch_at: dt.datetime) -> None:
    """INITIALIZED → ACTIVE: the workload runs; the first (partial) hour is charged."""
    inst.status = ACTIVE
    inst.activated_at = inst.updated_at = now
    absorb(inst, st)
    inst.op, inst.next_check_at, inst.attempts = OP_WATCH, watch_at, 0
    ledger.activate(s, inst, now)
    events.record(s, inst.id, now, f"Instance is running and reachable at {st.domain}")


def recreate(s: Session, inst: Instance, now: dt.datetime, st: WorkloadStatus,
             watch_at: dt.datetime) -> None:
    """ACTIVE stays ACTIVE: the lost container runs again, on the same host ports."""
    absorb(inst, st)
    inst.updated_at, inst.next_check_at = now, watch_at
    events.record(s, inst.id, now,
                  "Container was missing at the provider; recreated on the same ports")


__all__ = ["ACTIVE", "ENDED", "FAILED", "INITIALIZED", "TERMINATED", "activate", "absorb",
           "closed_columns", "end", "ended_message", "fail", "locked", "recreate",
           "terminate"]
