"""Sign in (API key or admin key) and sign out.

Before there is a session, the sign-in form is protected by a double-submit token: a random
value in an HttpOnly, SameSite=Strict cookie that the form must echo.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from gpucloud.accounts.auth import admin_key_ok
from gpucloud.console import sessions
from gpucloud.console.web import (
    ConsoleRoute,
    check_csrf,
    current,
    redirect,
    render,
    secure,
    set_cookie,
)

router = APIRouter(route_class=ConsoleRoute)

CUSTOMER = {"heading": "Sign in", "label": "API key", "action": "/console/login",
            "hint": "Use the API key your operator gave you (it starts with gpc_).",
            "other": '<a href="/console/admin/login">Operators sign in here.</a>'}
# The answer to a refused key, and nothing else: web/guard.py charges the address's
# rate-limit bucket for exactly these.
REFUSED_STATUS = 400
OPERATOR = {"heading": "Operator sign in", "label": "Admin key", "action": "/console/admin/login",
            "hint": "The server's admin key (printed at first start, or GPUCLOUD_ADMIN_KEY).",
            "other": '<a href="/console/login">Customers sign in here.</a>'}


ENDED = "Your session has ended: it was idle too long, reached its time limit, or its key "\
    "was revoked. Sign in again."


def _form(request: Request, texts: dict, error: str | None = None,
          status_code: int = 200) -> Response:
    token = sessions.new_token()
    notice = ENDED if request.method == "GET" and request.query_params.get("ended") else None
    response = render(request, "login.html", login_csrf=token, error=error, notice=notice,
                      status_code=status_code, **texts)
    set_cookie(request, response, sessions.LOGIN_CSRF_COOKIE, token, max_age=3600)
    return response


def too_many_attempts(request: Request, retry_after: int) -> Response:
    """The 429 page for an address that has spent its failed sign-ins (web/guard.py answers
    it before the form is read, so outside the console's route class: headers set here)."""
    texts = OPERATOR if request.url.path.startswith("/console/admin/") else CUSTOMER
    minutes = "a minute" if retry_after > 30 else f"{retry_after} seconds"
    response = _form(request, texts, status_code=429, error=(
        f"Too many failed sign-ins from your network address. Wait {minutes} and try "
        "again; the key you typed was not checked."))
    secure(response)
    response.headers["Retry-After"] = str(retry_after)
    return response


def _signed_in(request: Request, token: str, home: str) -> Response:
    response = redirect(home)
    # The browser may drop the cookie at the absolute end; the idle end is the server's.
    set_cookie(request, response, sessions.COOKIE, token,
               max_age=request.app.state.rt.settings.console_session_max_seconds)
    response.delete_cookie(sessions.LOGIN_CSRF_COOKIE, path="/console")
    return response


async def _posted_key(request: Request) -> str:
    form = await request.form()
    check_csrf(form, request.cookies.get(sessions.LOGIN_CSRF_COOKIE))
    key = form.get("key")
    return key.strip() if isinstance(key, str) else ""


@router.get("/login")
def login_page(request: Request):
    who = current(request)
    if who is not None and not who.admin:
        return redirect("/console/")
    return _form(request, CUSTOMER)


@router.post("/login")
async def login(request: Request):
    key = await _posted_key(request)
    rt = request.app.state.rt

    def sign_in() -> str | None:
        now = rt.clock.now()
        with rt.db.write() as s:
            found = sessions.customer_key(s, key, now) if key else None
            if found is None:
                return None
            return sessions.open_session(s, now, sessions.Lifetime.of(rt.settings),
                                         account_id=found[0], api_key_id=found[1],
                                         admin=False)

    token = await run_in_threadpool(sign_in)
    if token is None:
        return _form(request, CUSTOMER, error="Invalid API key: it is unknown, revoked or "
                     "expired. Check it and try again.", status_code=REFUSED_STATUS)
    return _signed_in(request, token, "/console/")


@router.get("/admin/login")
def admin_login_page(request: Request):
    who = current(request)
    if who is not None and who.admin:
        return redirect("/console/admin/")
    return _form(request, OPERATOR)


@router.post("/admin/login")
async def admin_login(request: Request):
    key = await _posted_key(request)
    rt = request.app.state.rt

    def sign_in() -> str | None:
        if not key or not admin_key_ok(rt, key):
            return None
        with rt.db.write() as s:
            return sessions.open_session(s, rt.clock.now(), sessions.Lifetime.of(rt.settings),
                                         account_id=None, api_key_id=None, admin=True)

    token = await run_in_threadpool(sign_in)
    if token is None:
        return _form(request, OPERATOR, error="Invalid admin key.", status_code=REFUSED_STATUS)
    return _signed_in(request, token, "/console/admin/")


@router.post("/logout")
async def logout(request: Request):
    who = await run_in_threadpool(current, request)
    if who is None:
        return redirect("/console/login")
    check_csrf(await request.form(), who.csrf)
    rt = request.app.state.rt

    def sign_out() -> None:
        with rt.db.write() as s:
            sessions.close(s, who.session_id)

    await run_in_threadpool(sign_out)
    response = redirect("/console/admin/login" if who.admin else "/console/login")
    response.delete_cookie(sessions.COOKIE, path="/console")
    return response

