"""Transitions are written once (instances/transitions.py): billing's set-based ENDED takes its
column values from there, so an instance ended by an hour boundary and one ended by DELETE
end with the same row — and the same effects around it (ports freed, capacity back, the
workload removed, the plans cache and the worker told after commit, not before)."""

from __future__ import annotations

from sqlalchemy import select

from gpucloud.catalog.models import OfferZone
from gpucloud.drivers.simulated.models import SimWorkload
from gpucloud.instances.models import Instance, PortAllocation

# What differs between any two instances whatever happened to them.
OWN = {"id", "account_id", "name", "created_at", "updated_at", "activated_at", "ended_at",
       "status_reason", "spent", "billed_until", "domain", "network", "driver_state",
       "credentials_enc"}


def _row(rt, iid: str) -> dict:
    with rt.db.read() as s:
        inst = s.get(Instance, iid)
        return {c.key: getattr(inst, c.key) for c in Instance.__table__.columns}


def _ports(rt, iid: str) -> int:
    with rt.db.read() as s:
        return len(s.scalars(select(PortAllocation).where(PortAllocation.instance_id == iid))
                   .all())


def test_ended_by_a_boundary_and_by_delete_leave_identical_rows(api, rt):
    pid = api.provider(provision_seconds=0)
    plan = api.offer(pid, price="1", capacity=2)
    _, poor = api.account(balance="3", name="poor")  # three hours, then the reserve is out
    _, rich = api.account(balance="100", name="rich")
    by_boundary = api.deploy(poor, plan, name="a")
    by_delete = api.deploy(rich, plan, name="b")
    api.advance(10)
    assert _ports(rt, by_boundary) == _ports(rt, by_delete) == 2
    api.advance(2 * 3600)
    assert api.client.delete(f"/gpu/instances/{by_delete}", headers=rich).status_code == 204
    api.advance(3600)
    assert api.instance(poor, by_boundary)["instance_status"] == "ENDED"

    a, b = _row(rt, by_boundary), _row(rt, by_delete)
    assert {k: v for k, v in a.items() if k not in OWN} == \
        {k: v for k, v in b.items() if k not in OWN}
    for row in (a, b):
        assert row["status"] == "ENDED" and row["reserve"] == 0 and row["op"] is None
        assert row["ended_at"] == row["updated_at"]
    assert a["status_reason"].startswith("Funds exhausted")
    assert b["status_reason"] == "Terminated by user"
    # Around the row: ports freed, capacity back, the workload gone at the provider.
    assert _ports(rt, by_boundary) == _ports(rt, by_delete) == 0
    with rt.db.read() as s:
        assert s.scalar(select(OfferZone.in_use).where(OfferZone.offer_id == plan)) == 0
        for iid in (by_boundary, by_delete):
            assert s.get(SimWorkload, iid).deleted_at is not None
    # And the plans cache heard of it: the capacity is on sale again.
    user = api.account(balance="1", name="u")[1]
    plans = api.client.get("/gpu/plans/", headers=user).json()
    assert [p["plan"]["id"] for p in plans] == [plan]
