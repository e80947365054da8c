"""Driving Debian's Chromium through Selenium and chromium-driver for the console tests.

One browser per test session (starting Chromium costs seconds); each test gets a clean slate
(cookies dropped) and a `Page` helper that screenshots every page it visits into
test-artifacts/console/ (ignored by git) and checks, on each one, that the page holds no API
key and that every visible control has a label.
"""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"
DESKTOP = (1280, 800)
PHONE = (390, 844)
WAIT = 15  # seconds: htmx polls every 2 s

UNLABELLED = """
return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
  .filter(e => e.offsetParent !== null)
  .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
               && !(e.tagName === 'BUTTON' && e.textContent.trim()))
  .map(e => e.outerHTML.slice(0, 120));
"""


# Keyboard: what a person can reach with Tab, in order, and whether focus shows. Each control
# is known by a key that survives an htmx swap (id, else name/href/text), and its look
# unfocused is kept to compare with its look under focus.
CONTROLS = """
window.__controls = [...document.querySelectorAll(
    'a[href], button, input:not([type=hidden]), select, textarea, summary, [tabindex]')]
  .filter(e => e.checkVisibility() && !e.disabled && e.tabIndex >= 0);
const key = e => e.tagName + ':' + (e.id || e.name || e.getAttribute('href')
                                    || e.textContent.trim().slice(0, 40));
const look = e => { const s = getComputedStyle(e);
  return [s.outlineStyle, s.outlineWidth, s.outlineColor, s.boxShadow, s.borderColor,
          s.backgroundColor, s.textDecorationLine].join('|'); };
window.__key = key; window.__look = look;
window.__unfocused = Object.fromEntries(window.__controls.map(e => [key(e), look(e)]));
// Start from the top, as on a fresh load: focus an unreachable marker before everything.
let start = document.getElementById('kb-start');
if (!start) {
  start = document.createElement('span'); start.id = 'kb-start'; start.tabIndex = -1;
  document.body.prepend(start);
}
start.focus();
return window.__controls.map(key);
"""
FOCUSED = """
const e = document.activeElement;
if (!e || e === document.body || e === document.documentElement) return null;
const k = window.__key(e);
const s = getComputedStyle(e);
// Chromium lets Tab stop on a scrolled box with nothing focusable inside, to scroll it.
const scroller = /auto|scroll/.test(s.overflowX + s.overflowY)
  && (e.scrollWidth > e.clientWidth || e.scrollHeight > e.clientHeight);
return [k, window.__look(e) !== window.__unfocused[k], scroller];
"""
SWAPS = """
window.__swaps = 0;
document.body.addEventListener('htmx:afterSwap', () => { window.__swaps += 1; });
"""


OVERFLOW = "return document.documentElement.scrollWidth - window.innerWidth;"
WIDE = """return [...document.querySelectorAll('body *')]
    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
    .filter(e => !e.closest('.overflow-auto'))
    .map(e => e.tagName + '.' + e.className).slice(0, 5);"""


def chromium_paths() -> tuple[str, str]:
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (Path(binary).exists() and Path(driver).exists()):
        raise RuntimeError("Chromium is not installed: ./scripts/test installs the Debian "
                           "packages chromium and chromium-driver")
    return binary, driver


def start_browser() -> webdriver.Chrome:
    binary, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={DESKTOP[0]},{DESKTOP[1]}", "--hide-scrollbars",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to see CSP reports
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.set_page_load_timeout(120)  # the machine may be busy: slow, not broken
    return browser


def save_full_page(browser: webdriver.Chrome, path: Path, max_height: int = 5000) -> None:
    """The whole page, not just the window (Chromium's DevTools capture beyond the viewport)."""
    width, height = browser.execute_script(
        "return [window.innerWidth, document.documentElement.scrollHeight];")
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": min(height, max_height),
                 "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))


class Page:
    """The browser as one test sees it: relative URLs, screenshots, waits, page checks."""

    def __init__(self, browser: webdriver.Chrome, base_url: str, name: str,
                 secrets: list[str]):
        self.b = browser
        self.base = base_url
        self.dir = ARTIFACTS / name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.secrets = secrets  # keys no page may ever contain

    # -- navigation ---------------------------------------------------------------------
    def go(self, path: str, shot: str | None = None) -> None:
        self.b.get(self.base + path)
        self.visited(shot or path.strip("/").replace("/", "-") or "home")

    def visited(self, label: str) -> None:
        """Screenshot and check the page the browser shows now."""
        self.count += 1
        safe = re.sub(r"[^a-zA-Z0-9_-]+", "-", label)[:60]
        save_full_page(self.b, self.dir / f"{self.count:02d}-{safe}.png")
        html = self.b.page_source
        for secret in self.secrets:
            assert secret not in html, f"page {self.b.current_url} contains a key"
        assert self.b.execute_script(UNLABELLED) == [], self.b.current_url
        # Usable at this width (1280×800 or 390×844): nothing pushes the page sideways; wide
        # tables scroll inside their own box.
        assert self.b.execute_script(OVERFLOW) <= 0, (self.b.current_url,
                                                      self.b.execute_script(WIDE))
        # Nothing on the page (htmx, Pico, our script) may need what the CSP forbids.
        refused = [e["message"] for e in self.b.get_log("browser")
                   if "Content Security Policy" in e["message"]]
        assert refused == [], refused

    def secret(self, key: str) -> None:
        self.secrets.append(key)

    # -- finding and acting ------------------------------------------------------------
    def css(self, selector: str):
        return self.b.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str):
        return self.b.find_elements(By.CSS_SELECTOR, selector)

    def text(self, selector: str = "body") -> str:
        return self.fresh(lambda: self.css(selector).text)

    def attr(self, selector: str, name: str) -> str | None:
        return self.fresh(lambda: self.css(selector).get_attribute(name))

    @staticmethod
    def fresh(read, tries: int = 5):
        """Polled sections are swapped every 2 s: an element found just before a swap is
        stale just after it, so a read is retried on the new one. While a navigation
        replaces the whole document, Chrome reports the same race as an unknown error ("Node
        with given id does not belong to the document"): that counts as stale too, so
        `wait_for` polls again instead of failing."""
        for attempt in range(tries):
            try:
                return read()
            except StaleElementReferenceException:
                if attempt == tries - 1:
                    raise
            except WebDriverException as exc:
                if "does not belong to the document" not in str(exc):
                    raise
                if attempt == tries - 1:
                    raise StaleElementReferenceException(exc.msg) from exc
        return None

    def labelled(self, label: str):
        """The control whose <label> reads `label` (the way a person finds it)."""
        return self.fresh(lambda: self._labelled(label))

    def _labelled(self, label: str):
        for el in self.b.find_elements(By.TAG_NAME, "label"):
            if el.text.strip().startswith(label):
                target = el.get_attribute("for")
                if target:
                    return self.b.find_element(By.ID, target)
                return el.find_element(By.CSS_SELECTOR, "input, select, textarea")
        raise AssertionError(f"no control labelled {label!r} on {self.b.current_url}")

    def fill(self, label: str, value: str) -> None:
        field = self.labelled(label)
        field.clear()
        if value:
            field.send_keys(value)

    def set_value(self, label: str, value: str) -> None:
        """For long text (typing 65 lines key by key is slow), as a paste would."""
        self.b.execute_script("arguments[0].value = arguments[1]", self.labelled(label), value)

    def choose(self, label: str, option_text: str) -> None:
        Select(self.labelled(label)).select_by_visible_text(option_text)

    def click(self, selector: str, shot: str | None = None) -> None:
        """Find and click, again from the start when a polled section swaps the element
        between the two (as `press`)."""

        def find_and_click():
            el = self.css(selector)
            el.click()
            return el

        self._settle(self.fresh(find_and_click), shot)

    def act(self, element, shot: str | None) -> None:
        """Click; when the click loads a new page (`shot` given), wait until it has."""
        element.click()
        self._settle(element, shot)

    def _settle(self, element, shot: str | None) -> None:
        if shot is None:
            return
        try:
            WebDriverWait(self.b, WAIT).until(staleness_of(element))
        except TimeoutException:  # a click that stayed on the page (htmx swap)
            pass
        except WebDriverException:
            # Chromium may report the node as gone from the document (an inspector error, not
            # a stale reference) while the new page replaces it: the page did change.
            pass
        self.wait_for(lambda: self.b.execute_script("return document.readyState") == "complete",
                      "page loaded")
        self.visited(shot)

    def press(self, button_text: str, shot: str | None = None) -> None:
        """Find the button and click it, again from the start when a polled section is
        swapped under the search (a button read or clicked there goes stale; a stale click
        never reached the page, so repeating it presses once)."""

        def find_and_click():
            for el in self.b.find_elements(By.CSS_SELECTOR, "button, a[role=button]"):
                if el.text.strip() == button_text and el.is_displayed():
                    el.click()
                    return el
            raise AssertionError(f"no button {button_text!r} on {self.b.current_url}")

        self._settle(self.fresh(find_and_click), shot)

    def wait_for(self, condition, message: str = "", timeout: float = WAIT):
        return WebDriverWait(self.b, timeout, poll_frequency=0.2,
                             ignored_exceptions=(StaleElementReferenceException,
                                                 NoSuchElementException)).until(
            lambda _: condition(), message)

    def wait_text(self, selector: str, text: str, timeout: float = WAIT) -> None:
        def has() -> bool:
            found = self.all(selector)
            return bool(found) and text in found[0].text  # stale: retried by wait_for

        self.wait_for(has, f"{text!r} in {selector}", timeout)

    # -- keyboard -----------------------------------------------------------------------
    def tab(self, times: int = 1) -> None:
        for _ in range(times):
            ActionChains(self.b).send_keys(Keys.TAB).perform()

    def focused(self) -> tuple[str, bool, bool] | None:
        """(key of the focused control, whether it looks different from unfocused, whether
        it is a scrolled box rather than a control)."""
        found = self.b.execute_script(FOCUSED)
        return None if found is None else (found[0], found[1], found[2])

    def tab_walk(self) -> list[str]:
        """Tab from the top of the page through every control and back out; checks that Tab
        reaches each visible control once, in document order, each with a visible focus."""
        expected = self.b.execute_script(CONTROLS)
        reached = []
        for _ in range(len(expected) + 10):
            self.tab()
            now = self.focused()
            if now is None or (reached and now[0] == reached[0]):
                break  # out of the page (to the browser) or round to the start
            key, shows, scroller = now
            if scroller and key not in expected:
                continue
            assert shows, f"no visible focus on {key} at {self.b.current_url}"
            reached.append(key)
        assert reached == expected, (self.b.current_url, reached, expected)
        return reached

    def tab_to(self, key: str, limit: int = 80) -> None:
        """Press Tab until the control known by `key` has focus."""
        self.b.execute_script(CONTROLS)
        for _ in range(limit):
            self.tab()
            now = self.focused()
            if now is not None and now[0] == key:
                return
        raise AssertionError(f"Tab never reached {key} on {self.b.current_url}")

    def key(self, key: str) -> None:
        ActionChains(self.b).send_keys(key).perform()

    def field_error(self, field: str) -> str:
        return self.text(f'small.error[data-field="{field}"]')

    @property
    def path(self) -> str:
        return self.b.current_url.removeprefix(self.base)
