"""Convergence with the providers: remove workloads that no live instance owns (SPEC §5).

They appear when a process dies between a driver call and recording its result (a create
that succeeded after its instance was terminated, a delete that never ran…). The instance
rows are the source of truth: anything a provider holds that is not INITIALIZED/ACTIVE and has
no create/update still in flight is deleted. `delete` is safe to repeat, so racing with the
lifecycle worker's own delete is harmless.
"""

from __future__ import annotations

import logging

from sqlalchemy import or_, select

from gpucloud.catalog.models import Provider
from gpucloud.drivers.base import DriverError
from gpucloud.instances.models import ACTIVE, INITIALIZED, OP_CREATE, OP_UPDATE, Instance

log = logging.getLogger("gpucloud.reconcile")


def run(rt) -> int:
    """One pass over every enabled provider. Returns how many workloads were removed."""
    with rt.db.read() as s:
        providers = s.scalars(select(Provider).where(Provider.enabled.is_(True))).all()
    removed = 0
    for provider in providers:
        # In one of the provider's slots, with its call timeout: a hung provider costs this
        # pass one timeout, and a busy one is simply looked at next time.
        slot = rt.calls.acquire(provider.id)
        if slot is None:
            continue
        try:
            driver = rt.driver_for(provider.id, provider.driver, provider.config or {})
            # Listed BEFORE reading the instances: a workload created after this listing
            # is not in it, so a brand-new instance can never look orphaned.
            owned = set(slot.call(driver.list_owned, timeout=driver.call_timeout,
                                  what="list"))
        except (DriverError, ValueError) as exc:
            log.warning("provider %s: cannot list workloads: %s", provider.name, exc)
            slot.drop()
            continue
        try:
            removed += _remove_orphans(rt, provider, driver, slot, owned)
        finally:
            slot.drop()
    return removed


def _remove_orphans(rt, provider: Provider, driver, slot, owned: set[str]) -> int:
    if not owned:
        return 0
    with rt.db.read() as s:
        live = set(s.scalars(select(Instance.id).where(
            Instance.provider_id == provider.id,
            or_(Instance.status.in_((INITIALIZED, ACTIVE)),
                Instance.op.in_((OP_CREATE, OP_UPDATE))))))
    removed = 0
    for instance_id in sorted(owned - live):
        try:
            slot.call(driver.delete, instance_id, None, timeout=driver.call_timeout,
                      what="delete")
        except DriverError as exc:
            log.warning("provider %s: orphan %s not removed yet: %s", provider.name,
                        instance_id, exc)
            continue
        log.info("provider %s: removed workload %s that no live instance owns",
                 provider.name, instance_id)
        removed += 1
    return removed
