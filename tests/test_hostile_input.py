"""Hostile input answers 4xx in the documented shape, never a 500, and never echoes or logs a
secret (issue 14, the findings that need no middleware)."""

from __future__ import annotations

import logging
import os
import stat

import pytest
from sqlalchemy import text

from gpucloud.db import Database
from gpucloud.settings import Settings
from tests.conftest import ADMIN_KEY
from tests.factories import SSH_ED25519

SECRET = "s3cr3t-registry-password"
TOKEN = "env-token-value-1234"
HUGE = "18446744073709551616"  # 2**64: no 64-bit integer holds it
SURROGATE = '"\\ud800"'  # a lone surrogate, as JSON text


@pytest.fixture
def world(api):
    account_id, headers = api.account(balance="100")
    pid = api.provider(name="dc", provision_seconds=1)
    container = api.offer(pid)
    vm = api.offer(pid, workload="vm")
    cid = api.deploy(headers, container)
    vid = api.deploy_vm(headers, vm)
    api.advance(5)
    return api, account_id, headers, pid, container, vm, cid, vid


def _send(api, method, path, raw, headers):
    return api.client.request(method, path, content=raw,
                              headers={**headers, "Content-Type": "application/json"})


def _bodies(world):
    """(method, path, headers) of every operation that takes a body."""
    api, account_id, headers, pid, container, vm, cid, vid = world
    admin = api.admin
    return [
        ("POST", "/gpu/instances/", headers), ("PUT", f"/gpu/instances/{cid}", headers),
        ("POST", "/gpu/instances/vms", headers), ("PUT", f"/gpu/instances/vms/{vid}", headers),
        ("POST", "/gpu/instances/baremetal", headers), ("POST", "/admin/accounts", admin),
        ("POST", f"/admin/accounts/{account_id}/deposits", admin),
        ("POST", f"/admin/accounts/{account_id}/api-keys", admin),
        ("POST", "/admin/providers", admin), ("PATCH", f"/admin/providers/{pid}", admin),
        ("POST", "/admin/offers", admin), ("PATCH", f"/admin/offers/{vm}", admin),
        ("POST", "/admin/catalog", admin), ("POST", "/admin/clock", admin),
    ]


def test_huge_integers_and_lone_surrogates_are_422_everywhere(world):
    api = world[0]
    before = api.client.get("/admin/audit", headers=api.admin).json()
    for method, path, headers in _bodies(world):
        for raw in (f'{{"name": {HUGE}, "amount": {HUGE}, "capacity": {HUGE}}}',
                    f'{{"name": {SURROGATE}, "plan_id": {SURROGATE}, "enabled": {SURROGATE}}}',
                    f'{{"{SURROGATE[1:-1]}": 1}}', f"[{HUGE}]", SURROGATE):
            r = _send(api, method, path, raw, headers)
            assert r.status_code == 422, (method, path, raw, r.text)
            detail = r.json()["detail"]
            assert detail and all({"type", "loc", "msg"} <= set(e) for e in detail)
    after = api.client.get("/admin/audit", headers=api.admin).json()
    assert after["ok"] and after["deposits"] == before["deposits"]


def test_secrets_are_never_echoed_nor_logged(world, caplog):
    api, _, headers, _, container, *_ = world
    caplog.set_level(logging.DEBUG)
    settings = {"image": "docker.io/library/ubuntu:22.04", "expose": [{"port": 22}],
                "environment": [{"name": "TOKEN", "value": TOKEN}],
                "credentials": {"host": "docker.io", "username": "me", "password": SECRET}}
    hostile = [
        # the finding: a rejected body with credentials and an integer outside 64 bits
        {"plan_id": container, "name": "Bad Name!", "container_settings": settings,
         "extra": 2**64},
        # credentials themselves invalid (bad host), env name invalid next to its value
        {"plan_id": container, "name": "ok",
         "container_settings": {**settings, "credentials": {"host": "evil.io", "username": "me",
                                                             "password": SECRET},
                                "environment": [{"name": "bad name", "value": TOKEN}]}},
        # the whole body as `input` of a missing field
        {"name": "ok", "container_settings": settings},
    ]
    for i, body in enumerate(hostile):
        r = api.client.post("/gpu/instances/", json=body, headers=headers)
        assert r.status_code == 422, r.text
        assert SECRET not in r.text and TOKEN not in r.text
        assert i == 0 or "[redacted]" in r.text  # the others echo what holds them
    r = api.client.put(f"/gpu/instances/{world[6]}", headers=headers,
                       json={"name": "NO", "container_settings": settings})
    assert r.status_code == 422 and SECRET not in r.text and TOKEN not in r.text
    logged = "\n".join(rec.getMessage() + str(rec.exc_info or "") for rec in caplog.records)
    assert SECRET not in logged and TOKEN not in logged


def test_rejected_input_is_truncated_and_errors_are_bounded(world):
    api, _, headers, *_ = world
    r = api.client.post("/admin/accounts", headers=api.admin, json={"name": "x" * 100_000})
    assert r.status_code == 422
    assert len(r.json()["detail"][0]["input"]) <= 201 and len(r.content) < 2_000
    many = {f"k{i}": i for i in range(5_000)}
    r = api.client.post("/admin/offers", headers=api.admin, json=many)
    assert r.status_code == 422 and len(r.json()["detail"]) == 100


def test_nul_anywhere_is_a_4xx_on_both_databases(world):
    api, account_id, headers, pid, container, vm, cid, vid = world
    for path in ("/gpu/instances/a%00b", "/gpu/instances/vms/a%00b",
                 "/gpu/instances/baremetal/a%00b", "/gpu/instances/a%00b/logs",
                 "/gpu/instances/a%00b/events"):
        r = api.client.get(path, headers=headers)
        assert (r.status_code, r.json()) == (404, {"detail": "Instance not found"}), path
    assert api.client.delete("/gpu/instances/a%00b", headers=headers).status_code == 404
    assert api.client.put("/gpu/instances/vms/a%00b", headers=headers,
                          json={"name": "x"}).status_code == 404
    for path in ("/admin/accounts/a%00b", "/admin/offers/a%00b"):
        assert api.client.get(path, headers=api.admin).status_code == 404, path
    assert api.client.delete("/admin/api-keys/a%00b", headers=api.admin).status_code == 404
    assert api.client.post("/admin/accounts/a%00b/deposits", headers=api.admin,
                           json={"amount": 1}).status_code == 404
    assert api.client.get("/admin/offers?provider_id=a%00b", headers=api.admin).json() == []
    r = api.client.get("/gpu/plans/?gpu_model=a%00b", headers=headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "gpu_model"]

    r = api.client.post("/admin/accounts", headers=api.admin, json={"name": "a\x00b"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "name"]
    settings = {"image": "docker.io/library/ubuntu:22.04", "expose": [{"port": 22}]}
    for extra, loc in (
            ({"environment": [{"name": "A", "value": "x\x00y"}]},
             ["body", "container_settings", "environment", 0, "value"]),
            ({"startup_command": "sleep\x00 1"}, ["body", "container_settings",
                                                   "startup_command"]),
            ({"credentials": {"host": "docker.io", "username": "u", "password": "p\x00"}},
             ["body", "container_settings", "credentials", "password"])):
        body = {"plan_id": container, "name": "nul", "container_settings": {**settings, **extra}}
        r = api.client.post("/gpu/instances/", json=body, headers=headers)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == loc
        assert "NUL" in r.json()["detail"][0]["msg"]
    r = api.client.post("/gpu/instances/vms", headers=headers, json={
        "plan_id": vm, "name": "n", "ssh_key": SSH_ED25519, "os_image": "Ubuntu\x00"})
    assert r.status_code == 422
    listed = api.client.get("/gpu/instances/", headers=headers).json()
    assert [i["id"] for i in listed] == [cid]  # nothing half-created


def test_cursor_with_a_huge_id_is_422(world):
    api, _, headers, *_ = world
    for cursor in ("bGU6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5", "bGU6LTE", "bGU6MA", "%00", "x" * 64):
        r = api.client.get(f"/gpu/account/transactions?cursor={cursor}", headers=headers)
        assert r.status_code == 422, (cursor, r.text)
        assert r.json()["detail"][0]["loc"] == ["query", "cursor"]


def test_admin_bodies_take_strict_booleans_and_integers(world):
    api, _, _, pid, _, vm, *_ = world
    for path, body in ((f"/admin/providers/{pid}", {"enabled": 0}),
                       (f"/admin/providers/{pid}", {"enabled": "true"}),
                       (f"/admin/offers/{vm}", {"capacity": True}),
                       (f"/admin/offers/{vm}", {"capacity": "8"}),
                       (f"/admin/offers/{vm}", {"capacity": 8.5}),
                       (f"/admin/offers/{vm}", {"enabled": 1})):
        r = api.client.patch(path, json=body, headers=api.admin)
        assert r.status_code == 422, (path, body, r.text)
    r = api.client.post("/admin/clock", json={"advance_seconds": True}, headers=api.admin)
    assert r.status_code == 422
    offer = api.client.get(f"/admin/offers/{vm}", headers=api.admin).json()
    assert offer["enabled"] is True and offer["capacity"] == 10  # untouched
    assert api.client.patch(f"/admin/offers/{vm}", json={"capacity": 8, "enabled": False},
                            headers=api.admin).status_code == 200


def test_sqlite_files_are_private(tmp_path):
    data = tmp_path / "fresh" / "data"
    settings = Settings(data_dir=data, admin_key=ADMIN_KEY, clock="manual", demo=False,
                        workers=False, local_provider=False)
    db = Database(settings)
    with db.write() as s:  # a write makes SQLite create its -wal and -shm files
        s.execute(text("CREATE TABLE t (x INTEGER)"))
        s.execute(text("INSERT INTO t VALUES (1)"))
    files = [data / "gpucloud.db", data / "gpucloud.db-wal", data / "gpucloud.db-shm"]
    assert all(f.exists() for f in files)
    for f in files:
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    db.dispose()
    (data / "gpucloud.db").chmod(0o644)  # an older release's file is narrowed at start
    Database(settings).dispose()
    assert stat.S_IMODE(os.stat(data / "gpucloud.db").st_mode) == 0o600
