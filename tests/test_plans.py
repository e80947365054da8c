"""The public catalog: GET /gpu/plans/, /gpu/plans/vms, /gpu/plans/baremetal, /gpu/default-images/."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import select

from gpucloud.catalog import service
from gpucloud.catalog.models import OfferZone
from gpucloud.catalog.schemas import OfferPatch
from gpucloud.db import Database
from gpucloud.errors import APIError

PLAN_PATHS = ["/gpu/plans/", "/gpu/plans", "/gpu/plans/vms", "/gpu/plans/baremetal",
              "/gpu/default-images/", "/gpu/default-images"]


def gpu(model="h100", vram="80Gi", interface="SXM", vendor="nvidia"):
    return {"vendor": vendor, "model": model, "vram": vram, "interface": interface}


@pytest.fixture
def user(api):
    return api.account(100)[1]


@pytest.mark.parametrize("path", PLAN_PATHS)
def test_catalog_requires_api_key(api, path):
    assert api.client.get(path).status_code == 403
    r = api.client.get(path, headers={"X-API-KEY": "gpc_nope"})
    assert r.status_code == 403
    assert isinstance(r.json()["detail"], str)


@pytest.mark.parametrize("path", PLAN_PATHS)
def test_empty_catalog(api, user, path):
    r = api.client.get(path, headers=user)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == ({"data": []} if path.endswith(("vms", "baremetal")) else [])


def test_container_plan_exact_shape(api, user):
    pid = api.provider("acme")
    oid = api.offer(pid, price="2.96", gpu=gpu("h200", "141Gi", "SXM"), vcpu=16, memory_gib=128,
                    storage_gib=120, countries=["US"])
    r = api.client.get("/gpu/plans/", headers=user)
    assert r.status_code == 200
    assert r.content.count(b'"hour":2.96') == 1  # exact decimal, no float noise
    assert api.json(r) == [{
        "plan": {
            "id": oid,
            "name": "h200-141gi-sxm-1gpu-16cpu-128gi-120gi",
            "supply": {"vcpu": {"count": 16}, "memory": {"count": 128, "units": "Gi"},
                       "storage": {"count": 120, "units": "Gi"}, "gpu_count": 1},
            "gpu_model": {"vendor": "nvidia", "model": "h200", "vram": "141Gi",
                          "interface": "SXM"},
            "pricing": {"hour": Decimal("2.96"), "upfront_hours": 3, "currency": "USDC"},
        },
        "attributes": {"location": ["US"]},
    }]
    assert api.client.get("/gpu/plans", headers=user).content == r.content


def test_plan_name_derivation(api, user):
    pid = api.provider("acme")
    api.offer(pid, gpu=gpu("a100", "80Gi", "PCIe"), gpu_count=4, vcpu=56, memory_gib=372,
              storage_gib=2328)
    names = [p["plan"]["name"] for p in api.client.get("/gpu/plans/", headers=user).json()]
    assert names == ["a100-80gi-pcie-4gpu-56cpu-372gi-2328gi"]


def test_container_multi_country_lists_free_zones_only(api, user, rt):
    pid = api.provider("acme")
    oid = api.offer(pid, countries=["US", "DE", "FI"], capacity=1)

    def locations():
        plans = api.client.get("/gpu/plans/", headers=user).json()
        return [p["attributes"]["location"] for p in plans]

    assert locations() == [["DE", "FI", "US"]]
    with rt.db.write() as s:
        _, zone, _ = service.take_capacity(s, oid, "container", "DE")
        assert zone.country == "DE"
    assert locations() == [["FI", "US"]]
    with rt.db.write() as s, pytest.raises(
            APIError, match=r"^Location DE is not available for this plan\. "
                            r"Available locations: FI, US$"):
        service.take_capacity(s, oid, "container", "DE")
    with rt.db.write() as s:
        service.take_capacity(s, oid, "container", None)
        service.take_capacity(s, oid, "container", None)
    assert locations() == []


def test_plans_sorted_by_price_then_name(api, user):
    pid = api.provider("acme")
    a = api.offer(pid, price="3", gpu=gpu("h200", "141Gi"))
    b = api.offer(pid, price="0.39", gpu=gpu("rtx4090", "24Gi", "pcie"))
    c = api.offer(pid, price="1.5", gpu=gpu("a100", "80Gi", "pcie"))
    ids = [p["plan"]["id"] for p in api.client.get("/gpu/plans/", headers=user).json()]
    assert ids == [b, c, a]


def test_full_capacity_offer_disappears_and_cannot_be_taken(api, user, rt):
    pid = api.provider("acme")
    oid = api.offer(pid, capacity=1)
    assert [p["plan"]["id"] for p in api.client.get("/gpu/plans/", headers=user).json()] == [oid]
    with rt.db.write() as s:
        service.take_capacity(s, oid, "container", None)
    assert api.client.get("/gpu/plans/", headers=user).json() == []
    with rt.db.write() as s, pytest.raises(APIError, match="^Plan no longer available$"):
        service.take_capacity(s, oid, "container", None)


def test_capacity_zero_hides_plan_and_refuses_deploy(api, user):
    pid = api.provider("acme")
    oid = api.offer(pid, capacity=5)
    r = api.client.patch(f"/admin/offers/{oid}", json={"capacity": 0}, headers=api.admin)
    assert r.status_code == 200
    assert api.client.get("/gpu/plans/", headers=user).json() == []
    r = api.client.post("/gpu/instances/", json=api.container_body(oid), headers=user)
    assert r.status_code == 400
    assert r.json() == {"detail": "Plan no longer available"}


def test_disabled_offer_and_provider_are_not_listed(api, user):
    p1, p2 = api.provider("one"), api.provider("two")
    o1 = api.offer(p1)
    o2 = api.offer(p2, price="2")
    vm = api.offer(p2, workload="vm")

    def listed():
        c = [p["plan"]["id"] for p in api.client.get("/gpu/plans/", headers=user).json()]
        v = api.client.get("/gpu/plans/vms", headers=user).json()["data"]
        return c, [o["id"] for g in v for a in g["availability_by_number"] for o in a["options"]]

    assert listed() == ([o1, o2], [vm])
    api.client.patch(f"/admin/offers/{o1}", json={"enabled": False}, headers=api.admin)
    assert listed() == ([o2], [vm])
    api.client.patch(f"/admin/providers/{p2}", json={"enabled": False}, headers=api.admin)
    assert listed() == ([], [])
    api.client.patch(f"/admin/providers/{p2}", json={"enabled": True}, headers=api.admin)
    api.client.patch(f"/admin/offers/{o1}", json={"enabled": True}, headers=api.admin)
    assert listed() == ([o1, o2], [vm])


def test_price_change_shows_at_once(api, user):
    pid = api.provider("acme")
    oid = api.offer(pid, price="1.5")
    api.client.patch(f"/admin/offers/{oid}", json={"price_hour": "1.234567"}, headers=api.admin)
    plan = api.json(api.client.get("/gpu/plans/", headers=user))[0]
    assert plan["plan"]["pricing"]["hour"] == Decimal("1.234567")


# --- VM and bare metal ----------------------------------------------------------------------------

def vm_offer(api, pid, price, location="us-central-3", country="US", **kw):
    kw.setdefault("gpu", gpu("a100", "80Gi", "pcie"))
    return api.offer(pid, workload=kw.pop("workload", "vm"), price=price, location=location,
                     country=country, **kw)


def test_vm_plans_exact_shape_grouping_and_totals(api, user):
    mc, se = api.provider("massed-compute"), api.provider("sesterce")
    a1 = vm_offer(api, mc, "1.07", vcpu=14, memory_gib=93, storage_gib=582,
                  os_options=["Ubuntu Server 22.04"])
    a2 = vm_offer(api, se, "1.20", location="tokyo-japan-2", country="JP")
    a3 = vm_offer(api, se, "1.07", location="us-central-3")
    a4 = vm_offer(api, mc, "2.10", gpu_count=2, nvlink=True)
    h1 = vm_offer(api, mc, "0.90", gpu=gpu("l40s", "48Gi", "pcie"), location="helsinki-fi-1",
                  country="FI")
    api.offer(mc, workload="baremetal", location="us-central-3", country="US")  # other type
    api.offer(mc)  # a container plan: not a VM option

    r = api.client.get("/gpu/plans/vms", headers=user)
    assert r.status_code == 200
    body = api.json(r)
    assert [g["gpu_model"]["model"] for g in body["data"]] == ["l40s", "a100"]
    l40s, a100 = body["data"]
    assert l40s["minimum_price"] == Decimal("0.9")
    assert l40s["availability_by_number"][0]["options"][0]["id"] == h1
    assert a100["gpu_model"] == {"vendor": "nvidia", "model": "a100", "vram": "80Gi",
                                 "interface": "pcie"}
    assert a100["minimum_price"] == Decimal("1.07")
    one, two = a100["availability_by_number"]
    assert one["gpu_count"] == 1 and two["gpu_count"] == 2
    assert one["minimum_price"] == Decimal("1.07")
    assert [o["id"] for o in one["options"]] == sorted([a1, a3]) + [a2]
    assert one["options_available_total"] == 3
    assert one["providers_available_total"] == 2
    assert one["data_center_available_total"] == 2
    assert sorted(one["locations"]) == ["tokyo-japan-2", "us-central-3"]
    assert sorted(one["providers"]) == ["massed-compute", "sesterce"]
    assert set(one) == {"gpu_count", "minimum_price", "options_available_total",
                        "providers_available_total", "data_center_available_total",
                        "locations", "providers", "options"}
    first = next(o for o in one["options"] if o["id"] == a1)
    assert first == {
        "id": a1, "location": "us-central-3", "provider": "massed-compute",
        "vcpu": {"count": 14}, "memory": {"count": 93, "units": "Gi"},
        "storage": {"count": 582, "units": "Gi"}, "deployment_type": "VM",
        "pricing": {"hour": Decimal("1.07"), "upfront_hours": 3, "currency": "USDC"},
        "nvlink": False, "os_options": ["Ubuntu Server 22.04"],
    }
    assert two["minimum_price"] == Decimal("2.1")
    assert two["options"][0]["id"] == a4 and two["options"][0]["nvlink"] is True


def test_baremetal_plans_only_baremetal(api, user):
    pid = api.provider("acme")
    api.offer(pid, workload="vm")
    bm = api.offer(pid, workload="baremetal", location="tokyo-japan-2", country="JP")
    body = api.client.get("/gpu/plans/baremetal", headers=user).json()
    options = [o for g in body["data"] for a in g["availability_by_number"] for o in a["options"]]
    assert [(o["id"], o["deployment_type"], o["location"]) for o in options] == [
        (bm, "BAREMETAL", "tokyo-japan-2")]


# --- filters --------------------------------------------------------------------------------------

@pytest.fixture
def market(api):
    mc, se = api.provider("massed-compute"), api.provider("sesterce")
    ids = {
        "h100-us": api.offer(mc, price="2.2", countries=["US"]),
        "h100x2-de": api.offer(se, price="4.4", gpu_count=2, countries=["DE", "FI"]),
        "l40s-us": api.offer(mc, price="0.9", gpu=gpu("l40s", "48Gi", "pcie")),
        "vm-a100": vm_offer(api, mc, "1.07"),
        "vm-h100-jp": vm_offer(api, se, "2.5", gpu=gpu("h100"), location="tokyo-japan-2",
                               country="JP"),
    }
    return ids


def container_ids(api, user, query):
    r = api.client.get("/gpu/plans/", params=query, headers=user)
    assert r.status_code == 200, r.text
    return {p["plan"]["id"] for p in r.json()}


def vm_ids(api, user, query):
    r = api.client.get("/gpu/plans/vms", params=query, headers=user)
    assert r.status_code == 200, r.text
    return {o["id"] for g in r.json()["data"] for a in g["availability_by_number"]
            for o in a["options"]}


@pytest.mark.parametrize("query,expected", [
    ({"gpu_model": "H100"}, {"h100-us", "h100x2-de"}),
    ({"gpu_count": 2}, {"h100x2-de"}),
    ({"location": "FI"}, {"h100x2-de"}),
    ({"location": "us"}, {"h100-us", "l40s-us"}),
    ({"country": "DE"}, {"h100x2-de"}),
    ({"max_price": "2.2"}, {"h100-us", "l40s-us"}),
    ({"min_vram": 80}, {"h100-us", "h100x2-de"}),
    ({"provider": "sesterce"}, {"h100x2-de"}),
    ({"gpu_model": "h100", "location": "US"}, {"h100-us"}),
    ({"unknown_param": "x"}, {"h100-us", "h100x2-de", "l40s-us"}),
])
def test_container_filters(api, user, market, query, expected):
    assert container_ids(api, user, query) == {market[k] for k in expected}


@pytest.mark.parametrize("query,expected", [
    ({"gpu_model": "a100"}, {"vm-a100"}),
    ({"location": "tokyo-japan-2"}, {"vm-h100-jp"}),
    ({"location": "JP"}, {"vm-h100-jp"}),
    ({"country": "US"}, {"vm-a100"}),
    ({"max_price": "2"}, {"vm-a100"}),
    ({"provider": "massed-compute"}, {"vm-a100"}),
    ({"min_vram": 81}, set()),
])
def test_vm_filters(api, user, market, query, expected):
    assert vm_ids(api, user, query) == {market[k] for k in expected}


@pytest.mark.parametrize("path", ["/gpu/plans/", "/gpu/plans/vms", "/gpu/plans/baremetal"])
@pytest.mark.parametrize("param,value", [
    ("gpu_count", "two"), ("gpu_count", "0"), ("max_price", "-1"), ("max_price", "1.0000001"),
    ("min_vram", "lots"), ("location", "not a place"), ("country", "USA"), ("gpu_model", ""),
])
def test_invalid_filter_is_422(api, user, path, param, value):
    r = api.client.get(path, params={param: value}, headers=user)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert isinstance(detail, list) and detail[0]["loc"] == ["query", param]
    assert {"type", "loc", "msg", "input"} <= set(detail[0])


# --- default images -------------------------------------------------------------------------------

def test_default_images_shape(api, user, rt):
    from gpucloud.catalog.demo import seed_default_images

    with rt.db.write() as s:
        seed_default_images(s)
    images = api.client.get("/gpu/default-images/", headers=user).json()
    assert len(images) >= 3
    for image in images:
        assert set(image) == {"slug", "name", "description", "image", "expose", "environment",
                              "startup_command", "requires_ssh"}
        assert image["expose"] and all(set(p) == {"port", "protocol"} for p in image["expose"])
    ssh = [i for i in images if i["requires_ssh"]]
    assert ssh and {"port": "22", "protocol": "tcp"} in ssh[0]["expose"]
    assert any("jupyter" in i["image"] for i in images)
    assert any("pytorch" in i["image"] for i in images)
    assert api.client.get("/gpu/default-images", headers=user).json() == images


def test_demo_catalog_looks_like_a_market(demo, user):
    plans = demo.client.get("/gpu/plans/", headers=user).json()
    vms = demo.client.get("/gpu/plans/vms", headers=user).json()["data"]
    bare = demo.client.get("/gpu/plans/baremetal", headers=user).json()["data"]
    models = {p["plan"]["gpu_model"]["model"] for p in plans}
    assert {"h200", "h100", "a100", "l40s", "rtx4090"} <= models
    countries = {c for p in plans for c in p["attributes"]["location"]}
    assert len(countries) >= 5
    assert len({(g["gpu_model"]["model"], g["gpu_model"]["interface"]) for g in vms}) >= 5
    assert bare
    prices = [g["minimum_price"] for g in vms]
    assert prices == sorted(prices)
    options = [o for g in vms for a in g["availability_by_number"] for o in a["options"]]
    assert all(len(o["os_options"]) >= 2 for o in options)


# --- cache ----------------------------------------------------------------------------------------

def first_zone(rt, offer_id: str) -> int:
    with rt.db.read() as s:
        return s.scalar(select(OfferZone.id).where(OfferZone.offer_id == offer_id))


@pytest.mark.parametrize("settings_overrides", [{"plans_cache_seconds": 60}])
def test_cached_plans_are_invalidated_by_changes(api, user, rt):
    pid = api.provider("acme")
    oid = api.offer(pid, price="1.5", capacity=1)
    first = api.client.get("/gpu/plans/", headers=user)
    assert len(first.json()) == 1
    # A change made by another process is not seen while the entry lives: the cache is real.
    other = Database(rt.settings)
    try:
        with other.write() as s:
            service.take_capacity(s, oid, "container", None)
    finally:
        other.dispose()
    assert api.client.get("/gpu/plans/", headers=user).content == first.content
    # The same change through this process invalidates after its commit (no route involved),
    # and a rolled-back one does not.
    with pytest.raises(RuntimeError), rt.db.write() as s:
        service.patch_offer(s, oid, OfferPatch(capacity=5))
        raise RuntimeError("rolled back")
    assert api.client.get("/gpu/plans/", headers=user).content == first.content
    with rt.db.write() as s:
        service.release_capacity(s, first_zone(rt, oid))
    assert len(api.client.get("/gpu/plans/", headers=user).json()) == 1
    with rt.db.write() as s:
        service.take_capacity(s, oid, "container", None)
    assert api.client.get("/gpu/plans/", headers=user).json() == []
    # A change through the API invalidates at once.
    api.client.patch(f"/admin/offers/{oid}", json={"capacity": 2, "price_hour": "1.75"},
                     headers=api.admin)
    plans = api.json(api.client.get("/gpu/plans/", headers=user))
    assert plans[0]["plan"]["pricing"]["hour"] == Decimal("1.75")
    api.client.patch(f"/admin/offers/{oid}", json={"enabled": False}, headers=api.admin)
    assert api.client.get("/gpu/plans/", headers=user).json() == []
    api.client.patch(f"/admin/offers/{oid}", json={"enabled": True}, headers=api.admin)
    assert len(api.client.get("/gpu/plans/", headers=user).json()) == 1
    # Filtered responses are cached separately and invalidated too.
    assert len(api.client.get("/gpu/plans/?gpu_model=h100", headers=user).json()) == 1
    api.client.patch(f"/admin/providers/{pid}", json={"enabled": False}, headers=api.admin)
    assert api.client.get("/gpu/plans/?gpu_model=h100", headers=user).json() == []


@pytest.mark.parametrize("settings_overrides", [{"plans_cache_seconds": 60}])
def test_cached_plans_are_invalidated_by_deploys(api, rt):
    _, user = api.account(100)
    pid = api.provider("acme")
    container = api.offer(pid, capacity=1)
    vm = api.offer(pid, workload="vm", capacity=1)
    assert len(api.client.get("/gpu/plans/", headers=user).json()) == 1
    assert len(api.client.get("/gpu/plans/vms", headers=user).json()["data"]) == 1
    api.deploy(user, container)
    assert api.client.get("/gpu/plans/", headers=user).json() == []
    api.deploy_vm(user, vm)
    assert api.client.get("/gpu/plans/vms", headers=user).json() == {"data": []}
    r = api.client.post("/gpu/instances/", json=api.container_body(container), headers=user)
    assert r.status_code == 400 and r.json() == {"detail": "Plan no longer available"}


@pytest.mark.parametrize("settings_overrides", [{"plans_cache_seconds": 60}])
def test_concurrent_requests_on_a_cold_cache_get_identical_bytes(api, live_server):
    import concurrent.futures

    import httpx

    _, user = api.account()
    pid = api.provider("acme")
    for price in ("1.1", "2.2", "3.3"):
        api.offer(pid, price=price)
    with httpx.Client(base_url=live_server.url, headers=user, timeout=30) as c, \
            concurrent.futures.ThreadPoolExecutor(16) as pool:
        bodies = list(pool.map(lambda _: c.get("/gpu/plans/?gpu_model=h100").content, range(32)))
    assert len(set(bodies)) == 1
    assert [p["plan"]["pricing"]["hour"] for p in api.json(httpx.Response(200, content=bodies[0]))
            ] == [Decimal("1.1"), Decimal("2.2"), Decimal("3.3")]
