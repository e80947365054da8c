"""Idempotency-Key: a retried deploy or deposit returns the first answer and never spends
twice (issue 14)."""

from __future__ import annotations

import threading
from decimal import Decimal

import httpx

from tests.factories import SSH_ED25519

REPLAYED = "Idempotent-Replayed"


def _setup(api, balance="100"):
    account_id, headers = api.account(balance=balance)
    pid = api.provider(name="dc", provision_seconds=1)
    return account_id, headers, api.offer(pid, price="2", capacity=50), \
        api.offer(pid, workload="vm", price="2", capacity=50)


def test_a_retried_deploy_returns_the_first_answer(api):
    account_id, headers, plan, vm = _setup(api)
    keyed = {**headers, "Idempotency-Key": "deploy-1"}
    first = api.client.post("/gpu/instances/", json=api.container_body(plan), headers=keyed)
    again = api.client.post("/gpu/instances", json=api.container_body(plan), headers=keyed)
    assert first.status_code == again.status_code == 201
    assert first.content == again.content
    assert REPLAYED not in first.headers and again.headers[REPLAYED] == "true"
    assert len(api.client.get("/gpu/instances/", headers=headers).json()) == 1
    assert api.money(account_id)["reserved"] == Decimal("6")  # 3 hours, once

    body = {"plan_id": vm, "name": "v", "ssh_key": SSH_ED25519,
            "os_image": "Ubuntu Server 22.04"}
    vm_key = {**headers, "Idempotency-Key": "vm-1"}
    a = api.client.post("/gpu/instances/vms", json=body, headers=vm_key)
    b = api.client.post("/gpu/instances/vms/", json=body, headers=vm_key)
    assert (a.status_code, a.content) == (b.status_code, b.content) == (201, a.content)
    assert len(api.client.get("/gpu/instances/vms", headers=headers).json()) == 1
    assert api.money(account_id)["reserved"] == Decimal("12")


def test_same_key_other_request_is_422_and_other_account_is_independent(api):
    _, headers, plan, _ = _setup(api)
    keyed = {**headers, "Idempotency-Key": "k"}
    assert api.client.post("/gpu/instances/", json=api.container_body(plan),
                           headers=keyed).status_code == 201
    r = api.client.post("/gpu/instances/", json=api.container_body(plan, name="other"),
                        headers=keyed)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    _, other = api.account(name="other")
    r = api.client.post("/gpu/instances/", json=api.container_body(plan),
                        headers={**other, "Idempotency-Key": "k"})
    assert r.status_code == 201 and REPLAYED not in r.headers
    assert len(api.client.get("/gpu/instances/", headers=other).json()) == 1


def test_a_key_lasts_24_hours(api):
    _, headers, plan, _ = _setup(api, balance="1000")
    keyed = {**headers, "Idempotency-Key": "daily"}
    first = api.client.post("/gpu/instances/", json=api.container_body(plan), headers=keyed)
    api.advance(23 * 3600)
    assert api.client.post("/gpu/instances/", json=api.container_body(plan),
                           headers=keyed).content == first.content
    api.advance(3601)
    later = api.client.post("/gpu/instances/", json=api.container_body(plan), headers=keyed)
    assert later.status_code == 201 and later.content != first.content
    assert len(api.client.get("/gpu/instances/", headers=headers).json()) == 2


def test_a_failed_request_is_not_remembered(api):
    account_id, headers, plan, _ = _setup(api, balance="1")
    keyed = {**headers, "Idempotency-Key": "after-topup"}
    r = api.client.post("/gpu/instances/", json=api.container_body(plan), headers=keyed)
    assert r.status_code == 400 and r.json()["detail"] == "Insufficient balance to deploy instance"
    api.deposit(account_id, "10")
    r = api.client.post("/gpu/instances/", json=api.container_body(plan), headers=keyed)
    assert r.status_code == 201 and REPLAYED not in r.headers


def test_admin_deposits_and_account_creation_are_idempotent(api):
    account_id, _ = api.account(balance="0")
    keyed = {**api.admin, "Idempotency-Key": "dep-1"}
    path = f"/admin/accounts/{account_id}/deposits"
    a = api.client.post(path, json={"amount": "5"}, headers=keyed)
    b = api.client.post(path, json={"amount": "5"}, headers=keyed)
    assert a.status_code == b.status_code == 200 and a.content == b.content
    assert b.headers[REPLAYED] == "true"
    assert api.money(account_id)["balance"] == Decimal("5")
    other_id, _ = api.account(name="other", balance="0")
    r = api.client.post(f"/admin/accounts/{other_id}/deposits", json={"amount": "5"},
                        headers=keyed)
    assert r.status_code == 422  # one key, another account: another request

    created = [api.client.post("/admin/accounts", json={"name": "x", "balance": "3"},
                               headers={**api.admin, "Idempotency-Key": "acct"})
               for _ in range(2)]
    assert created[0].content == created[1].content and created[0].status_code == 201
    audit = api.client.get("/admin/audit", headers=api.admin).json()
    assert audit["ok"] and audit["deposits"] == 8


def test_concurrent_twins_make_one_instance(api, live_server):
    account_id, headers, plan, _ = _setup(api)
    keyed = {**headers, "Idempotency-Key": "burst"}
    body = api.container_body(plan)
    results: list[httpx.Response] = []
    start = threading.Barrier(8)

    def send():
        with httpx.Client(base_url=live_server.url, timeout=30) as c:
            start.wait()
            results.append(c.post("/gpu/instances/", json=body, headers=keyed))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [201] * 8
    assert len({r.content for r in results}) == 1
    assert sum(REPLAYED not in r.headers for r in results) == 1
    assert len(api.client.get("/gpu/instances/", headers=headers).json()) == 1
    assert api.money(account_id)["reserved"] == Decimal("6")


def test_bad_keys_are_422(api):
    _, headers, plan, _ = _setup(api)
    for key in ("", "x" * 256, "tab\there", "é".encode()):
        r = api.client.post("/gpu/instances/", json=api.container_body(plan),
                            headers={**headers, "Idempotency-Key": key})
        assert r.status_code == 422, (key, r.text)
        assert r.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert api.client.get("/gpu/instances/", headers=headers).json() == []
