"""The lifecycle worker: drives every instance with a pending `op` towards its provider's state.

Leased rows (STYLE §5), in three steps per row:
1. claim: in one short transaction, take due rows nobody holds (`FOR UPDATE SKIP LOCKED` on
   PostgreSQL; SQLite serializes writers) and stamp them with a lease token that expires
   after `lease_seconds` of wall time — only as many as the driver-call pool has room for,
   and for each provider only as many as its free slots (drivers/pool.py);
2. call the driver OUTSIDE any transaction, on the pool, with the driver's call timeout; the
   lease is renewed while the call runs (instances/engine.py), so a long call is never taken
   over while its process lives, and a dead process's lease still expires;
3. apply the result in its own transaction, only if the row still carries our token and
   the op we were asked to do. A terminate or update that arrived meanwhile clears the token,
   so the stale result is dropped; a crashed worker's lease simply expires and the next
   worker (in this or another process, or after a restart) does the step again — every
   driver call is idempotent.

ops: create → until running (ACTIVE), failed or past the deadline (FAILED); update → redeploy
with the pending config, then swap it in; delete → remove the workload, then op = NULL;
watch → poll ACTIVE workloads (container started/stopped; gone → recreated for containers,
ENDED otherwise).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import OperationalError

from gpucloud.catalog.models import Provider
from gpucloud.clock import utcnow
from gpucloud.drivers.base import (
    CleanupFailed,
    DriverError,
    DriverTransientError,
    WorkloadStatus,
)
from gpucloud.drivers.pool import CallPool, CallTimeout, Slot
from gpucloud.instances import allocations, events, service, transitions
from gpucloud.instances.models import (
    ACTIVE,
    INITIALIZED,
    OP_CREATE,
    OP_DELETE,
    OP_UPDATE,
    OP_WATCH,
    Instance,
)

log = logging.getLogger("gpucloud.lifecycle")

BATCH = 100
RETRY_APPLY = 4
_ACCOUNT_LOCKS = [threading.Lock() for _ in range(64)]
RETRYABLE = ("40P01", "40001")  # PostgreSQL: deadlock detected, serialization failure
PENDING_RECHECK = dt.timedelta(seconds=2)  # when a driver gives no estimate
FOREGROUND_OPS = (OP_CREATE, OP_UPDATE, OP_DELETE)
Apply = Callable[[Any, Instance], bool]  # (session, row) → did the transition happen?


@dataclass
class Claim:
    inst: Instance  # detached snapshot taken at claim time
    provider: Provider
    token: str
    op: str
    slot: Slot | None = None  # the provider slot driver calls run in (None: no call allowed)
    now: dt.datetime | None = None  # the server time the step ran at
    waiting: bool = False  # claimed ahead: runs once its provider has a free slot


def _backoff(attempts: int) -> dt.timedelta:
    return dt.timedelta(seconds=min(600, 5 * 2 ** min(attempts, 7)))


# --- claim / apply -------------------------------------------------------------------------

def _past_deadline(now: dt.datetime):
    return and_(Instance.op == OP_CREATE, Instance.provision_deadline_at <= now)


def _claim(rt, now: dt.datetime, limit: int = BATCH, pool: CallPool | None = None,
           backlog: int = 0, room: Callable[[str], int] | None = None) -> list[Claim]:
    """Take up to `limit` due rows. With a pool, only rows of providers with a free slot (a
    slot is taken for each), plus creates past their deadline, which fail without a call.
    And up to `backlog` more rows of providers whose slots are all taken, at most `room(p)`
    of provider p (`Claim.waiting`: the dispatcher starts them as slots free up, without
    claiming again).

    Candidates are chosen from a few narrow columns (a few times `limit` of them, so that a
    provider whose slots fill up leaves room for the next ones); only the rows actually taken
    are loaded whole. The background worker claims a row or two each time a slot frees, so
    this runs about once per step: loading a hundred full rows (JSON columns and all) to take
    one cost more than the step itself (bench/lifecycle.py)."""
    wall = utcnow()
    slots: list[Slot] = []
    try:
        with rt.db.write() as s:
            due = [Instance.op.isnot(None), Instance.next_check_at <= now,
                   or_(Instance.lock_expires_at.is_(None), Instance.lock_expires_at < wall)]
            room_left: dict[str, int] = {}

            def may_wait(provider_id: str) -> bool:
                if provider_id not in room_left:
                    room_left[provider_id] = room(provider_id) if room is not None else 0
                return room_left[provider_id] > 0

            saturated = pool.saturated() if pool is not None else set()
            closed = {p for p in saturated if not (backlog and may_wait(p))}
            if closed:
                due.append(or_(Instance.provider_id.notin_(closed), _past_deadline(now)))
            q = (select(Instance.id, Instance.provider_id, Instance.op,
                        Instance.provision_deadline_at)
                 .where(*due).order_by(Instance.next_check_at)
                 .limit(min(BATCH, max(4 * (limit + backlog), 16))))
            if not rt.db.is_sqlite:
                q = q.with_for_update(of=Instance, skip_locked=True)
            chosen: list[str] = []
            slot_of: dict[str, Slot | None] = {}
            waiting: set[str] = set()
            started = 0
            for iid, provider_id, op, deadline in s.execute(q).all():
                if started >= limit and len(waiting) >= backlog:
                    break
                slot = None
                if pool is not None:
                    slot = pool.acquire(provider_id) if started < limit else None
                    expired = op == OP_CREATE and deadline is not None and deadline <= now
                    if slot is None and not expired:
                        if len(waiting) >= backlog or not may_wait(provider_id):
                            continue  # the provider is busy: its row waits, others go on
                        room_left[provider_id] -= 1
                        waiting.add(iid)
                    else:
                        started += 1
                    if slot is not None:
                        slots.append(slot)
                else:
                    started += 1
                chosen.append(iid)
                slot_of[iid] = slot
            if not chosen:
                return []
            token = str(uuid.uuid4())
            s.execute(update(Instance).where(Instance.id.in_(chosen))
                      .values(lock_token=token, lock_expires_at=wall + dt.timedelta(
                          seconds=rt.settings.lease_seconds))
                      .execution_options(synchronize_session=False))
            rows = s.execute(select(Instance, Provider)
                             .join(Provider, Provider.id == Instance.provider_id)
                             .where(Instance.id.in_(chosen))).all()
            claims = {inst.id: Claim(inst, prov, token, inst.op, slot_of[inst.id],
                                     waiting=inst.id in waiting)
                      for inst, prov in rows}
            return [claims[iid] for iid in chosen]
    except BaseException:
        for slot in slots:
            slot.drop()
        raise


def _apply(rt, claim: Claim, fn: Apply) -> bool:
    """Run `fn` on the row if we still hold it; returns False when the result was dropped.

    Results are applied side by side now (one per pool thread), and PostgreSQL may pick one
    of two activations of the same account as a deadlock victim: that transaction is simply
    run again, a couple of times, instead of waiting for the next retry of the whole step."""
    for attempt in range(RETRY_APPLY):
        try:
            # One apply per account at a time in this process: activations of one account
            # side by side deadlocked on its row on PostgreSQL (seen in bench/lifecycle.py).
            with _ACCOUNT_LOCKS[hash(claim.inst.account_id) % len(_ACCOUNT_LOCKS)]:
                return _apply_once(rt, claim, fn)
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) not in RETRYABLE or attempt == RETRY_APPLY - 1:
                raise
            log.info("instance %s: applying %s again after %s", claim.inst.id, claim.op,
                     type(exc.orig).__name__)
    return False


def _apply_once(rt, claim: Claim, fn: Apply) -> bool:
    with rt.db.write() as s:
        q = select(Instance).where(Instance.id == claim.inst.id, Instance.lock_token == claim.token)
        if not rt.db.is_sqlite:
            q = q.with_for_update()
        inst = s.scalars(q).one_or_none()
        if inst is None or inst.op != claim.op:
            log.info("instance %s: lease lost during %s; result dropped", claim.inst.id, claim.op)
            return False
        inst.lock_token = None
        inst.lock_expires_at = None
        transitions.locked(s, inst)
        fn(s, inst)
    return True


def apply_many(rt, results: list[tuple[Claim, Apply]]) -> None:
    """Results of many steps in ONE transaction (the dispatcher's applier): a thousand
    deploys finishing side by side cost a few commits instead of a thousand. Rows are locked
    in id order and accounts in a fixed order, as the one-by-one path does. When the batch
    fails (a deadlock victim, one row's bug), every result is applied on its own instead."""
    if not results:
        return
    results = sorted(results, key=lambda r: (r[0].inst.account_id, r[0].inst.id))
    locks = sorted({hash(c.inst.account_id) % len(_ACCOUNT_LOCKS) for c, _ in results})
    try:
        for i in locks:
            _ACCOUNT_LOCKS[i].acquire()
        try:
            with rt.db.write() as s:
                q = (select(Instance).where(Instance.id.in_([c.inst.id for c, _ in results]))
                     .order_by(Instance.id))
                if not rt.db.is_sqlite:
                    q = q.with_for_update()
                rows = {inst.id: inst for inst in s.scalars(q)}
                for claim, fn in results:
                    inst = rows.get(claim.inst.id)
                    if inst is None or inst.lock_token != claim.token or inst.op != claim.op:
                        log.info("instance %s: lease lost during %s; result dropped",
                                 claim.inst.id, claim.op)
                        continue
                    inst.lock_token = None
                    inst.lock_expires_at = None
                    transitions.locked(s, inst)
                    fn(s, inst)
            return
        finally:
            for i in reversed(locks):
                _ACCOUNT_LOCKS[i].release()
    except Exception:
        log.warning("a batch of %d results failed; applying them one by one", len(results),
                    exc_info=True)
    for claim, fn in results:
        finish_step(rt, claim, fn, claim_now(claim))


def reschedule_many(rt, claims: list[Claim], at: dt.datetime) -> None:
    """Unchanged watches: one UPDATE per claim batch instead of a transaction each."""
    by_token: dict[str, list[str]] = {}
    for c in claims:
        by_token.setdefault(c.token, []).append(c.inst.id)
    with rt.db.write() as s:
        for token, ids in by_token.items():
            s.execute(update(Instance)
                      .where(Instance.id.in_(ids), Instance.lock_token == token,
                             Instance.op == OP_WATCH)
                      .values(next_check_at=at, lock_token=None, lock_expires_at=None)
                      .execution_options(synchronize_session=False))


# --- transitions (run inside _apply) ------------------------------------------------------

def _retry(now: dt.datetime, cap: dt.datetime | None = None, note: str | None = None) -> Apply:
    def fn(s, inst: Instance) -> bool:
        at = now + _backoff(inst.attempts)
        inst.attempts += 1
        inst.next_check_at = min(at, cap) if cap and cap > now else at
        if note:
            events.record(s, inst.id, now, note)
        return False
    return fn


def _no_answer(exc: CallTimeout) -> str:
    what = str(exc)
    return what[0].upper() + what[1:] + "; will retry"


def _activate(now: dt.datetime, st: WorkloadStatus, watch: dt.timedelta) -> Apply:
    def fn(s, inst: Instance) -> bool:
        if inst.status != INITIALIZED:
            inst.op = None
            return False
        transitions.activate(s, inst, now, st, now + watch)
        return False
    return fn


def _fail(now: dt.datetime, reason: str) -> Apply:
    def fn(s, inst: Instance) -> bool:
        if inst.status != INITIALIZED:
            return False
        transitions.fail(s, inst, now, reason)
        return True
    return fn


def _end(now: dt.datetime, reason: str) -> Apply:
    def fn(s, inst: Instance) -> bool:
        if inst.status != ACTIVE:
            return False
        transitions.end(s, inst, now, reason)
        return True
    return fn


def _wait(now: dt.datetime, st: WorkloadStatus | None, cap: dt.datetime | None) -> Apply:
    def fn(s, inst: Instance) -> bool:
        at = (st.check_again_at if st and st.check_again_at else None) or now + PENDING_RECHECK
        if cap is not None:
            at = min(at, cap)
        inst.next_check_at = max(at, now + dt.timedelta(seconds=1))
        if st is not None and st.state is not None:
            inst.driver_state = st.state
        if st is not None and st.progress and st.progress != events.last_message(s, inst.id):
            events.record(s, inst.id, now, st.progress)  # "Pulling image …: 2 of 5 layers"
        return False
    return fn


# --- one step per op -------------------------------------------------------------------------

def _driver(rt, claim: Claim):
    p = claim.provider
    return rt.driver_for(p.id, p.driver, p.config or {})


def _call(claim: Claim, driver, what: str, fn, *args):
    """A driver call in the claim's provider slot, bounded by the driver's call timeout."""
    if claim.slot is None:
        return fn(*args)  # claimed without a pool (a test's direct claim)
    return claim.slot.call(fn, *args, timeout=driver.call_timeout, what=what)


def _step_create(rt, claim: Claim, now: dt.datetime) -> Apply:
    inst = claim.inst
    deadline = inst.provision_deadline_at
    if inst.status != INITIALIZED:
        return _done_with_op
    if deadline is not None and now >= deadline:
        return _fail(now, "Provisioning did not finish before the deadline")
    driver = _driver(rt, claim)
    try:
        spec = allocations.for_spec(rt, driver, service.workload_spec(rt, inst))
    except allocations.MachinesBusy:
        return _wait(now, None, deadline)  # a machine being wiped is free soon
    except allocations.AllocationError as exc:
        return _fail(now, str(exc))
    try:
        st = _call(claim, driver, "create", driver.create, spec)
    except CallTimeout as exc:
        log.warning("instance %s: create will be retried: %s", inst.id, exc)
        return _retry(now, deadline, _no_answer(exc))
    except DriverTransientError as exc:
        log.warning("instance %s: create will be retried: %s", inst.id, exc)
        return _retry(now, deadline)
    except DriverError as exc:
        return _fail(now, str(exc))
    if st.phase == "running":
        return _activate(now, st, dt.timedelta(seconds=rt.settings.watch_interval_seconds))
    if st.phase == "failed":
        return _fail(now, st.reason or "The provider could not start the workload")
    return _wait(now, st, deadline)  # pending, or gone (created again next time)


def _step_update(rt, claim: Claim, now: dt.datetime) -> Apply:
    inst = claim.inst
    watch = now + dt.timedelta(seconds=rt.settings.watch_interval_seconds)
    if inst.status != ACTIVE or not inst.pending_update:
        return _done_with_op
    generation = int(inst.pending_update["container"].get("generation", 2))
    driver = _driver(rt, claim)
    try:
        spec = allocations.for_spec(rt, driver, service.workload_spec(rt, inst, pending=True))
        st = _call(claim, driver, "update", driver.update, spec, generation)
    except allocations.AllocationError as exc:
        st = WorkloadStatus(phase="running", reason=str(exc))
    except DriverTransientError as exc:
        log.warning("instance %s: update will be retried: %s", inst.id, exc)
        return _retry(now)
    except DriverError as exc:
        st = WorkloadStatus(phase="running", reason=str(exc))
    if st.phase == "gone":
        return _end(now, st.reason or "The provider lost the workload")
    if st.phase == "pending":
        return _wait(now, st, None)

    def fn(s, inst: Instance) -> bool:
        if st.phase == "running" and st.reason is None:
            image = inst.pending_update["container"]["image"]
            service.apply_pending_update(inst, now)
            transitions.absorb(inst, st)
            events.record(s, inst.id, now, f"Update applied: container redeployed with {image}")
        else:
            inst.pending_update = inst.pending_credentials_enc = None
            events.record(s, inst.id, now, f"Update failed: {st.reason or st.phase}; "
                                           "the previous configuration keeps running")
        inst.op, inst.next_check_at, inst.attempts = OP_WATCH, watch, 0
        return False
    return fn


def _step_delete(rt, claim: Claim, now: dt.datetime) -> Apply:
    inst = claim.inst
    state = inst.driver_state
    machine = allocations.machine_of(rt, inst.id)
    # Which machine to wipe is the control plane's record, never the driver's own note: a
    # machine already wiped and rented again must not be wiped a second time.
    if machine is not None:
        state = {**(state or {}), "machine": machine}
    elif state and "machine" in state:
        state = {k: v for k, v in state.items() if k != "machine"}
    try:
        driver = _driver(rt, claim)
        _call(claim, driver, "delete", driver.delete, inst.id, state)
    except CleanupFailed as exc:
        reason = str(exc)

        def maintenance(s, inst: Instance) -> bool:
            inst.op, inst.next_check_at, inst.attempts = None, None, 0
            allocations.machine_maintenance(s, inst.id, reason, now)
            events.record(s, inst.id, now, f"Machine put in maintenance: {reason}")
            return False
        return maintenance
    except DriverError as exc:  # delete is safe to repeat: keep trying, slower and slower
        log.warning("instance %s: delete will be retried: %s", inst.id, exc)
        return _retry(now)

    def fn(s, inst: Instance) -> bool:
        inst.op, inst.next_check_at, inst.attempts = None, None, 0
        if machine is not None:
            allocations.machine_wiped(s, inst.id, now)
            events.record(s, inst.id, now, f"Machine {machine} wiped and offered again")
        else:
            events.record(s, inst.id, now, "Workload removed at the provider")
        return True if machine is not None else False
    return fn


def _step_watch(rt, claim: Claim, now: dt.datetime) -> Apply | None:
    """None = nothing changed (rescheduled in bulk)."""
    inst = claim.inst
    if inst.status != ACTIVE:
        return _done_with_op
    driver = _driver(rt, claim)
    try:
        st = _call(claim, driver, "status", driver.status, inst.id, inst.driver_state)
    except DriverError as exc:
        log.warning("instance %s: status unavailable: %s", inst.id, exc)
        return None
    if st.phase == "gone":
        if inst.workload == service.CONTAINER and inst.container:
            return _recreate(rt, claim, driver, st, now)
        return _end(now, st.reason or "The provider lost the workload")
    started = st.container_started if st.phase == "running" else False
    if inst.workload != service.CONTAINER or started == inst.container_started:
        return None
    watch = now + dt.timedelta(seconds=rt.settings.watch_interval_seconds)

    def fn(s, inst: Instance) -> bool:
        inst.container_started = started
        inst.updated_at = now
        inst.next_check_at = watch
        reason = f": {st.reason}" if st.reason else ""
        events.record(s, inst.id, now, "Container started" if started
                      else f"Container is not running{reason}")
        return False
    return fn


def _recreate(rt, claim: Claim, driver, gone: WorkloadStatus,
              now: dt.datetime) -> Apply | None:
    """A container that vanished under an ACTIVE instance (removed by hand, engine host
    reinstalled…) is made again from the instance's config, on the same host ports (the
    allocation is the instance's until it ends): the customer's endpoint keeps working.
    Only when that fails is the workload gone and the instance ENDED."""
    try:
        spec = allocations.for_spec(rt, driver, service.workload_spec(rt, claim.inst))
        st = _call(claim, driver, "create", driver.create, spec)
    except CallTimeout:
        return None  # no answer is no verdict: look again at the next watch
    except (DriverError, allocations.AllocationError) as exc:
        st = WorkloadStatus(phase="failed", reason=str(exc))
    if st.phase == "pending":  # under way (an image pulled again): ask again, keep watching
        return _wait(now, st, None)
    if st.phase != "running":
        why = st.reason or gone.reason or "the provider lost it"
        return _end(now, f"The container vanished and could not be recreated: {why}")
    watch = now + dt.timedelta(seconds=rt.settings.watch_interval_seconds)

    def fn(s, inst: Instance) -> bool:
        if inst.status != ACTIVE:
            return False
        transitions.recreate(s, inst, now, st, watch)
        return False
    return fn


def _done_with_op(s, inst: Instance) -> bool:
    inst.op, inst.next_check_at = None, None
    return False


STEPS = {OP_CREATE: _step_create, OP_UPDATE: _step_update, OP_DELETE: _step_delete,
         OP_WATCH: _step_watch}


# --- entry points used by workers/runner.py --------------------------------------------------

def call_step(rt, claim: Claim, now: dt.datetime) -> Apply | None:
    """The driver part of a claimed row's step: what to apply, or None when nothing changed
    (an unchanged watch, left to `reschedule_many`)."""
    claim.now = now
    try:
        return STEPS[claim.op](rt, claim, now)
    except Exception:  # a bug or a database hiccup must not stall the whole queue
        log.exception("instance %s: %s step failed; retrying later", claim.inst.id, claim.op)
        return _retry(now)


def claim_now(claim: Claim) -> dt.datetime:
    return claim.now or utcnow()


def finish_step(rt, claim: Claim, fn: Apply, now: dt.datetime) -> None:
    """Apply one step's result in its own transaction."""
    try:
        _apply(rt, claim, fn)
    except Exception:  # a bug or a database hiccup must not stall the whole queue
        log.exception("instance %s: %s step failed; retrying later", claim.inst.id, claim.op)
        try:
            _apply(rt, claim, _retry(now))
        except Exception:  # the lease will expire and the step run again
            log.exception("instance %s: could not reschedule", claim.inst.id)


def run_step(rt, claim: Claim, now: dt.datetime) -> bool:
    """One claimed row's step: driver call(s), then its result applied. Returns False when
    nothing changed (an unchanged watch, left to `reschedule_many`)."""
    fn = call_step(rt, claim, now)
    if fn is None:
        return False
    finish_step(rt, claim, fn, now)
    return True


def process_due(rt) -> int:
    """Claim what the pool has room for, run every step and wait for them (the manual clock's
    drain and tests; the background worker dispatches without waiting). Returns how many
    rows were handled."""
    return rt.dispatcher.dispatch(wait=True)


def next_due(rt) -> dt.datetime | None:
    """Earliest create/update/delete step; watches run at every step anyway, so a manual
    clock drain need not stop every 30 seconds for them."""
    with rt.db.read() as s:
        return s.scalar(select(func.min(Instance.next_check_at))
                        .where(Instance.op.in_(FOREGROUND_OPS)))
