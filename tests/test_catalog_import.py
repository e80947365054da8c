"""POST /admin/catalog: declarative, idempotent, all-or-nothing catalog import."""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "catalog-example.yaml"


@pytest.fixture
def doc() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def apply(api, document):
    return api.client.post("/admin/catalog", json=document, headers=api.admin)


def snapshot(api):
    providers = api.client.get("/admin/providers", headers=api.admin).json()
    offers = api.client.get("/admin/offers", headers=api.admin).json()
    images = api.client.get("/gpu/default-images/", headers=api.account(name="peek")[1]).json()
    return providers, offers, images


def test_example_import_then_idempotent(api, doc):
    r = apply(api, doc)
    assert r.status_code == 200, r.text
    assert r.json() == {"providers_created": 2, "providers_updated": 0, "offers_created": 4,
                        "offers_updated": 0, "default_images": 2}
    providers, offers, images = snapshot(api)
    assert [p["name"] for p in providers] == ["massed-compute", "nordic-gpu"]
    assert len(offers) == 4
    assert [i["slug"] for i in images] == ["debian-ssh", "jupyter-pytorch"]
    by_location = {o["location"]: o for o in offers if o["location"]}
    assert by_location["helsinki-fi-1"]["nvlink"] is True
    assert by_location["helsinki-fi-1"]["workload"] == "baremetal"

    again = apply(api, doc)
    assert again.json() == {"providers_created": 0, "providers_updated": 2, "offers_created": 0,
                            "offers_updated": 4, "default_images": 2}
    providers2, offers2, images2 = snapshot(api)
    assert [p["id"] for p in providers2] == [p["id"] for p in providers]
    assert offers2 == offers and images2 == images


def test_import_updates_by_natural_key(api, doc, rt):
    from gpucloud.catalog import service

    apply(api, doc)
    h100 = next(o for o in api.client.get("/admin/offers", headers=api.admin).json()
                if o["gpu"]["model"] == "h100" and o["workload"] == "container")
    with rt.db.write() as s:
        service.take_capacity(s, h100["id"], "container", "CA")
    changed = copy.deepcopy(doc)
    offer = changed["offers"][0]
    offer.update(price_hour="2.10", capacity=3, countries=["US", "DE"])
    changed["providers"][1]["enabled"] = False
    r = apply(api, changed)
    assert r.status_code == 200
    assert r.json()["offers_created"] == 0
    after = api.json(api.client.get(f"/admin/offers/{h100['id']}", headers=api.admin))
    assert after["price_hour"] == Decimal("2.1")
    # CA left the file: it stops taking deploys but its running instance still counts.
    assert [(z["country"], z["capacity"], z["in_use"]) for z in after["zones"]] == [
        ("CA", 0, 1), ("DE", 3, 0), ("US", 3, 0)]
    nordic = next(p for p in api.client.get("/admin/providers", headers=api.admin).json()
                  if p["name"] == "nordic-gpu")
    assert nordic["enabled"] is False
    # A changed natural key (vcpu) is a new offer, the old one is kept.
    changed["offers"][0]["vcpu"] = 26
    assert apply(api, changed).json()["offers_created"] == 1
    assert len(api.client.get("/admin/offers", headers=api.admin).json()) == 5


def test_import_makes_plans_visible(api, doc):
    _, user = api.account()
    assert api.client.get("/gpu/plans/", headers=user).json() == []
    apply(api, doc)
    plans = api.client.get("/gpu/plans/", headers=user).json()
    assert {p["plan"]["name"] for p in plans} == {"rtx4090-24gi-pcie-1gpu-8cpu-48gi-150gi",
                                                  "h100-80gi-sxm-1gpu-24cpu-192gi-500gi"}
    vms = api.client.get("/gpu/plans/vms", headers=user).json()["data"]
    assert [g["gpu_model"]["model"] for g in vms] == ["a100"]


def test_offers_may_reference_existing_providers(api):
    pid = api.provider("already-here")
    r = apply(api, {"offers": [{
        "provider": "already-here", "workload": "container",
        "gpu": {"vendor": "nvidia", "model": "l40s", "vram": "48Gi", "interface": "pcie"},
        "gpu_count": 1, "vcpu": 12, "memory_gib": 96, "storage_gib": 200, "price_hour": 0.89,
        "country": "NL", "capacity": 3}]})
    assert r.status_code == 200, r.text
    assert r.json()["default_images"] is None
    offers = api.json(api.client.get("/admin/offers", headers=api.admin))
    assert offers[0]["provider_id"] == pid and offers[0]["price_hour"] == Decimal("0.89")


def _break(doc, path, value):
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize("path,value,loc", [
    (["providers", 0, "driver"], "warp", ["body", "providers", 0, "driver"]),
    (["providers", 1, "config"], {"provision_seconds": "x"}, ["body", "providers", 1, "config"]),
    (["providers", 1, "name"], "massed-compute", ["body", "providers", 1, "name"]),
    (["offers", 0, "provider"], "nobody", ["body", "offers", 0, "provider"]),
    (["offers", 1, "price_hour"], "0.0000001", ["body", "offers", 1, "price_hour"]),
    (["offers", 2, "location"], ..., ["body", "offers", 2, "location"]),
    (["offers", 2, "os_options"], [], ["body", "offers", 2, "os_options"]),
    (["offers", 0, "countries"], ["usa"], ["body", "offers", 0, "countries", 0]),
    (["offers", 3, "capacity"], -2, ["body", "offers", 3, "capacity"]),
    (["default_images", 0, "expose"], [{"port": 0}], ["body", "default_images", 0, "expose", 0,
                                                      "port"]),
    (["default_images", 1, "slug"], "debian-ssh", ["body", "default_images", 1, "slug"]),
    (["surprise"], True, ["body", "surprise"]),
])
def test_invalid_document_writes_nothing(api, doc, path, value, loc):
    r = apply(api, _break(doc, path, value))
    assert r.status_code == 422, r.text
    assert loc in [e["loc"] for e in r.json()["detail"]]
    providers, offers, images = snapshot(api)
    assert providers == [] and offers == [] and images == []


def test_duplicate_offer_in_document_is_422(api, doc):
    doc["offers"].append(copy.deepcopy(doc["offers"][0]))
    r = apply(api, doc)
    assert r.status_code == 422
    assert ["body", "offers", 4] in [e["loc"] for e in r.json()["detail"]]
    assert api.client.get("/admin/offers", headers=api.admin).json() == []


def test_all_errors_reported_at_once(api, doc):
    doc["offers"][0]["provider"] = "nobody"
    doc["offers"][2]["os_options"] = []
    r = apply(api, doc)
    locs = [e["loc"] for e in r.json()["detail"]]
    assert ["body", "offers", 0, "provider"] in locs and ["body", "offers", 2, "os_options"] in locs


def test_nul_character_anywhere_is_422(api, doc):
    doc["default_images"][1]["environment"][0]["value"] = "tok\u0000en"
    r = apply(api, doc)
    assert r.status_code == 422
    assert ["body", "default_images", 1, "environment", 0, "value"] in [
        e["loc"] for e in r.json()["detail"]]
    assert api.client.get("/admin/providers", headers=api.admin).json() == []
