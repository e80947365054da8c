"""VM and bare-metal instances (SPEC §4): deploy, details, rename, terminate, type isolation."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.factories import SSH_ED25519


@pytest.fixture
def vm_ctx(api):
    account_id, headers = api.account(balance="100")
    pid = api.provider(name="dc", provision_seconds=8)
    vm = api.offer(pid, workload="vm", price="2")
    bm = api.offer(pid, workload="baremetal", price="3")
    container = api.offer(pid, workload="container")
    return api, account_id, headers, vm, bm, container


@pytest.mark.parametrize("kind,workload,price",
                         [("vms", "vm", "2"), ("baremetal", "baremetal", "3")])
def test_vm_lifecycle(vm_ctx, kind, workload, price):
    api, account_id, headers, vm, bm, _ = vm_ctx
    plan = vm if kind == "vms" else bm
    r = api.client.post(f"/gpu/instances/{kind}", headers=headers, json={
        "plan_id": plan, "name": "train-1", "ssh_key": SSH_ED25519,
        "os_image": "Ubuntu Server 24.04"})
    assert r.status_code == 201, r.text
    iid = r.json()["instance_id"]
    d = api.instance(headers, iid, kind)
    assert d["status"] == "INITIALIZED" and d["availability"] == workload
    assert d["ssh_connection"] is None and d["network"] is None and d["domain"] is None
    assert d["os_image"] == "Ubuntu Server 24.04" and d["ssh_key"] == SSH_ED25519
    assert d["location"] == "us-east-1"
    assert d["billing"]["reserved_amount"] == 3 * Decimal(price)

    api.advance(10)
    d = api.instance(headers, iid, kind)
    assert d["status"] == "ACTIVE" and d["domain"]
    assert d["ssh_connection"] == f"ssh ubuntu@{d['domain']}"
    assert d["network"] == {"domain": d["domain"], "forwarded_ports": [], "uri": None}
    assert d["billing"]["total_spendings"] == Decimal(price)
    assert "instance_status" not in d and "container_info" not in d

    listed = api.json(api.client.get(f"/gpu/instances/{kind}", headers=headers))
    assert [i["id"] for i in listed] == [iid]
    assert set(listed[0]) == {"id", "name", "status", "resources", "domain", "location",
                              "created_at", "updated_at"}

    assert api.client.put(f"/gpu/instances/{kind}/{iid}", headers=headers,
                          json={"name": "renamed"}).status_code == 204
    assert api.instance(headers, iid, kind)["name"] == "renamed"
    r = api.client.put(f"/gpu/instances/{kind}/{iid}", headers=headers, json={"name": "Bad!"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "name"]

    assert api.client.delete(f"/gpu/instances/{kind}/{iid}", headers=headers).status_code == 204
    d = api.instance(headers, iid, kind)
    assert d["status"] == "ENDED" and d["ssh_connection"] is None
    assert api.money(account_id)["balance"] == Decimal(100) - Decimal(price)
    r = api.client.delete(f"/gpu/instances/{kind}/{iid}", headers=headers)
    assert r.status_code == 400


def test_os_image_must_be_offered(vm_ctx):
    api, account_id, headers, vm, _, _ = vm_ctx
    r = api.client.post("/gpu/instances/vms", headers=headers, json={
        "plan_id": vm, "name": "x", "ssh_key": SSH_ED25519, "os_image": "Windows 11"})
    assert r.status_code == 400
    assert r.json() == {"detail": "Provided OS image Windows 11 is not supported for the selected "
                                  "offer. Available OS images: Ubuntu Server 22.04, "
                                  "Ubuntu Server 24.04"}
    # nothing left behind, capacity included
    assert api.client.get("/gpu/instances/vms", headers=headers).json() == []
    assert api.money(account_id)["balance"] == Decimal("100")


def test_ssh_key_required_and_validated(vm_ctx):
    api, _, headers, vm, _, _ = vm_ctx
    r = api.client.post("/gpu/instances/vms", headers=headers,
                        json={"plan_id": vm, "name": "x", "os_image": "Ubuntu Server 22.04"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "ssh_key"]
    assert r.json()["detail"][0]["type"] == "missing"
    r = api.client.post("/gpu/instances/vms", headers=headers, json={
        "plan_id": vm, "name": "x", "os_image": "Ubuntu Server 22.04", "ssh_key": "ssh-rsa AAAA"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "ssh_key"]


def test_plan_of_other_type_is_400(vm_ctx):
    api, _, headers, vm, bm, container = vm_ctx
    for path, plan in [("vms", bm), ("vms", container), ("baremetal", vm)]:
        r = api.client.post(f"/gpu/instances/{path}", headers=headers, json={
            "plan_id": plan, "name": "x", "ssh_key": SSH_ED25519,
            "os_image": "Ubuntu Server 22.04"})
        assert r.status_code == 400 and r.json() == {"detail": "Plan no longer available"}


def test_each_instance_only_under_its_own_path(vm_ctx):
    api, _, headers, vm, bm, container = vm_ctx
    vm_id = api.deploy_vm(headers, vm)
    bm_id = api.deploy_vm(headers, bm, kind="baremetal")
    c_id = api.deploy(headers, container)
    api.advance(10)
    not_found = {"detail": "Instance not found"}
    wrong = [f"/gpu/instances/{vm_id}", f"/gpu/instances/baremetal/{vm_id}",
             f"/gpu/instances/vms/{bm_id}", f"/gpu/instances/{bm_id}",
             f"/gpu/instances/vms/{c_id}", f"/gpu/instances/baremetal/{c_id}"]
    for path in wrong:
        for method in ("GET", "DELETE"):
            r = api.client.request(method, path, headers=headers)
            assert (r.status_code, r.json()) == (404, not_found), (method, path)
    for path in [f"/gpu/instances/{vm_id}/logs", f"/gpu/instances/{bm_id}/events"]:
        assert api.client.get(path, headers=headers).status_code == 404
    assert api.client.put(f"/gpu/instances/baremetal/{vm_id}", headers=headers,
                          json={"name": "x"}).status_code == 404
    # the lists are separate too
    vms = api.client.get("/gpu/instances/vms", headers=headers).json()
    assert [i["id"] for i in vms] == [vm_id]
    assert [i["id"] for i in api.client.get("/gpu/instances/baremetal",
                                            headers=headers).json()] == [bm_id]
    assert [i["id"] for i in api.client.get("/gpu/instances/", headers=headers).json()] == [c_id]
    # and all three still exist, untouched
    for kind, iid in [("vms", vm_id), ("baremetal", bm_id), ("", c_id)]:
        body = api.instance(headers, iid, kind)
        assert body.get("status", body.get("instance_status")) == "ACTIVE"


def test_vm_unknown_id_is_404(vm_ctx):
    api, _, headers, *_ = vm_ctx
    r = api.client.get("/gpu/instances/vms/00000000-0000-0000-0000-000000000000", headers=headers)
    assert r.status_code == 404 and r.json() == {"detail": "Instance not found"}
