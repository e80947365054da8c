"""What every console page shares: the route class (security headers, sign-in redirects),
templates, the session dependencies, CSRF-checked forms, and the static files.

Security in one place: every console response carries a Content-Security-Policy without
'unsafe-inline' (htmx and our one script are files under /console/static/), `no-store`, and
refuses framing; every POST must carry its session's CSRF token.
"""

from __future__ import annotations

import datetime as dt
import hmac
import mimetypes
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import FormData
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gpucloud.console import sessions
from gpucloud.console.sessions import Who
from gpucloud.errors import APIError, NotFound
from gpucloud.jsonresp import isoformat_z
from gpucloud.money import from_micro

HERE = Path(__file__).parent
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'self'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


class SignInRequired(Exception):
    """`ended`: the browser had a session cookie but its session has ended (not a customer
    knocking at an operator page, whose own session must be left alone)."""

    def __init__(self, admin: bool = False, ended: bool = False):
        super().__init__("sign in required")
        self.admin = admin
        self.ended = ended


class FormRefused(Exception):
    """A POST without its session's CSRF token."""


# --- templates --------------------------------------------------------------------------------

def usd(value: Any) -> str:
    """Micro-USDC (int) or Decimal → '2.96 USDC'; at least cents, never a float."""
    d = from_micro(value) if isinstance(value, int) else Decimal(value)
    text = format(d.quantize(Decimal("0.01")) if d == d.quantize(Decimal("0.01")) else d, "f")
    return f"{text} USDC"


def when(value: dt.datetime | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return isoformat_z(value).replace("T", " ").replace("Z", " UTC")


env = Environment(loader=FileSystemLoader(HERE / "templates"),
                  autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
env.filters.update(usd=usd, when=when)


def render(request: Request, template: str, who: Who | None = None, status_code: int = 200,
           **context: Any) -> HTMLResponse:
    html = env.get_template(template).render(
        request=request, who=who, csrf=who.csrf if who else None, path=request.url.path,
        **context)
    return HTMLResponse(html, status_code=status_code)


def fragment(request: Request, template: str, **context: Any) -> HTMLResponse:
    """An htmx partial: same template machinery, no page around it."""
    return HTMLResponse(env.get_template(template).render(request=request, **context))


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# --- the route class ----------------------------------------------------------------------

class ConsoleRoute(APIRoute):
    """Adds the security headers to every console response and turns the console's own
    exceptions into pages (the app's handlers answer JSON, which suits the API only)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def wrapped(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired as exc:
                response = _to_sign_in(request, exc.admin, exc.ended)
            except FormRefused:
                response = render(request, "refused.html", status_code=403)
            except APIError as exc:  # a rule a page did not expect to meet: its words, as a page
                response = render(request, "error.html", status_code=exc.status_code,
                                  message=exc.detail,
                                  heading="Not found" if exc.status_code == 404 else "Refused")
            return secure(response)

        return wrapped


def secure(response: Response) -> Response:
    """The headers every console answer carries (unless the route set its own)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _to_sign_in(request: Request, admin: bool, ended: bool) -> Response:
    url = "/console/admin/login" if admin else "/console/login"
    if ended:
        url += "?ended=1"  # say why they are asked again
    if request.headers.get("hx-request"):
        # A poll from a page whose session ended: send the whole tab to the sign-in page.
        response: Response = Response(status_code=204, headers={"HX-Redirect": url})
    else:
        response = redirect(url)
    if ended:
        response.delete_cookie(sessions.COOKIE, path="/console")
    return response


# --- who is signed in ---------------------------------------------------------------------

def current(request: Request) -> Who | None:
    """Sync: FastAPI runs it in the threadpool, so the session lookup never blocks the loop.

    A read, plus a write only when the session has ended (its row is deleted) or when a
    person's activity restarts its idle period (at most once a minute, sessions.touch)."""
    rt = request.app.state.rt
    token = request.cookies.get(sessions.COOKIE)
    if not token:
        return None
    life = sessions.Lifetime.of(rt.settings)
    now = rt.clock.now()
    try:
        with rt.db.query() as conn:
            who = sessions.find(conn, token, now, life)
    except sessions.Ended as ended:
        with rt.db.write() as s:
            sessions.close(s, ended.session_id)
        return None
    # The console's own refreshes (htmx) are not the person's activity.
    if who is not None and not request.headers.get("hx-request") \
            and sessions.needs_touch(who, now, life):
        with rt.db.write() as s:
            sessions.touch(s, who.session_id, now)
    return who


def _ended(request: Request, who: Who | None) -> bool:
    return who is None and sessions.COOKIE in request.cookies


def customer(request: Request) -> Who:
    who = current(request)
    if who is None or who.admin:
        raise SignInRequired(admin=False, ended=_ended(request, who))
    return who


def operator(request: Request) -> Who:
    who = current(request)
    if who is None or not who.admin:
        raise SignInRequired(admin=True, ended=_ended(request, who))
    return who


@dataclass(frozen=True)
class Posted:
    who: Who
    form: FormData


def check_csrf(form: FormData, expected: str | None) -> None:
    sent = form.get("csrf")
    if not expected or not isinstance(sent, str) or not hmac.compare_digest(sent, expected):
        raise FormRefused()


async def by_customer(request: Request, who: Who = Depends(customer)) -> Posted:
    form = await request.form()
    check_csrf(form, who.csrf)
    return Posted(who, form)


async def by_operator(request: Request, who: Who = Depends(operator)) -> Posted:
    form = await request.form()
    check_csrf(form, who.csrf)
    return Posted(who, form)


def set_cookie(request: Request, response: Response, name: str, value: str,
               max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/console", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")


# --- static files ---------------------------------------------------------------------------

def _load_static() -> dict[str, tuple[bytes, str]]:
    """Read once at import: a few small files, served from memory with no path handling."""
    root = HERE / "static"
    files = {}
    for path in root.rglob("*"):
        if path.is_file():
            media = mimetypes.guess_type(path.name)[0] or "text/plain"
            if media.startswith("text/") or media.endswith("javascript"):
                media += "; charset=utf-8"
            files[path.relative_to(root).as_posix()] = (path.read_bytes(), media)
    return files


STATIC = _load_static()


def static_file(path: str) -> Response:
    hit = STATIC.get(path)
    if hit is None:
        raise NotFound("No such file")
    body, media = hit
    # Vendored files carry their version in the path, so they may be cached for long.
    age = 31536000 if path.startswith("vendor/") else 300
    return Response(body, media_type=media, headers={"Cache-Control": f"public, max-age={age}"})
