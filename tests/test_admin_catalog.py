"""Operator catalog: /admin/providers, /admin/offers, and the capacity primitives."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

from gpucloud.catalog import service
from gpucloud.errors import APIError

CONTAINER = {
    "workload": "container",
    "gpu": {"vendor": "nvidia", "model": "h100", "vram": "80Gi", "interface": "SXM"},
    "gpu_count": 1, "vcpu": 16, "memory_gib": 128, "storage_gib": 200, "price_hour": "2.25",
    "countries": ["US", "DE"], "capacity": 4,
}
VM = {
    "workload": "vm",
    "gpu": {"vendor": "nvidia", "model": "a100", "vram": "80Gi", "interface": "pcie"},
    "gpu_count": 1, "vcpu": 14, "memory_gib": 93, "storage_gib": 582, "price_hour": "1.07",
    "location": "us-central-3", "country": "US", "capacity": 2,
    "os_options": ["Ubuntu Server 22.04", "Debian 12"],
}


def post_offer(api, pid, base, **changes):
    body = {**base, "provider_id": pid, **changes}
    body = {k: v for k, v in body.items() if v is not ...}
    return api.client.post("/admin/offers", json=body, headers=api.admin)


# --- auth -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path", [
    ("post", "/admin/providers"), ("get", "/admin/providers"), ("patch", "/admin/providers/x"),
    ("post", "/admin/offers"), ("get", "/admin/offers"), ("patch", "/admin/offers/x"),
    ("get", "/admin/offers/x"), ("post", "/admin/catalog"),
])
@pytest.mark.parametrize("headers", [{}, {"X-ADMIN-KEY": "wrong"}])
def test_admin_catalog_requires_admin_key(api, method, path, headers):
    _, user = api.account()
    for h in (headers, user):
        r = getattr(api.client, method)(path, headers=h, **({} if method == "get" else
                                                              {"json": {}}))
        assert r.status_code == 403, (h, r.text)


# --- providers ------------------------------------------------------------------------------------

def test_create_and_list_provider(api):
    r = api.client.post("/admin/providers", headers=api.admin,
                        json={"name": "massed-compute", "driver": "simulated",
                              "config": {"provision_seconds": 5}})
    assert r.status_code == 201
    body = r.json()
    assert set(body) >= {"id", "name", "driver", "config", "enabled", "created_at"}
    assert body["name"] == "massed-compute" and body["driver"] == "simulated"
    assert body["config"]["provision_seconds"] == 5
    assert body["enabled"] is True
    assert body["created_at"] == "2026-01-05T10:00:00Z"
    listed = api.client.get("/admin/providers", headers=api.admin).json()
    assert [p["id"] for p in listed] == [body["id"]]
    assert listed[0]["capacity"] == 0 and listed[0]["in_use"] == 0


def test_duplicate_provider_name_is_400(api):
    api.provider("dup")
    r = api.client.post("/admin/providers", headers=api.admin,
                        json={"name": "dup", "driver": "simulated", "config": {}})
    assert r.status_code == 400
    assert r.json() == {"detail": "Provider dup already exists"}


def test_unknown_driver_is_422_at_driver(api):
    r = api.client.post("/admin/providers", headers=api.admin,
                        json={"name": "x", "driver": "warp-drive", "config": {}})
    assert r.status_code == 422
    err = r.json()["detail"][0]
    assert err["loc"] == ["body", "driver"] and err["input"] == "warp-drive"
    assert "simulated" in err["msg"]
    assert api.client.get("/admin/providers", headers=api.admin).json() == []


def test_config_rejected_by_driver_is_422_at_config(api):
    bad = {"provision_seconds": "soon"}
    r = api.client.post("/admin/providers", headers=api.admin,
                        json={"name": "x", "driver": "simulated", "config": bad})
    assert r.status_code == 422
    err = r.json()["detail"][0]
    assert err["loc"] == ["body", "config"] and err["input"] == bad
    assert err["msg"].startswith("Value error, ")
    assert api.client.get("/admin/providers", headers=api.admin).json() == []


@pytest.mark.parametrize("body,loc", [
    ({"driver": "simulated"}, ["body", "name"]),
    ({"name": "", "driver": "simulated"}, ["body", "name"]),
    ({"name": "has space", "driver": "simulated"}, ["body", "name"]),
    ({"name": "ok"}, ["body", "driver"]),
    ({"name": "ok", "driver": "simulated", "config": []}, ["body", "config"]),
    ({"name": "ok", "driver": "simulated", "colour": "red"}, ["body", "colour"]),
])
def test_provider_field_rules(api, body, loc):
    r = api.client.post("/admin/providers", headers=api.admin, json=body)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == loc


def test_patch_provider(api):
    pid = api.provider("p")
    r = api.client.patch(f"/admin/providers/{pid}", json={"enabled": False}, headers=api.admin)
    assert r.status_code == 200
    assert r.json()["enabled"] is False and r.json()["id"] == pid
    assert api.client.get("/admin/providers", headers=api.admin).json()[0]["enabled"] is False
    r = api.client.patch("/admin/providers/nope", json={"enabled": False}, headers=api.admin)
    assert r.status_code == 404
    r = api.client.patch(f"/admin/providers/{pid}", json={"enabled": "maybe"}, headers=api.admin)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "enabled"]
    r = api.client.patch(f"/admin/providers/{pid}", json={}, headers=api.admin)
    assert r.status_code == 422


def test_provider_listing_sums_capacity_in_use(api, rt):
    pid = api.provider("p")
    o1 = api.offer(pid, capacity=3, countries=["US", "DE"])
    api.offer(pid, workload="vm", capacity=2)
    with rt.db.write() as s:
        service.take_capacity(s, o1, "container", None)
    p = api.client.get("/admin/providers", headers=api.admin).json()[0]
    assert (p["offers"], p["capacity"], p["in_use"]) == (2, 8, 1)


# --- offers ---------------------------------------------------------------------------------------

def test_create_container_offer(api):
    pid = api.provider("p")
    r = post_offer(api, pid, CONTAINER)
    assert r.status_code == 201
    body = api.json(r)
    assert body["provider_id"] == pid and body["provider"] == "p"
    assert body["workload"] == "container"
    assert body["gpu"] == CONTAINER["gpu"]
    assert body["price_hour"] == Decimal("2.25")
    assert body["countries"] == ["DE", "US"]
    assert [(z["country"], z["capacity"], z["in_use"]) for z in body["zones"]] == [
        ("DE", 4, 0), ("US", 4, 0)]
    assert body["capacity"] == 8 and body["in_use"] == 0
    assert body["name"] == "h100-80gi-sxm-1gpu-16cpu-128gi-200gi"
    listed = api.json(api.client.get("/admin/offers", headers=api.admin))
    assert listed == [body]
    assert api.json(api.client.get(f"/admin/offers/{body['id']}", headers=api.admin)) == body


def test_create_vm_offer_and_single_country(api):
    pid = api.provider("p")
    r = post_offer(api, pid, VM)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["location"] == "us-central-3" and body["countries"] == ["US"]
    assert body["os_options"] == VM["os_options"]
    r = post_offer(api, pid, CONTAINER, countries=..., country="FI")
    assert r.status_code == 201 and r.json()["countries"] == ["FI"]
    r = post_offer(api, pid, VM, workload="baremetal", nvlink=True, gpu_count=8)
    assert r.status_code == 201 and r.json()["nvlink"] is True


def test_offer_for_unknown_provider_is_404(api):
    r = post_offer(api, "no-such-provider", CONTAINER)
    assert r.status_code == 404
    assert r.json() == {"detail": "Provider not found"}


@pytest.mark.parametrize("base,changes,loc", [
    (CONTAINER, {"workload": "gpu"}, ["body", "workload"]),
    (CONTAINER, {"gpu": {"vendor": "nvidia", "model": "h100", "vram": "80GB",
                         "interface": "SXM"}}, ["body", "gpu", "vram"]),
    (CONTAINER, {"gpu": {"vendor": "nvidia", "model": "h 100", "vram": "80Gi",
                         "interface": "SXM"}}, ["body", "gpu", "model"]),
    (CONTAINER, {"gpu": {"vendor": "nvidia", "vram": "80Gi", "interface": "SXM"}},
     ["body", "gpu", "model"]),
    (CONTAINER, {"gpu_count": 0}, ["body", "gpu_count"]),
    (CONTAINER, {"vcpu": -1}, ["body", "vcpu"]),
    (CONTAINER, {"memory_gib": "lots"}, ["body", "memory_gib"]),
    (CONTAINER, {"storage_gib": 0}, ["body", "storage_gib"]),
    (CONTAINER, {"price_hour": "0"}, ["body", "price_hour"]),
    (CONTAINER, {"price_hour": "-1"}, ["body", "price_hour"]),
    (CONTAINER, {"price_hour": "1.0000001"}, ["body", "price_hour"]),
    (CONTAINER, {"price_hour": "abc"}, ["body", "price_hour"]),
    (CONTAINER, {"capacity": -1}, ["body", "capacity"]),
    (CONTAINER, {"countries": ["us"]}, ["body", "countries", 0]),
    (CONTAINER, {"countries": ["US", "USA"]}, ["body", "countries", 1]),
    (CONTAINER, {"countries": []}, ["body", "countries"]),
    (CONTAINER, {"countries": ["US", "US"]}, ["body", "countries"]),
    (CONTAINER, {"countries": ...}, ["body", "countries"]),
    (CONTAINER, {"country": "DE"}, ["body", "country"]),
    (CONTAINER, {"os_options": ["Ubuntu Server 22.04"]}, ["body", "os_options"]),
    (CONTAINER, {"provider_id": ...}, ["body", "provider_id"]),
    (CONTAINER, {"nvlink": "sometimes"}, ["body", "nvlink"]),
    (CONTAINER, {"extra": 1}, ["body", "extra"]),
    (VM, {"location": ...}, ["body", "location"]),
    (VM, {"location": "US Central"}, ["body", "location"]),
    (VM, {"country": ...}, ["body", "country"]),
    (VM, {"country": "usa"}, ["body", "country"]),
    (VM, {"countries": ["US"]}, ["body", "countries"]),
    (VM, {"os_options": []}, ["body", "os_options"]),
    (VM, {"os_options": ...}, ["body", "os_options"]),
    (VM, {"os_options": [""]}, ["body", "os_options", 0]),
    (VM, {"workload": "baremetal", "os_options": ...}, ["body", "os_options"]),
])
def test_offer_field_rules(api, base, changes, loc):
    pid = api.provider("p")
    if changes.get("provider_id") is ...:
        body = {k: v for k, v in base.items()}
        r = api.client.post("/admin/offers", json=body, headers=api.admin)
    else:
        r = post_offer(api, pid, base, **changes)
    assert r.status_code == 422, r.text
    locs = [e["loc"] for e in r.json()["detail"]]
    assert loc in locs
    assert all({"type", "loc", "msg", "input"} <= set(e) for e in r.json()["detail"])
    assert api.client.get("/admin/offers", headers=api.admin).json() == []


def test_patch_offer(api, rt):
    pid = api.provider("p")
    oid = post_offer(api, pid, CONTAINER).json()["id"]
    with rt.db.write() as s:
        service.take_capacity(s, oid, "container", "US")
    r = api.client.patch(f"/admin/offers/{oid}", headers=api.admin,
                         json={"capacity": 1, "price_hour": "3.000001", "enabled": False})
    assert r.status_code == 200
    body = api.json(r)
    assert body["price_hour"] == Decimal("3.000001") and body["enabled"] is False
    assert [(z["country"], z["capacity"], z["in_use"]) for z in body["zones"]] == [
        ("DE", 1, 0), ("US", 1, 1)]
    # Only the fields given change.
    r = api.client.patch(f"/admin/offers/{oid}", headers=api.admin, json={"enabled": True})
    body = api.json(r)
    assert body["enabled"] is True and body["capacity"] == 2
    assert body["price_hour"] == Decimal("3.000001")


@pytest.mark.parametrize("patch,loc", [
    ({"capacity": -1}, ["body", "capacity"]),
    ({"price_hour": "0"}, ["body", "price_hour"]),
    ({"price_hour": "1.1234567"}, ["body", "price_hour"]),
    ({"enabled": "nah"}, ["body", "enabled"]),
    ({"gpu_count": 2}, ["body", "gpu_count"]),
])
def test_patch_offer_field_rules(api, patch, loc):
    pid = api.provider("p")
    oid = api.offer(pid, price="1.5")
    r = api.client.patch(f"/admin/offers/{oid}", json=patch, headers=api.admin)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc
    assert api.json(api.client.get(f"/admin/offers/{oid}", headers=api.admin))["price_hour"] == \
        Decimal("1.5")


def test_patch_or_get_unknown_offer_is_404(api):
    assert api.client.patch("/admin/offers/nope", json={"enabled": False},
                            headers=api.admin).status_code == 404
    assert api.client.get("/admin/offers/nope", headers=api.admin).status_code == 404


def test_list_offers_by_provider(api):
    p1, p2 = api.provider("one"), api.provider("two")
    o1, o2 = api.offer(p1), api.offer(p2)
    assert [o["id"] for o in api.client.get("/admin/offers", params={"provider_id": p2},
                                            headers=api.admin).json()] == [o2]
    assert {o["id"] for o in api.client.get("/admin/offers", headers=api.admin).json()} == {o1, o2}


# --- capacity primitives --------------------------------------------------------------------------

def test_take_capacity_rules(api, rt):
    pid = api.provider("p")
    c = api.offer(pid, countries=["US", "DE"], capacity=2)
    vm = api.offer(pid, workload="vm", capacity=1)
    with rt.db.write() as s:
        offer, zone, provider = service.take_capacity(s, c, "container", None)
        assert (offer.id, provider.id) == (c, pid)
        assert zone.country == "DE" and zone.in_use == 1  # tie → alphabetical
        _, zone2, _ = service.take_capacity(s, c, "container", None)
        assert zone2.country == "US"  # the zone with more free capacity
        assert service.plan_resources(offer) == {
            "supply": {"vcpu": {"count": 16}, "memory": {"count": 128, "units": "Gi"},
                       "storage": {"count": 200, "units": "Gi"}, "gpu_count": 1},
            "gpu_model": {"vendor": "nvidia", "model": "h100", "vram": "80Gi",
                          "interface": "SXM"}}
    for plan, workload, country, message in [
        (c, "vm", None, "Plan no longer available"),          # wrong type
        (vm, "baremetal", None, "Plan no longer available"),
        ("unknown", "container", None, "Plan no longer available"),
        (c, "container", "FI", ("Location FI is not available for this plan. "
                                "Available locations: DE, US")),
    ]:
        with rt.db.write() as s, pytest.raises(APIError) as exc:
            service.take_capacity(s, plan, workload, country)
        assert exc.value.detail == message
        assert exc.value.status_code == 400
    api.client.patch(f"/admin/providers/{pid}", json={"enabled": False}, headers=api.admin)
    with rt.db.write() as s, pytest.raises(APIError, match="^Plan no longer available$"):
        service.take_capacity(s, vm, "vm", None)


def test_release_capacity_never_below_zero(api, rt):
    pid = api.provider("p")
    oid = api.offer(pid, capacity=1)
    with rt.db.write() as s:
        _, zone, _ = service.take_capacity(s, oid, "container", None)
        zone_id = zone.id
    with rt.db.write() as s:
        service.release_capacity(s, zone_id)
        service.release_capacity(s, zone_id)
    offer = api.client.get(f"/admin/offers/{oid}", headers=api.admin).json()
    assert offer["in_use"] == 0
    with rt.db.write() as s:
        service.take_capacity(s, oid, "container", None)
    assert api.client.get(f"/admin/offers/{oid}", headers=api.admin).json()["in_use"] == 1


@pytest.mark.parametrize("capacity", [1, 3])
def test_concurrent_takes_never_exceed_capacity(api, rt, capacity):
    pid = api.provider("p")
    oid = api.offer(pid, capacity=capacity)
    threads_n = 12
    barrier = threading.Barrier(threads_n)
    results: list[str] = []
    lock = threading.Lock()

    def worker():
        barrier.wait()
        try:
            with rt.db.write() as s:
                service.take_capacity(s, oid, "container", None)
            outcome = "ok"
        except APIError as exc:
            outcome = exc.detail
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == threads_n
    assert results.count("ok") == capacity
    assert results.count("Plan no longer available") == threads_n - capacity
    assert api.client.get(f"/admin/offers/{oid}", headers=api.admin).json()["in_use"] == capacity


def test_nul_characters_are_422_or_404_never_500(api, rt):
    r = api.client.post("/admin/providers", headers=api.admin,
                        json={"name": "x", "driver": "simulated",
                              "config": {"domain_suffix": "a\u0000b"}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "config",
                                                                     "domain_suffix"]
    pid = api.provider("p")
    r = post_offer(api, pid, VM, os_options=["Ubuntu\u0000"])
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "os_options", 0]
    r = post_offer(api, "bad\u0000id", CONTAINER)  # refused at the field, before any lookup
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "provider_id"]
    assert api.client.get("/admin/offers/x%00y", headers=api.admin).status_code == 404
    assert api.client.patch("/admin/providers/x%00y", json={"enabled": True},
                            headers=api.admin).status_code == 404
    assert api.client.get("/admin/offers", params={"provider_id": "a\u0000"},
                          headers=api.admin).json() == []
    with rt.db.write() as s, pytest.raises(APIError, match="^Plan no longer available$"):
        service.take_capacity(s, "x\u0000" * 40, "container", None)
