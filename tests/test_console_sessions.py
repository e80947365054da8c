"""How long a console session lasts (idle and absolute ends, on the manual clock), that an
ended session is refused and its row deleted, and that failed sign-ins are rate-limited per
client address with the guard's own bucket (issue 14). Over HTTP, on both databases."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from gpucloud.console.models import ConsoleSession
from tests.conftest import ADMIN_KEY
from tests.test_console_http import _csrf, sign_in

HTMX = {"HX-Request": "true"}
SHORT = {"console_session_idle_seconds": 600, "console_session_max_seconds": 3600}


def _rows(api) -> int:
    with api.rt.db.read() as s:
        return s.scalar(select(func.count()).select_from(ConsoleSession))


def _signed_in(client, path: str = "/console/") -> bool:
    r = client.get(path, follow_redirects=False)
    assert r.status_code in (200, 303), r.text[:300]
    return r.status_code == 200


def test_the_default_session_ends_after_30_idle_minutes(api):
    assert (api.rt.settings.console_session_idle_seconds,
            api.rt.settings.console_session_max_seconds) == (1800, 12 * 3600)
    _, headers = api.account()
    r = sign_in(api.client, headers["X-API-KEY"])
    assert "Max-Age=43200" in r.headers["set-cookie"]
    api.advance(1799)
    assert _signed_in(api.client)  # activity: the idle period starts again
    api.advance(1799)
    assert _signed_in(api.client)
    api.advance(1800)
    r = api.client.get("/console/account", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login?ended=1"
    assert _rows(api) == 0


@pytest.mark.parametrize("settings_overrides", [SHORT])
def test_polls_do_not_keep_an_idle_session_alive_and_the_ended_row_goes(api):
    client = api.client
    _, headers = api.account()
    sign_in(client, headers["X-API-KEY"])
    cookie = client.cookies.get("gpucloud_console")
    api.advance(400)
    assert _signed_in(client)
    api.advance(400)  # 800 s after sign-in, 400 s after the last page: still on
    assert _signed_in(client)
    api.advance(300)
    assert client.get("/console/instances/rows", headers=HTMX).status_code == 200
    api.advance(300)  # 600 s after the last page, polled meanwhile: ended
    r = client.get("/console/instances/rows", headers=HTMX)
    assert r.status_code == 204 and r.headers["hx-redirect"] == "/console/login?ended=1"
    assert 'gpucloud_console=""' in r.headers["set-cookie"]  # the browser forgets it
    assert _rows(api) == 0  # deleted when its cookie came back, not only refused
    page = client.get("/console/login?ended=1")
    assert page.status_code == 200 and "Your session has ended" in page.text
    client.cookies.set("gpucloud_console", cookie, path="/console")
    assert not _signed_in(client)
    assert "Your session has ended" not in client.get("/console/login").text


@pytest.mark.parametrize("settings_overrides", [SHORT])
def test_a_session_ends_at_its_limit_however_active(api):
    client = api.client
    _, headers = api.account()
    r = sign_in(client, headers["X-API-KEY"])
    assert "Max-Age=3600" in r.headers["set-cookie"]
    for _ in range(7):  # a page every 500 s, up to 3500 s after sign-in
        api.advance(500)
        assert _signed_in(client, "/console/plans")
    api.advance(100)
    assert not _signed_in(client, "/console/plans")
    assert _rows(api) == 0


@pytest.mark.parametrize("settings_overrides", [SHORT])
def test_operator_sessions_end_too_and_sign_ins_sweep_ended_ones(api):
    client = api.client
    _, headers = api.account()
    assert sign_in(client, ADMIN_KEY, admin=True).status_code == 303
    assert _signed_in(client, "/console/admin/")
    client.cookies.clear()
    sign_in(client, headers["X-API-KEY"])
    client.cookies.clear()
    sign_in(client, headers["X-API-KEY"])
    assert _rows(api) == 3
    api.advance(600)
    # Nobody comes back with those cookies; the next sign-in deletes their rows.
    assert sign_in(client, headers["X-API-KEY"]).status_code == 303
    assert _rows(api) == 1
    assert _signed_in(client)
    client.cookies.clear()
    sign_in(client, ADMIN_KEY, admin=True)
    api.advance(601)
    r = client.get("/console/admin/offers", follow_redirects=False)
    assert r.headers["location"] == "/console/admin/login?ended=1"
    assert "Your session has ended" in client.get(r.headers["location"]).text


LIMITED = {"rate_limits": True, "rate_limit_anonymous": 0.5, "rate_limit_anonymous_burst": 3}


@pytest.mark.parametrize("settings_overrides", [LIMITED])
def test_failed_sign_ins_are_rate_limited_per_address(api):
    client = api.client
    _, headers = api.account()
    good = headers["X-API-KEY"]
    for _ in range(5):  # successful sign-ins spend nothing
        assert sign_in(client, good).status_code == 303
        client.cookies.clear()
    sessions_before = _rows(api)
    for attempt in ("gpc_wrong-1", "gpc_wrong-2"):
        assert sign_in(client, attempt).status_code == 400
    assert sign_in(client, "wrong-admin-key", admin=True).status_code == 400
    r = sign_in(client, "gpc_wrong-3")
    assert r.status_code == 429
    assert r.headers["content-type"].startswith("text/html")
    assert "Too many failed sign-ins from your network address" in r.text
    assert int(r.headers["retry-after"]) >= 1 and r.headers["x-ratelimit-remaining"] == "0"
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"
    # While the bucket is empty even the right key is not looked at…
    assert sign_in(client, ADMIN_KEY, admin=True).status_code == 429
    # The other spelling of the path is the same form, and the same bucket.
    token = _csrf(client.get("/console/login").text)
    assert client.post("/console/login/", data={"csrf": token, "key": "gpc_wrong-4"}
                       ).status_code == 429
    r = sign_in(client, good)
    assert r.status_code == 429
    assert _rows(api) == sessions_before
    # …and it is the guard's per-address bucket: the API's bad-key requests share it.
    assert client.get("/gpu/account", headers={"X-API-KEY": "gpc_x"}).status_code == 429
    # The page is a working form: once a token is back, the right key signs in.
    time.sleep(int(r.headers["retry-after"]) + 0.1)
    token = _csrf(r.text)
    r = client.post("/console/login", data={"csrf": token, "key": good},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/"
    assert _signed_in(client)


@pytest.mark.parametrize("settings_overrides", [{**LIMITED, "rate_limits": False}])
def test_without_rate_limits_sign_ins_are_never_429(api):
    for n in range(10):
        assert sign_in(api.client, f"gpc_wrong-{n}").status_code == 400
