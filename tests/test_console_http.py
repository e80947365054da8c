"""The web console over plain HTTP (no browser): sessions, CSRF, headers, and that no page
ever carries the API key. The browser tests (test_console_browser.py) drive the pages."""

from __future__ import annotations

import re

from gpucloud.accounts.service import list_api_keys
from tests.conftest import ADMIN_KEY
from tests.factories import SSH_ED25519

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _csrf(html: str) -> str:
    found = CSRF.search(html)
    assert found, html[:500]
    return found.group(1)


def sign_in(client, key: str, admin: bool = False):
    path = "/console/admin/login" if admin else "/console/login"
    page = client.get(path)
    assert page.status_code == 200
    return client.post(path, data={"csrf": _csrf(page.text), "key": key},
                       follow_redirects=False)


def test_sign_in_sets_an_opaque_strict_cookie_and_no_page_holds_the_key(demo):
    client = demo.client
    account_id, headers = demo.account(balance="50", name="alice")
    key = headers["X-API-KEY"]
    offer = demo.offer(demo.provider())
    iid = demo.deploy(headers, offer, ssh_key=SSH_ED25519)
    demo.advance(10)

    r = sign_in(client, key)
    assert r.status_code == 303 and r.headers["location"] == "/console/"
    cookie = r.headers["set-cookie"]
    assert "gpucloud_console=" in cookie and key not in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Path=/console" in cookie
    pages = ["/console/", "/console/plans", "/console/plans?kind=vms", "/console/instances",
             f"/console/instances/{iid}", f"/console/instances/{iid}/live",
             f"/console/instances/{iid}/feed/logs", f"/console/instances/{iid}/feed/events",
             "/console/account", f"/console/deploy?plan={offer}", "/console/instances/rows"]
    for path in pages:
        page = client.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        assert key not in page.text and key[4:] not in page.text, path
        assert page.headers["cache-control"] == "no-store"
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "<script>" not in page.text  # only <script src=…> files
    home = client.get("/console/").text
    assert "alice" in home and re.search(r">ACTIVE</span> 1\b", home)
    assert re.search(r">FAILED</span> 0\b", home)


def test_a_bad_key_is_refused_with_a_clear_message(api):
    r = sign_in(api.client, "gpc_not-a-real-key")
    assert r.status_code == 400
    assert "Invalid API key" in r.text
    assert "gpucloud_console=" not in r.headers.get("set-cookie", "")
    assert api.client.get("/console/account", follow_redirects=False).headers["location"] \
        == "/console/login"


def test_forms_without_the_csrf_token_are_refused(demo):
    client = demo.client
    _, headers = demo.account(balance="50")
    offer = demo.offer(demo.provider())
    # sign-in itself: no token, or a token that is not the cookie's
    assert client.post("/console/login", data={"key": headers["X-API-KEY"]}).status_code == 403
    client.get("/console/login")
    assert client.post("/console/login", data={"key": headers["X-API-KEY"],
                                               "csrf": "forged"}).status_code == 403
    assert sign_in(client, headers["X-API-KEY"]).status_code == 303
    body = {"plan": offer, "name": "box", "image": "docker.io/library/ubuntu:22.04",
            "ports": "22/tcp"}
    for path in ["/console/deploy/review", "/console/deploy", "/console/logout"]:
        r = client.post(path, data=body)
        assert r.status_code == 403 and "CSRF" in r.text, path
        r = client.post(path, data={**body, "csrf": "not-the-token"})
        assert r.status_code == 403, path
    assert client.get("/gpu/instances/", headers=headers).json() == []  # nothing deployed
    token = _csrf(client.get("/console/").text)
    assert client.post("/console/deploy", data={**body, "csrf": token},
                       follow_redirects=False).status_code == 303
    assert len(client.get("/gpu/instances/", headers=headers).json()) == 1


def test_sign_out_ends_the_session_on_the_server(demo):
    client = demo.client
    _, headers = demo.account()
    sign_in(client, headers["X-API-KEY"])
    cookie = client.cookies.get("gpucloud_console")
    token = _csrf(client.get("/console/").text)
    r = client.post("/console/logout", data={"csrf": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    # the old cookie, replayed, no longer opens anything
    client.cookies.set("gpucloud_console", cookie, path="/console")
    assert client.get("/console/", follow_redirects=False).status_code == 303


def test_a_revoked_key_ends_its_console_session(demo):
    client = demo.client
    account_id, headers = demo.account()
    sign_in(client, headers["X-API-KEY"])
    assert client.get("/console/", follow_redirects=False).status_code == 200
    with demo.rt.db.read() as s:  # the key's id: the admin API returns it only on create
        (first,) = [k.id for k in list_api_keys(s, account_id)]
    assert client.delete(f"/admin/api-keys/{first}", headers=demo.admin).status_code == 204
    assert client.get("/console/", follow_redirects=False).headers["location"] \
        == "/console/login?ended=1"
    assert "its key was revoked" in client.get("/console/login?ended=1").text


def test_operator_pages_need_the_admin_key(demo):
    client = demo.client
    _, headers = demo.account()
    sign_in(client, headers["X-API-KEY"])
    assert client.get("/console/admin/", follow_redirects=False).headers["location"] \
        == "/console/admin/login"
    assert client.get("/console/", follow_redirects=False).status_code == 200  # kept
    assert sign_in(client, "wrong", admin=True).status_code == 400
    assert sign_in(client, ADMIN_KEY, admin=True).status_code == 303
    assert re.search(r"<th scope=\"row\">Containers</th><td>0</td><td>0</td>",
                     client.get("/console/admin/").text)
    for path in ["/console/admin/", "/console/admin/providers", "/console/admin/offers",
                 "/console/admin/accounts", "/console/admin/audit"]:
        page = client.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        assert ADMIN_KEY not in page.text


def test_static_files_are_the_vendored_ones(api):
    r = api.client.get("/console/static/vendor/htmx-2.0.11/htmx.min.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert api.client.get("/console/static/../app.py").status_code == 404
    assert api.client.get("/console/static/nope.js").status_code == 404


def test_the_ledger_pages_back_through_older_entries(api):
    client = api.client
    account_id, headers = api.account(balance="1", name="pager")
    for n in range(24):
        api.deposit(account_id, n + 1)
    sign_in(client, headers["X-API-KEY"])
    first = client.get("/console/account").text
    assert first.count('class="kind-deposit"') == 20
    assert ">24.00 USDC<" in first  # newest first
    older = re.search(r'href="(/console/account\?cursor=[^"]+)"', first).group(1)
    rest = client.get(older).text
    assert rest.count('class="kind-deposit"') == 5 and ">1.00 USDC<" in rest
    assert "Older entries" not in rest and 'href="/console/account"' in rest
    # a cursor that is not one of ours is the first page, not an error
    assert client.get("/console/account?cursor=%%%").status_code == 200


def test_a_container_updated_through_the_console_is_redeployed(demo):
    client = demo.client
    _, headers = demo.account(balance="100")
    iid = demo.deploy(headers, demo.offer(demo.provider()), ssh_key=SSH_ED25519)
    demo.advance(10)
    sign_in(client, headers["X-API-KEY"])
    token = _csrf(client.get(f"/console/instances/{iid}").text)
    form = {"csrf": token, "name": "box-2", "image": "docker.io/library/ubuntu:24.04",
            "env": "MODE=fast", "startup_command": "", "ssh_key": SSH_ED25519}
    bad = client.post(f"/console/instances/{iid}/update", data={**form, "env": "lower=x"})
    assert bad.status_code == 400 and "String should match pattern" in bad.text
    r = client.post(f"/console/instances/{iid}/update", data=form, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("?done=update")
    again = client.post(f"/console/instances/{iid}/update", data=form)
    assert "An update of this instance is still being applied" in again.text
    demo.advance(30)
    details = demo.instance(headers, iid)
    assert details["name"] == "box-2"
    assert details["container_info"]["image"] == "docker.io/library/ubuntu:24.04"
    assert {"name": "MODE", "value": "fast"} in details["container_info"]["environment"]


def test_operator_changes_an_offer_and_revokes_a_key(demo):
    client = demo.client
    account_id, headers = demo.account(balance="10")
    offer = demo.offer(demo.provider(name="solo"), price="2")
    sign_in(client, ADMIN_KEY, admin=True)
    token = _csrf(client.get("/console/admin/offers").text)
    bad = client.post(f"/console/admin/offers/{offer}",
                      data={"csrf": token, "enabled": "true", "capacity": "-1"})
    assert bad.status_code == 400 and "greater than or equal to 0" in bad.text
    r = client.post(f"/console/admin/offers/{offer}",
                    data={"csrf": token, "capacity": "3", "price_hour": "2.5"},
                    follow_redirects=False)  # the checkbox unticked: disabled
    assert r.status_code == 303
    out = client.get(f"/admin/offers/{offer}", headers=demo.admin).json()
    assert (out["enabled"], out["capacity"], out["price_hour"]) == (False, 3, 2.5)
    assert offer not in client.get("/gpu/plans/", headers=headers).text

    page = client.get(f"/console/admin/accounts/{account_id}").text
    key_id = re.search(r'action="/console/admin/keys/([^/]+)/revoke"', page).group(1)
    assert client.post(f"/console/admin/keys/{key_id}/revoke", data={"csrf": token},
                       follow_redirects=False).status_code == 303
    assert client.get("/gpu/account", headers=headers).status_code == 403
    assert "revoked" in client.get(f"/console/admin/accounts/{account_id}").text


def test_another_accounts_instance_is_not_found_in_the_console(demo):
    client = demo.client
    _, a = demo.account(name="a")
    _, b = demo.account(name="b")
    iid = demo.deploy(a, demo.offer(demo.provider()))
    demo.advance(10)
    sign_in(client, b["X-API-KEY"])
    token = _csrf(client.get("/console/").text)
    for path in [f"/console/instances/{iid}", f"/console/instances/{iid}/live",
                 f"/console/instances/{iid}/feed/logs", f"/console/instances/{iid}/terminate"]:
        r = client.get(path)
        assert r.status_code == 404 and "Instance not found" in r.text, path
    for action in ["terminate", "rename", "update"]:
        r = client.post(f"/console/instances/{iid}/{action}",
                        data={"csrf": token, "name": "stolen", "image": "evil/image:1"})
        assert r.status_code == 404, action
    assert iid not in client.get("/console/instances").text
    assert demo.instance(a, iid)["instance_status"] == "ACTIVE"
    assert demo.instance(a, iid)["name"] == "box"


def test_a_plan_that_is_gone_says_so_in_the_apis_words(demo):
    client = demo.client
    _, headers = demo.account()
    offer = demo.offer(demo.provider(), capacity=1)
    sign_in(client, headers["X-API-KEY"])
    page = client.get(f"/console/deploy?plan={offer}")
    assert page.status_code == 200 and 'name="ports"' in page.text
    token = _csrf(page.text)
    demo.deploy(headers, offer)  # the last unit goes elsewhere meanwhile
    for path in [f"/console/deploy?plan={offer}", "/console/deploy?plan=nope"]:
        r = client.get(path)
        assert r.status_code == 400 and "Plan no longer available" in r.text, path
    r = client.post("/console/deploy", data={"csrf": token, "plan": offer, "name": "late",
                                             "image": "docker.io/library/ubuntu:22.04",
                                             "ports": "22"})
    assert r.status_code == 400 and "Plan no longer available" in r.text


def test_the_session_cookie_is_secure_over_https(api):
    _, headers = api.account()
    api.client.base_url = "https://testserver"
    r = sign_in(api.client, headers["X-API-KEY"])
    assert r.status_code == 303
    assert "; secure" in r.headers["set-cookie"].lower()
    api.client.base_url = "http://testserver"
    assert "; secure" not in sign_in(api.client, headers["X-API-KEY"]).headers[
        "set-cookie"].lower()


def test_the_providers_page_shows_public_config_and_never_a_secret(api, tmp_path):
    password = "bmc-pass-" + "x7Qz" * 4
    for name in ("k", "i", "w"):  # boot files the config names must exist
        (tmp_path / name).write_bytes(b"")
    k, i, w = (str(tmp_path / n) for n in ("k", "i", "w"))
    config = {"media_url": "http://127.0.0.1:8470", "media_listen": "127.0.0.1:8470",
              "media_dir": str(tmp_path / "media"),
              "images": {"Ubuntu Server 22.04": {"kernel": k, "initrd": i}},
              "wipe": {"kernel": k, "initrd": w},
              "machines": [{"name": "rack-1", "ssh": {"host": "10.0.0.9"},
                            "bmc": {"url": "https://10.0.0.8", "username": "ops",
                                    "system": "/redfish/v1/Systems/1",
                                    "password": password}}]}
    r = api.client.post("/admin/providers", json={"name": "metal", "driver": "redfish",
                                                  "config": config}, headers=api.admin)
    assert r.status_code == 201, r.text
    sign_in(api.client, ADMIN_KEY, admin=True)
    page = api.client.get("/console/admin/providers").text
    assert "metal" in page and "redfish" in page and "10.0.0.8" in page  # public config
    assert password not in page and "password" not in page  # neither clear nor sealed
