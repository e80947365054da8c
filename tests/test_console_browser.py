"""The web console in a real browser (Debian's Chromium through Selenium), against the real
app served by uvicorn on the test database and its manual clock, on SQLite and PostgreSQL.

Every page a test visits is screenshotted into test-artifacts/console/<backend>/<test>/ and
checked for API keys in its HTML and for controls without labels (tests/browser.py).
"""

from __future__ import annotations

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys

from tests.browser import PHONE, SWAPS, Page, start_browser
from tests.conftest import ADMIN_KEY
from tests.factories import SSH_ED25519


@pytest.fixture(scope="session")
def browser():
    b = start_browser()
    yield b
    b.quit()


@pytest.fixture
def page(request, browser, live_server, demo, backend) -> Page:
    browser.set_window_size(1280, 800)
    browser.get(live_server.url + "/console/login")
    browser.delete_all_cookies()
    name = f"{backend['name']}/{request.node.originalname}"
    return Page(browser, live_server.url, name, secrets=[ADMIN_KEY])


def sign_in(page: Page, key: str, shot: str = "signed-in") -> None:
    page.go("/console/login", "sign-in")
    field = page.labelled("API key")
    field.send_keys(key + Keys.ENTER)  # the keyboard alone: autofocus, type, Enter
    page.wait_for(lambda: page.path == "/console/", "home after sign-in")
    page.visited(shot)


def test_sign_in_with_a_bad_key_then_a_good_one_then_sign_out(page, demo):
    _, headers = demo.account(balance="120", name="team-bravo")
    page.secret(headers["X-API-KEY"])
    page.go("/console/login", "sign-in")
    page.fill("API key", "gpc_this-is-not-a-key")
    page.press("Sign in", "bad-key")
    assert "Invalid API key" in page.text("#key-error")
    assert page.path == "/console/login"

    sign_in(page, headers["X-API-KEY"])
    assert "team-bravo" in page.text("h1")
    assert "120.00 USDC" in page.text("#balance")
    cookie = page.b.get_cookie("gpucloud_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert headers["X-API-KEY"] not in cookie["value"]

    # keyboard only: Tab walks the navigation in order, Enter follows a link
    focused = "return document.activeElement.textContent.trim();"
    chain = ActionChains(page.b)
    chain.send_keys(Keys.TAB).perform()
    assert page.b.execute_script(focused) == "gpucloud"
    chain.send_keys(Keys.TAB).perform()
    assert page.b.execute_script(focused) == "Plans"
    chain.send_keys(Keys.ENTER).perform()
    page.wait_for(lambda: page.path == "/console/plans", "plans by keyboard")
    page.visited("plans-by-keyboard")

    page.press("Sign out", "signed-out")
    assert page.path == "/console/login"
    page.go("/console/account", "account-after-sign-out")
    assert page.path == "/console/login"  # the session is gone, not just the cookie hidden


def test_deploy_a_container_watch_it_go_active_then_terminate(page, demo):
    account_id, headers = demo.account(balance="200", name="ml-team")
    page.secret(headers["X-API-KEY"])
    sign_in(page, headers["X-API-KEY"])

    # plans: filter to one GPU model and a price ceiling; the cheapest comes first
    page.go("/console/plans", "plans")
    page.choose("GPU model", "RTX4090")
    page.fill("Max price per hour", "5")
    page.press("Filter", "plans-filtered")
    prices = [float(td.text.split()[0]) for td in page.all("#plans td.price")]
    assert prices and prices == sorted(prices) and max(prices) <= 5
    assert all("RTX4090" in row.text for row in page.all("#plans tbody tr"))
    page.click("#plans tbody tr:first-child a", "deploy-form")
    assert page.path.startswith("/console/deploy?plan=")

    page.fill("Name", "trainer-1")
    page.fill("Exposed ports", "22/tcp\n80/http")
    page.fill("Environment variables", "MODEL_PATH=/models/llama")
    page.fill("Start command", "sleep infinity")
    page.set_value("SSH public key", SSH_ED25519)
    page.press("Review", "review")
    hourly = page.text("#hourly")
    assert "USDC" in hourly and "200.00 USDC" in page.text("#review-balance")
    hour = float(hourly.split()[0])
    assert page.text("#upfront") == f"{hour * 3:.2f} USDC"
    page.press("Deploy", "deployed")
    assert page.path.startswith("/console/instances/")
    instance_id = page.path.rsplit("/", 1)[1]
    assert page.attr("#status", "data-status") == "INITIALIZED"

    # time moves on the server; the page notices by itself (htmx polling), no reload
    marker = page.b.execute_script("window.__no_reload = 1; return window.__no_reload;")
    demo.advance(30)
    page.wait_for(lambda: page.attr("#status", "data-status") == "ACTIVE",
                  "ACTIVE without a reload")
    assert page.b.execute_script("return window.__no_reload;") == marker
    page.wait_text("#logs pre", "")  # the logs panel loaded
    page.wait_for(lambda: "(nothing yet)" not in page.text("#logs pre"), "log lines")
    page.wait_text("#events pre", "Instance scheduled on provider")
    assert page.text("#ssh-command").startswith("ssh -p ")
    assert page.attr("#uri", "href").startswith("http://")
    assert "Reserve:" in page.text("#billing")
    page.visited("instance-active")

    page.go("/console/instances", "instances")
    row = page.text(f'tr[data-instance="{instance_id}"]')
    assert "trainer-1" in row and "ACTIVE" in row

    page.go(f"/console/instances/{instance_id}", "instance")
    page.click("#terminate-link", "terminate-confirm")
    assert "Terminate trainer-1?" in page.text("h1")
    page.press("Terminate", "terminated")
    page.wait_for(lambda: page.attr("#status", "data-status") == "ENDED", "ENDED")
    assert "Terminated" in page.text(".done")

    page.go("/console/account", "account")
    kinds = [row.get_attribute("class") for row in page.all("#ledger tbody tr")]
    assert kinds[:3] == ["kind-refund", "kind-charge", "kind-reserve"]
    money = demo.money(account_id)
    assert f"{money['balance']:.2f} USDC" == page.text("#balance")
    assert page.all("svg.chart rect.bar")  # the spend-per-day chart is drawn


def test_deploy_a_vm_with_an_os_image_and_rename_it(page, demo):
    _, headers = demo.account(balance="500", name="vm-user")
    page.secret(headers["X-API-KEY"])
    sign_in(page, headers["X-API-KEY"])
    page.go("/console/plans?kind=vms", "plans-vms")
    page.choose("GPU model", "A100")
    page.press("Filter", "plans-vms-filtered")
    row = next(r for r in page.all("#plans tbody tr") if "Rocky Linux 9" in r.text)
    page.act(row.find_element("css selector", "a"), "deploy-vm")
    options = [o.text for o in page.labelled("OS image").find_elements("tag name", "option")]
    assert "Rocky Linux 9" in options
    page.fill("Name", "big-vm")
    page.choose("OS image", "Rocky Linux 9")
    page.set_value("SSH public key", SSH_ED25519)
    page.press("Review", "review-vm")
    assert "Rocky Linux 9" in page.text(".review")
    page.press("Deploy", "vm-deployed")
    demo.advance(30)
    page.wait_for(lambda: page.attr("#status", "data-status") == "ACTIVE", "ACTIVE")
    assert page.text("#ssh-command").startswith("ssh ")
    page.visited("vm-active")

    page.fill("New name", "renamed-vm")
    page.press("Rename", "renamed")
    assert page.text("#instance-name") == "renamed-vm"
    assert "Renamed." in page.text(".done")


def test_a_deploy_that_breaks_a_rule_shows_the_api_message_next_to_the_field(page, demo):
    _, headers = demo.account(balance="1", name="poor")
    page.secret(headers["X-API-KEY"])
    sign_in(page, headers["X-API-KEY"])
    page.go("/console/plans?gpu_model=h100", "plans-h100")
    page.click("#plans tbody tr:first-child a", "deploy-form")
    page.fill("Name", "rules")
    page.fill("Exposed ports", "22/tcp\n8080/http")
    page.press("Review", "http-port")
    assert "Protocol http is only allowed on port 80" in page.field_error("ports")

    page.fill("Exposed ports", "22/tcp")
    page.set_value("Environment variables",
                   "\n".join(f"VAR_{n}=x" for n in range(65)))
    page.press("Review", "too-many-env")
    assert "List should have at most 64 items" in page.field_error("env")

    page.set_value("Environment variables", "")
    page.press("Review", "no-balance")
    assert page.field_error("plan") == "Insufficient balance to deploy instance"
    assert demo.client.get("/gpu/instances/", headers=headers).json() == []


def test_operator_creates_an_account_deposits_issues_a_key_and_the_customer_signs_in(page):
    page.go("/console/admin/login", "admin-sign-in")
    page.fill("Admin key", ADMIN_KEY)
    page.press("Sign in", "admin-home")
    assert page.path == "/console/admin/"
    page.go("/console/admin/providers", "admin-providers")
    assert "massed-compute" in page.text("#providers")
    page.go("/console/admin/offers", "admin-offers")
    page.go("/console/admin/audit", "admin-audit")
    assert "Every check passed." in page.text("#audit-result")

    page.go("/console/admin/accounts", "admin-accounts")
    page.fill("Name", "new-customer")
    page.fill("Opening balance", "10")
    page.press("Create account", "account-created")
    first_key = page.text("#new-key")
    page.secret(first_key)  # …from here on no page may show it again
    assert first_key.startswith("gpc_")
    page.fill("Deposit amount", "15.5")
    page.press("Deposit", "deposited")
    assert page.text("#balance") == "25.50 USDC"
    assert not page.all("#new-key")  # shown once only
    page.press("Issue API key", "key-issued")
    key = page.text("#new-key")
    assert key.startswith("gpc_") and key != first_key
    page.secrets.append(key)
    assert len(page.all("#keys tbody tr")) == 2
    page.press("Sign out", "admin-signed-out")

    sign_in(page, key, "customer-home")
    assert "new-customer" in page.text("h1")
    assert "25.50 USDC" in page.text("#balance")


def test_pages_fit_a_phone(page, demo):
    account_id, headers = demo.account(balance="50", name="phone")
    page.secret(headers["X-API-KEY"])
    iid = demo.deploy(headers, demo.offer(demo.provider(name="tiny")), name="pocket")
    demo.advance(30)
    page.b.set_window_size(*PHONE)
    sign_in(page, headers["X-API-KEY"], "phone-home")
    overflow = "return document.documentElement.scrollWidth - window.innerWidth;"
    wide = """return [...document.querySelectorAll('body *')]
        .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
        .filter(e => !e.closest('.overflow-auto'))
        .map(e => e.tagName + '.' + e.className).slice(0, 5);"""
    offer = demo.offer(demo.provider(name="small"))
    for path in ["/console/", "/console/plans", "/console/plans?kind=vms",
                 "/console/plans?kind=baremetal", f"/console/deploy?plan={offer}",
                 "/console/instances", f"/console/instances/{iid}",
                 f"/console/instances/{iid}/terminate", "/console/account"]:
        page.go(path, "phone-" + path.strip("/").replace("/", "-"))
        assert page.b.execute_script(overflow) <= 0, (path, page.b.execute_script(wide))
    assert page.all("nav a[href='/console/account']")[0].is_displayed()
    page.press("Sign out", "phone-signed-out")
    page.go("/console/admin/login", "phone-admin-sign-in")
    page.fill("Admin key", ADMIN_KEY)
    page.press("Sign in", "phone-admin-home")
    for path in ["/console/admin/", "/console/admin/providers", "/console/admin/offers",
                 "/console/admin/accounts", f"/console/admin/accounts/{account_id}",
                 "/console/admin/audit"]:
        page.go(path, "phone-" + path.strip("/").replace("/", "-"))
        assert page.b.execute_script(overflow) <= 0, (path, page.b.execute_script(wide))


def test_the_keyboard_alone_reaches_every_control_and_keeps_focus_while_pages_refresh(page,
                                                                                     demo):
    _, headers = demo.account(balance="200", name="keys")
    page.secret(headers["X-API-KEY"])
    offer = demo.offer(demo.provider(name="kb"))
    iid = demo.deploy(headers, offer, name="kb-box", ssh_key=SSH_ED25519)
    demo.advance(30)
    sign_in(page, headers["X-API-KEY"])
    # Every control of every customer page is reached by Tab, in order, and shows its focus.
    for path in ["/console/", "/console/plans", "/console/plans?kind=vms",
                 f"/console/deploy?plan={offer}", "/console/instances",
                 f"/console/instances/{iid}", "/console/account"]:
        page.go(path, "kb-" + path.strip("/").replace("/", "-"))
        assert page.tab_walk(), path

    # The list refreshes itself every 2 s; a person who tabbed to a row keeps their place.
    page.go("/console/instances", "kb-instances")
    page.b.execute_script(SWAPS)
    page.tab_to(f"A:open-{iid}")
    page.wait_for(lambda: page.b.execute_script("return window.__swaps") >= 2, "refreshed")
    assert page.focused()[0] == f"A:open-{iid}"
    page.key(Keys.ENTER)
    page.wait_for(lambda: page.path == f"/console/instances/{iid}", "instance by keyboard")
    page.visited("kb-instance")

    # So does one who tabbed to "Terminate…" on the live instance page; then Enter, Tab to
    # the confirming button, Enter.
    page.b.execute_script(SWAPS)
    page.tab_to("A:terminate-link")
    page.wait_for(lambda: page.b.execute_script("return window.__swaps") >= 3, "refreshed")
    assert page.focused()[0] == "A:terminate-link"
    page.key(Keys.ENTER)
    page.wait_for(lambda: page.path.endswith("/terminate"), "confirmation by keyboard")
    page.visited("kb-terminate")
    page.tab_to("BUTTON:confirm-terminate")
    page.key(Keys.ENTER)
    page.wait_for(lambda: page.path.startswith(f"/console/instances/{iid}?done="),
                  "terminated")
    page.wait_for(lambda: page.attr("#status", "data-status") == "ENDED", "ENDED")
    page.visited("kb-terminated")


def test_a_form_without_its_csrf_token_is_refused_in_the_browser(page, demo):
    _, headers = demo.account(balance="200", name="forged")
    page.secret(headers["X-API-KEY"])
    offer = demo.offer(demo.provider(name="csrf"))
    sign_in(page, headers["X-API-KEY"])
    page.go(f"/console/deploy?plan={offer}", "deploy-form")
    page.fill("Name", "no-token")
    page.b.execute_script("document.querySelectorAll('input[name=csrf]')"
                          ".forEach(e => e.remove());")
    page.press("Review", "refused-without-token")
    assert "Form refused" in page.text("h1")
    assert "security token (CSRF)" in page.text("main")
    page.go(f"/console/deploy?plan={offer}", "deploy-form-again")
    page.b.execute_script("document.querySelectorAll('input[name=csrf]')"
                          ".forEach(e => e.value = 'forged');")
    page.press("Sign out", "sign-out-forged")
    assert "Form refused" in page.text("h1")
    page.go("/console/account", "still-signed-in")  # the forged sign-out did nothing
    assert page.path == "/console/account"
    assert demo.client.get("/gpu/instances/", headers=headers).json() == []


def test_operator_pages_work_from_the_keyboard(page, demo):
    account_id, _ = demo.account(balance="5", name="kb-customer")
    page.go("/console/admin/login", "admin-sign-in")
    page.labelled("Admin key").send_keys(ADMIN_KEY + Keys.ENTER)
    page.wait_for(lambda: page.path == "/console/admin/", "admin home by keyboard")
    page.visited("admin-home")
    for path in ["/console/admin/", "/console/admin/providers", "/console/admin/offers",
                 "/console/admin/accounts", f"/console/admin/accounts/{account_id}",
                 "/console/admin/audit"]:
        page.go(path, "kb-" + path.strip("/").replace("/", "-"))
        assert page.tab_walk(), path
    # A deposit typed and sent from the keyboard.
    page.go(f"/console/admin/accounts/{account_id}", "kb-account")
    page.tab_to("INPUT:amount")
    page.key("7.25" + Keys.ENTER)
    page.wait_for(lambda: page.text("#balance") == "12.25 USDC", "deposited by keyboard")
    page.visited("kb-deposited")
