"""Accounts, API keys and the admin key, through the real API."""

from __future__ import annotations

from decimal import Decimal


def test_create_account_returns_key_and_balance(api):
    r = api.client.post("/admin/accounts", json={"name": "acme", "balance": "12.5"},
                        headers=api.admin)
    assert r.status_code == 201
    body = api.json(r)
    assert body["name"] == "acme" and body["balance"] == Decimal("12.5")
    assert body["api_key"].startswith("gpc_")
    me = api.client.get("/gpu/account", headers={"X-API-KEY": body["api_key"]})
    assert me.status_code == 200
    assert api.json(me) == {"id": body["id"], "name": "acme", "balance": Decimal("12.5"),
                            "reserved": 0, "spent": 0}


def test_missing_unknown_and_revoked_keys_are_403(api):
    assert api.client.get("/gpu/account").status_code == 403
    r = api.client.get("/gpu/account", headers={"X-API-KEY": "gpc_nope"})
    assert r.status_code == 403 and isinstance(r.json()["detail"], str)
    account_id, headers = api.account()
    r = api.client.post(f"/admin/accounts/{account_id}/api-keys", json={}, headers=api.admin)
    assert r.status_code == 201
    key_id, key = r.json()["id"], r.json()["api_key"]
    assert api.client.get("/gpu/account", headers={"X-API-KEY": key}).status_code == 200
    assert api.client.delete(f"/admin/api-keys/{key_id}", headers=api.admin).status_code == 204
    assert api.client.get("/gpu/account", headers={"X-API-KEY": key}).status_code == 403
    # the account's other key still works
    assert api.client.get("/gpu/account", headers=headers).status_code == 200


def test_expired_key_is_403(api):
    account_id, _ = api.account()
    now = api.now()
    r = api.client.post(f"/admin/accounts/{account_id}/api-keys",
                        json={"expires_at": now}, headers=api.admin)
    assert r.status_code == 201
    r2 = api.client.get("/gpu/account", headers={"X-API-KEY": r.json()["api_key"]})
    assert r2.status_code == 403 and r2.json()["detail"] == "API key expired"


def test_admin_key_required(api):
    assert api.client.post("/admin/accounts", json={"name": "x"}).status_code == 403
    r = api.client.post("/admin/accounts", json={"name": "x"}, headers={"X-ADMIN-KEY": "bad"})
    assert r.status_code == 403


def test_deposit_validation_and_effect(api):
    account_id, headers = api.account(balance=0)
    r = api.client.post(f"/admin/accounts/{account_id}/deposits", json={"amount": "-1"},
                        headers=api.admin)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "amount"]
    r = api.client.post(f"/admin/accounts/{account_id}/deposits", json={"amount": "0.0000001"},
                        headers=api.admin)
    assert r.status_code == 422
    assert api.deposit(account_id, "0.37")["balance"] == Decimal("0.37")
    r = api.client.post("/admin/accounts/nope/deposits", json={"amount": "1"}, headers=api.admin)
    assert r.status_code == 404


def test_unknown_account_404(api):
    r = api.client.get("/admin/accounts/does-not-exist", headers=api.admin)
    assert r.status_code == 404 and r.json() == {"detail": "Account not found"}
