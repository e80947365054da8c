"""Limits before work (issue 14): body size, the key before the body, rate limits, and
connections that never finish their headers or sit idle."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.procs import ServerProcess


@pytest.fixture
def settings_overrides():
    return {"rate_limits": True, "max_body_bytes": 64 * 1024}


def test_a_body_over_the_limit_is_413_unread(api, live_server):
    _, headers = api.account()
    big = b'{"name": "' + b"x" * (100 * 1024) + b'"}'
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        r = c.post("/admin/accounts", content=big, headers={**api.admin,
                                                             "Content-Type": "application/json"})
        assert r.status_code == 413 and "limit 65536 bytes" in r.json()["detail"]
        assert r.headers["x-request-id"]

        def chunks():  # no Content-Length: the limit applies to what streams in
            for _ in range(100):
                yield b" " * 1024

        r = c.post("/gpu/instances/", content=chunks(),
                   headers={**headers, "Content-Type": "application/json"})
        assert r.status_code == 413
        r = c.post("/admin/accounts", json={"name": "small"}, headers=api.admin)
        assert r.status_code == 201
    assert api.client.get("/admin/audit", headers=api.admin).json()["ok"]


def test_the_key_is_checked_before_the_body(api):
    # Not JSON at all: a route reading the body first would answer 422.
    for headers in ({}, {"X-API-KEY": "gpc_wrong"}):
        r = api.client.post("/gpu/instances/", content=b"{not json",
                            headers={**headers, "Content-Type": "application/json"})
        assert r.status_code == 403, r.text
        assert r.json()["detail"] in ("Missing API key", "Invalid API key")
    r = api.client.post("/admin/accounts", content=b"{not json",
                        headers={"X-ADMIN-KEY": "wrong", "Content-Type": "application/json"})
    assert r.status_code == 403 and r.json() == {"detail": "Invalid admin key"}
    r = api.client.post("/admin/accounts", content=b"{not json",
                        headers={**api.admin, "Content-Type": "application/json"})
    assert r.status_code == 422  # with the right key the body is read and judged


def test_bad_keys_run_into_429(api):
    settings = api.rt.settings
    start = time.monotonic()
    statuses = [api.client.get("/gpu/account", headers={"X-API-KEY": f"gpc_bad{i}"}).status_code
                for i in range(2000)]
    elapsed = time.monotonic() - start
    # What the bucket can have let through in that time, however slow the machine was.
    allowed = settings.rate_limit_anonymous_burst + settings.rate_limit_anonymous * elapsed + 1
    assert statuses[0] == 403 and set(statuses) == {403, 429}
    assert statuses.count(403) <= allowed and statuses.count(429) >= 2000 - allowed
    # The bucket refills while the flood runs; on a slow machine the next request may find the
    # token that came back, so the 429's shape is read from the first refused one.
    for _ in range(3):
        r = api.client.get("/gpu/account", headers={"X-API-KEY": "gpc_bad"})
        if r.status_code == 429:
            break
    assert r.status_code == 429 and r.json() == {"detail": "Too many requests; slow down"}
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["x-ratelimit-remaining"] == "0"
    assert int(r.headers["x-ratelimit-limit"]) == api.rt.settings.rate_limit_anonymous_burst
    # A valid key is its own bucket: the flood of bad keys does not lock its owner out.
    _, headers = api.account()
    r = api.client.get("/gpu/account", headers=headers)
    assert r.status_code == 200 and int(r.headers["x-ratelimit-remaining"]) > 0


@pytest.mark.parametrize("settings_overrides", [{
    "rate_limits": True, "rate_limit_key": 0.01, "rate_limit_key_burst": 3,
    "rate_limit_admin": 0.01, "rate_limit_admin_burst": 6}])
def test_each_key_has_its_own_bucket(api):
    _, first = api.account(name="first")   # admin calls: 2 so far
    _, second = api.account(name="second")
    got = [api.client.get("/gpu/instances/", headers=first).status_code for _ in range(4)]
    assert got == [200, 200, 200, 429]
    assert api.client.get("/gpu/instances/", headers=second).status_code == 200
    assert [api.client.get("/admin/providers", headers=api.admin).status_code
            for _ in range(5)] == [200, 200, 200, 200, 429]


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed the connection, or None if it stayed open."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - start < seconds:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - start
    return None


def test_connections_without_headers_or_idle_are_closed(tmp_path):
    server = ServerProcess(tmp_path / "srv", env={
        "GPUCLOUD_HEADER_TIMEOUT_SECONDS": "1", "GPUCLOUD_KEEP_ALIVE_SECONDS": "1",
        "GPUCLOUD_MAX_CONNECTIONS": "12", "GPUCLOUD_RATE_LIMITS": "1",
        "GPUCLOUD_RATE_LIMIT_ANONYMOUS": "0.01", "GPUCLOUD_RATE_LIMIT_ANONYMOUS_BURST": "2",
        "GPUCLOUD_TRUSTED_PROXIES": '["127.0.0.1"]'}).start()
    try:
        silent = socket.create_connection(("127.0.0.1", server.port))
        half = socket.create_connection(("127.0.0.1", server.port))
        half.sendall(b"GET /gpu/plans/ HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert _closed_within(silent, 6) is not None
        assert _closed_within(half, 6) is not None

        idle = socket.create_connection(("127.0.0.1", server.port))
        idle.sendall(b"GET /gpu/api-docs/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        idle.settimeout(5)
        assert idle.recv(12).startswith(b"HTTP/1.1 200")
        assert _closed_within(idle, 6) is not None  # keep-alive, then idle: closed

        # Past the connection cap, new requests get 503 instead of exhausting files.
        hogs = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(14)]
        r = httpx.get(server.url + "/gpu/api-docs/openapi.json", timeout=5)
        assert r.status_code == 503
        for s in hogs:
            s.close()
        time.sleep(1.5)
        assert httpx.get(server.url + "/gpu/api-docs/openapi.json", timeout=5).status_code == 200

        # Behind a trusted proxy each forwarded client has its own bucket.
        def bad(client: str) -> int:
            return httpx.get(server.url + "/gpu/account", timeout=5, headers={
                "X-API-KEY": "gpc_bad", "X-Forwarded-For": client}).status_code

        assert [bad("198.51.100.1") for _ in range(3)] == [403, 403, 429]
        assert bad("198.51.100.2") == 403
    finally:
        server.stop()
        print(server.output()[-3000:])


def _refused_then_closed(port: int, head: bytes, partial: bytes) -> bytes:
    """Send request headers and only part of the body; what the server answered, read until
    it closed the connection (an error if it did not within 10 s)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head + partial)
    sock.settimeout(10)
    answer = b""
    try:
        while chunk := sock.recv(4096):
            answer += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return answer


def test_an_answer_before_the_body_closes_the_connection(api, live_server):
    """Kept alive, the server would read and throw away the rest of a refused body (13 MB a
    request) on its event loop; it closes the connection instead."""
    _, headers = api.account()
    for length, key, status in ((13_000_000, headers["X-API-KEY"], b"413"),
                                (50_000, "gpc_wrong", b"403")):
        head = (f"POST /gpu/instances/ HTTP/1.1\r\nHost: x\r\nX-API-KEY: {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()
        answer = _refused_then_closed(live_server.port, head, b"{" + b" " * 1000)
        status_line, _, rest = answer.partition(b"\r\n")
        assert status in status_line, answer[:300]
        assert b"connection: close" in rest.lower()
    # A body that was read and judged keeps its connection alive as usual.
    with httpx.Client(base_url=live_server.url) as c:
        r = c.post("/gpu/instances/", json={"plan_id": "x"}, headers=headers)
        assert r.status_code == 422 and r.headers.get("connection") != "close"
