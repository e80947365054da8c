"""The lifecycle worker's guarantees: leased rows, crash recovery, stale results dropped,
convergence with the provider (reconcile), and the simulated driver's own contract."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal

import pytest
from sqlalchemy import select, update

from gpucloud.drivers.base import PortSpec, WorkloadSpec
from gpucloud.drivers.simulated.models import SimWorkload
from gpucloud.instances import allocations, lifecycle, reconcile
from gpucloud.instances.models import Instance
from gpucloud.runtime import Runtime
from gpucloud.workers.runner import drain

LEASE = 0.5


@pytest.fixture
def settings_overrides() -> dict:
    return {"lease_seconds": LEASE}


def _row(rt, iid) -> Instance:
    with rt.db.read() as s:
        return s.get(Instance, iid)


def _setup(api, **config):
    _, headers = api.account(balance="100")
    pid = api.provider(**config)
    return headers, pid, api.offer(pid)


def test_expired_lease_is_taken_over_by_another_process(api, rt):
    headers, _, offer = _setup(api, provision_seconds=0)
    iid = api.deploy(headers, offer)
    # "process 1" claims the row and dies before doing anything with it
    crashed = lifecycle._claim(rt, rt.clock.now())
    assert [c.inst.id for c in crashed] == [iid]
    other = Runtime.build(rt.settings, migrate=False)  # "process 2" on the same database
    try:
        assert lifecycle.process_due(other) == 0  # the lease still holds
        assert _row(rt, iid).status == "INITIALIZED"
        time.sleep(LEASE + 0.1)
        assert lifecycle.process_due(other) == 1
        assert _row(rt, iid).status == "ACTIVE"
    finally:
        other.close()
    # the crashed worker's late result is dropped: it no longer holds the row
    assert lifecycle._apply(rt, crashed[0], lifecycle._fail(rt.clock.now(), "late")) is False
    assert _row(rt, iid).status == "ACTIVE" and _row(rt, iid).lock_token is None


def test_terminate_during_a_step_drops_the_stale_result(api, rt):
    headers, _, offer = _setup(api)
    iid = api.deploy(headers, offer)
    api.advance(10)
    body = {"name": "box", "container_settings": {"image": "ubuntu:24.04"}}
    assert api.client.put(f"/gpu/instances/{iid}", headers=headers, json=body).status_code == 204
    claim = lifecycle._claim(rt, rt.clock.now())[0]
    assert claim.op == "update"
    assert api.client.delete(f"/gpu/instances/{iid}", headers=headers).status_code == 204
    # the update step finishes after the terminate: its result must not resurrect anything
    fn = lifecycle._step_update(rt, claim, rt.clock.now())
    assert lifecycle._apply(rt, claim, fn) is False
    inst = _row(rt, iid)
    assert inst.status == "ENDED" and inst.op == "delete" and inst.pending_update is None
    api.advance(1)
    assert _row(rt, iid).op is None


def test_work_resumes_after_restart(api, rt):
    headers, _, offer = _setup(api)
    iid = api.deploy(headers, offer)
    api.advance(1)  # create called: the workload is provisioning at the provider
    assert _row(rt, iid).status == "INITIALIZED"
    restarted = Runtime.build(rt.settings, migrate=False)
    try:
        drain(restarted, restarted.clock.now() + dt.timedelta(seconds=10))
    finally:
        restarted.close()
    assert api.instance(headers, iid)["instance_status"] == "ACTIVE"
    with rt.db.read() as s:  # created once at the provider, not twice
        assert s.scalar(select(SimWorkload.created_at).where(SimWorkload.instance_id == iid)) \
            == dt.datetime(2026, 1, 5, 10, 0, 0, tzinfo=dt.timezone.utc)


def test_next_due_ignores_watches(api, rt):
    headers, _, offer = _setup(api, provision_seconds=7)
    assert lifecycle.next_due(rt) is None
    iid = api.deploy(headers, offer)
    assert lifecycle.next_due(rt) == rt.clock.now()
    assert lifecycle.process_due(rt) == 1
    assert lifecycle.next_due(rt) == rt.clock.now() + dt.timedelta(seconds=7)
    api.advance(7)
    assert _row(rt, iid).op == "watch"
    assert lifecycle.next_due(rt) is None


def test_reconcile_removes_orphans_only(api, rt):
    headers, pid, offer = _setup(api)
    keep, gone = api.deploy(headers, offer, name="keep"), api.deploy(headers, offer, name="gone")
    api.advance(10)
    driver = _driver(rt, pid)
    assert set(driver.list_owned()) == {keep, gone}
    # Terminated, but the worker has not removed the workload yet (say it crashed):
    assert api.client.delete(f"/gpu/instances/{gone}", headers=headers).status_code == 204
    assert reconcile.run(rt) == 1
    assert driver.list_owned() == [keep]
    assert reconcile.run(rt) == 0
    api.advance(1)  # the worker's own delete is still fine (idempotent)
    assert _row(rt, gone).op is None and _row(rt, keep).status == "ACTIVE"


def _driver(rt, pid):
    from gpucloud.catalog.models import Provider

    with rt.db.read() as s:
        p = s.get(Provider, pid)
    return rt.driver_for(p.id, p.driver, p.config)


def _spec(rt, driver, iid, pid, ports=(22, 80)):
    """As the lifecycle hands it over: host ports allocated by the control plane first."""
    return allocations.for_spec(rt, driver, WorkloadSpec(
        instance_id=iid, provider_id=pid, workload="container", name="x", gpu_count=1,
        gpu_model="h100", vcpu=1, memory_gib=1, storage_gib=1, location="US", image="ubuntu",
        expose=[PortSpec(p, "http" if p == 80 else "tcp") for p in ports]))


def test_simulated_create_is_idempotent_and_ports_unique(api, rt):
    headers, pid, offer = _setup(api, provision_seconds=0)
    a, b = api.deploy(headers, offer, name="a"), api.deploy(headers, offer, name="b")
    driver = _driver(rt, pid)
    first = driver.create(_spec(rt, driver, a, pid))
    again = driver.create(_spec(rt, driver, a, pid))
    assert first.phase == again.phase == "running"
    assert first.forwarded_ports == again.forwarded_ports and first.domain == again.domain
    other = driver.create(_spec(rt, driver, b, pid))
    ext = [p.external_port for p in first.forwarded_ports + other.forwarded_ports]
    assert len(set(ext)) == 4
    driver.delete(a, None)
    driver.delete(a, None)  # safe to repeat
    assert driver.status(a, None).phase == "gone"
    assert driver.status("no-such-id", None).phase == "gone"


def test_port_range_exhaustion_fails_and_refunds(api, rt):
    account_id, headers = api.account(balance="100")
    pid = api.provider(port_range=[31000, 31002])
    offer = api.offer(pid)
    first = api.deploy(headers, offer, name="first")  # 22 + 80 → two ports
    api.advance(1)
    second = api.deploy(headers, offer, name="second")
    api.advance(10)
    assert api.instance(headers, first)["instance_status"] == "ACTIVE"
    assert api.instance(headers, second)["instance_status"] == "FAILED"
    events = api.client.get(f"/gpu/instances/{second}/events", headers=headers).json()
    assert any("No free external port" in e for e in events)
    money = api.money(account_id)  # the failed one's reserve came back in full
    assert (money["balance"], money["reserved"], money["spent"]) == (Decimal("95.5"), 3,
                                                                     Decimal("1.5"))
    # ports come back once the first is gone
    assert api.client.delete(f"/gpu/instances/{first}", headers=headers).status_code == 204
    api.advance(1)
    third = api.deploy(headers, offer, name="third")
    api.advance(10)
    ports = api.instance(headers, third)["network"]["forwarded_ports"]
    assert sorted(p["external_port"] for p in ports) == ["31000", "31001"]


@pytest.mark.parametrize("config", [
    {"provision_seconds": -1}, {"provision_seconds": "5"}, {"fail_provisioning": "yes"},
    {"lose_after_seconds": -5}, {"port_range": [32000, 31000]}, {"port_range": [0, 10]},
    {"port_range": "30000-31000"}, {"domain_suffix": "Not A Domain"}, {"provison_seconds": 5},
])
def test_simulated_config_validation(api, config):
    r = api.client.post("/admin/providers", json={"name": "bad", "driver": "simulated",
                                                  "config": config}, headers=api.admin)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][-1] == "config"


def test_unexpected_step_error_backs_off_instead_of_spinning(api, rt):
    headers, pid, offer = _setup(api)
    iid = api.deploy(headers, offer)
    with rt.db.write() as s:  # a row a step cannot handle (corrupt resources snapshot)
        s.execute(update(Instance).where(Instance.id == iid).values(resources={}))
    assert lifecycle.process_due(rt) == 1
    inst = _row(rt, iid)
    assert inst.attempts == 1 and inst.next_check_at > rt.clock.now() and inst.lock_token is None
    assert lifecycle.process_due(rt) == 0
