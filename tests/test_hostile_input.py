"""Hostile input answers 4xx in the documented shape, never a 500, and never echoes or logs a
secret (issue 14, the findings that need no middleware)."""

from __future__ import annotations

import logging
import os
import stat
import threading

import httpx
import pytest
from sqlalchemy import text

from gpucloud import bodies
from gpucloud.clock import ManualClock
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
        ("POST", "/gpu/instances/baremetal", headers),
        ("PUT", f"/gpu/instances/baremetal/{vid}", headers), ("POST", "/admin/accounts", admin),
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


def test_a_key_expiry_is_a_date_string_not_a_number(world):
    api, account_id, *_ = world
    for bad in (0, 1893456000, True):
        r = api.client.post(f"/admin/accounts/{account_id}/api-keys", json={"expires_at": bad},
                            headers=api.admin)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "expires_at"], r.text
    r = api.client.post(f"/admin/accounts/{account_id}/api-keys",
                        json={"expires_at": "2031-01-01T00:00:00Z"}, headers=api.admin)
    assert r.status_code == 201 and r.json()["expires_at"].startswith("2031-01-01T00:00:00")


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


# --- bodies: content type, shape, parsing off the event loop (gpucloud/bodies.py) ----------

def _operations_with_a_body(api) -> set[tuple[str, str]]:
    doc = api.client.get("/gpu/api-docs/openapi.json").json()
    return {(method.upper(), path) for path, ops in doc["paths"].items()
            for method, op in ops.items() if "requestBody" in op}


def test_wrong_content_types_are_415_on_every_body_operation(world):
    api = world[0]
    bodies = _bodies(world)
    # Every operation of the document that takes a body is in the list tried here.
    templates = {(m, p) for m, p in _operations_with_a_body(api)}
    assert len(templates) == len(bodies)
    before = api.client.get("/admin/audit", headers=api.admin).json()
    for method, path, headers in bodies:
        for content_type in ("text/plain", "application/x-www-form-urlencoded",
                             "multipart/form-data; boundary=x", "application/xml", None):
            sent = {**headers, **({"Content-Type": content_type} if content_type else {})}
            r = api.client.request(method, path, content=b'{"name": "x", "amount": 1}',
                                   headers=sent)
            assert r.status_code == 415, (method, path, content_type, r.text)
            assert r.json() == {"detail": "Send the request body as application/json"}
        # JSON with parameters, or a +json type, is read as JSON (whatever it then says).
        for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
            r = api.client.request(method, path, content=b"[]",
                                   headers={**headers, "Content-Type": content_type})
            assert r.status_code == 422, (method, path, content_type, r.text)
    after = api.client.get("/admin/audit", headers=api.admin).json()
    assert after["ok"] and after["deposits"] == before["deposits"]


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_deep_and_wide_json_is_422_at_the_body(world):
    api, _, headers, _, container, *_ = world
    settings = api.rt.settings
    cases = [
        # one level too deep, and far too deep for any parser's recursion
        (f'{{"name": "x", "plan_id": {_nested(settings.max_json_depth)}}}', "json_too_deep"),
        (_nested(5_000), "json_too_deep"),
        # more values than allowed, in one object, spread over arrays, or far more (a
        # count before parsing refuses them all)
        ("{" + ",".join(f'"k{i}": {i}' for i in range(settings.max_json_values)) + "}",
         "json_too_many_values"),
        ("[" + ",".join("[1, 2]" for _ in range(settings.max_json_values // 3 + 1)) + "]",
         "json_too_many_values"),
        (_nested(100_000), "json_too_many_values"),
        # not JSON at all: bytes that are not UTF-8, an integer of 5,000 digits
        ('{"name": "\xff"}'.encode("latin-1"), "json_invalid"),
        ('{"name": ' + "9" * 5000 + "}", "json_invalid"),
    ]
    for raw, kind in cases:
        for method, path, hdrs in (("POST", "/gpu/instances/", headers),
                                   ("POST", "/admin/accounts", api.admin)):
            r = _send(api, method, path, raw, hdrs)
            assert r.status_code == 422, (kind, r.text[:300])
            (error,) = r.json()["detail"]
            assert error["type"] == kind and error["loc"][0] == "body", error
            assert len(r.content) < 1000
    # At the limit, the body is judged by its fields as usual.
    r = _send(api, "POST", "/admin/accounts",
              f'{{"name": {_nested(settings.max_json_depth - 1)}}}', api.admin)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "name"]
    assert len(api.client.get("/gpu/instances/", headers=headers).json()) == 1


@pytest.mark.parametrize("settings_overrides", [{"max_json_depth": 4,
                                                 "max_json_values": 200}])
def test_json_bounds_are_settings(world):
    api, _, headers, _, container, *_ = world
    r = _send(api, "POST", "/admin/accounts", '{"name": [[[[1]]]]}', api.admin)
    assert r.json()["detail"][0]["type"] == "json_too_deep"
    assert r.json()["detail"][0]["ctx"] == {"max_depth": 4}
    r = _send(api, "POST", "/admin/accounts", '{"name": [[[1]]]}', api.admin)
    assert r.json()["detail"][0]["loc"] == ["body", "name"]
    r = api.client.post("/admin/accounts", headers=api.admin,
                        json={"name": "x", "pad": list(range(200))})
    assert r.json()["detail"][0]["type"] == "json_too_many_values"
    r = api.client.post("/admin/accounts", headers=api.admin, json={"name": "bounded-ok"})
    assert r.status_code == 201


class _Hold:
    """Holds a server-side step (what `wrap` wraps) until released; says when it is held."""

    def __init__(self):
        self.held, self.release = threading.Event(), threading.Event()

    def wrap(self, real, when=lambda *args: True):
        def held(*args):
            if when(*args):
                self.held.set()
                self.release.wait(30)
            return real(*args)
        return held


def _answered_while_held(live_server, hold: _Hold, send, headers: dict) -> httpx.Response:
    """`send()` from another thread; while its request is held on the server, another
    client's GET /gpu/account is answered; then the held request's response."""
    hold.held.clear()
    hold.release.clear()
    answer: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: answer.append(send()))
    sender.start()
    assert hold.held.wait(30)
    with httpx.Client(base_url=live_server.url, timeout=10) as other:
        r = other.get("/gpu/account", headers=headers)  # answered meanwhile
    assert r.status_code == 200 and not answer
    hold.release.set()
    sender.join(30)
    return answer[0]


def test_a_large_body_is_judged_off_the_event_loop(world, live_server, monkeypatch):
    """While a large body is being parsed and validated, the server answers others: the
    judging is held mid-way here, and another client still gets its answer."""
    api, _, headers, _, container, *_ = world
    _, other = api.account(name="other")
    hold = _Hold()
    monkeypatch.setattr(bodies, "judge", hold.wrap(bodies.judge,
                                                   lambda route, raw, *limits: len(raw) > 100_000))
    big_valid = {"plan_id": container, "name": "big",
                 "container_settings": {"image": "docker.io/library/ubuntu:22.04",
                                        "expose": [{"port": 22}]},
                 "unused": "x" * 800_000}
    big_invalid = {f"k{i}": i for i in range(60_000)}  # over max_json_values
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        for body, expected in ((big_valid, 201), (big_invalid, 422)):
            r = _answered_while_held(live_server, hold, lambda b=body: c.post(
                "/gpu/instances/", json=b, headers=headers), other)
            assert r.status_code == expected, r.text[:300]
    assert len(api.client.get("/gpu/instances/", headers=headers).json()) == 2


def test_moving_the_clock_reads_and_drains_off_the_event_loop(world, live_server, monkeypatch):
    """POST /admin/clock reads the clock's row and drains what is due: held mid-read here,
    the server still answers a customer, then the move completes."""
    _, _, headers, *_ = world
    hold = _Hold()
    monkeypatch.setattr(ManualClock, "refresh", hold.wrap(ManualClock.refresh))
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        r = _answered_while_held(live_server, hold, lambda: c.post(
            "/admin/clock", json={"advance_seconds": 60}, headers={"X-ADMIN-KEY": ADMIN_KEY}),
            headers)
    assert r.status_code == 200, r.text
