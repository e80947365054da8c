"""Operator pages under /console/admin/: the numbers at a glance, providers (public config
only), offers (enable, capacity, price), accounts (create, deposit, keys) and the books.

Signed in with the admin key; every change goes through the same catalog, accounts and ledger
services as the /admin API, with the same models validating the input.
"""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from gpucloud.accounts import service as accounts
from gpucloud.accounts.schemas import AccountCreate, DepositIn
from gpucloud.billing import audit, ledger
from gpucloud.catalog import service as catalog
from gpucloud.catalog.schemas import OfferPatch
from gpucloud.console.sessions import Who
from gpucloud.console.web import ConsoleRoute, Posted, by_operator, operator, redirect, render
from gpucloud.errors import APIError
from gpucloud.instances import service as instances
from gpucloud.money import to_micro

router = APIRouter(prefix="/admin", route_class=ConsoleRoute)


def _errors(exc: ValidationError) -> dict[str, str]:
    return {str(e["loc"][0]) if e["loc"] else "form": e["msg"] for e in exc.errors()}


@router.get("/")
@router.get("")
def admin_home(request: Request, who: Who = Depends(operator)):
    rt = request.app.state.rt
    with rt.db.read() as s:
        by_status = instances.status_counts(s)
        providers = catalog.list_providers(s)
        account_list = accounts.list_accounts(s)
    counts: dict[str, dict[str, int]] = {}
    for (workload, status), n in by_status.items():
        counts.setdefault(workload, {})[status] = n
    return render(request, "admin/home.html", who, counts=counts, providers=providers,
                  accounts=len(account_list),
                  balances=sum(a.balance for a in account_list),
                  capacity=sum(p["capacity"] for p in providers),
                  in_use=sum(p["in_use"] for p in providers))


@router.get("/providers")
def providers_page(request: Request, who: Who = Depends(operator)):
    rt = request.app.state.rt
    with rt.db.read() as s:
        providers = catalog.list_providers(s)
    return render(request, "admin/providers.html", who, providers=providers)


@router.post("/providers/{provider_id}/enabled")
def provider_enabled(provider_id: str, request: Request, posted: Posted = Depends(by_operator)):
    rt = request.app.state.rt
    with rt.db.write() as s:
        catalog.set_provider_enabled(s, provider_id, posted.form.get("enabled") == "true")
    return redirect("/console/admin/providers")


def _offers_page(request: Request, who: Who, errors: dict | None = None, failed: str = ""):
    rt = request.app.state.rt
    with rt.db.read() as s:
        offers = catalog.list_offers(s)
    return render(request, "admin/offers.html", who, offers=offers, errors=errors or {},
                  failed=failed, status_code=400 if errors else 200)


@router.get("/offers")
def offers_page(request: Request, who: Who = Depends(operator)):
    return _offers_page(request, who)


def _whole_number(text: str | None) -> int | str | None:
    """A form field is text; the API takes counts only as JSON integers (strict), so a form's
    digits become one here and anything else is left for validation to name."""
    if not text:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return text


@router.post("/offers/{offer_id}")
def offer_change(offer_id: str, request: Request, posted: Posted = Depends(by_operator)):
    rt = request.app.state.rt
    form = posted.form
    try:
        patch = OfferPatch.model_validate({
            "enabled": form.get("enabled") == "true",
            "capacity": _whole_number(form.get("capacity")),
            "price_hour": form.get("price_hour") or None})
    except ValidationError as exc:
        return _offers_page(request, posted.who, _errors(exc), failed=offer_id)
    with rt.db.write() as s:
        catalog.patch_offer(s, offer_id, patch)
    return redirect(f"/console/admin/offers#offer-{offer_id}")


def _accounts_page(request: Request, who: Who, **context):
    rt = request.app.state.rt
    with rt.db.read() as s:
        rows = accounts.list_accounts(s)
    return render(request, "admin/accounts.html", who, accounts=rows,
                  status_code=400 if context.get("errors") else 200, **context)


@router.get("/accounts")
def accounts_page(request: Request, who: Who = Depends(operator)):
    return _accounts_page(request, who, errors={}, v={})


@router.post("/accounts")
def account_create(request: Request, posted: Posted = Depends(by_operator)):
    rt = request.app.state.rt
    v = {"name": str(posted.form.get("name") or "").strip(),
         "balance": str(posted.form.get("balance") or "").strip()}
    try:
        body = AccountCreate.model_validate({"name": v["name"], "balance": v["balance"] or None})
    except ValidationError as exc:
        return _accounts_page(request, posted.who, errors=_errors(exc), v=v)
    with rt.db.write() as s:
        account, key = accounts.create_account(s, body.name, to_micro(body.balance or 0),
                                               rt.clock.now())
        account_id = account.id
    # The key is shown on this one response and never again (it is stored hashed).
    return _account_page(request, posted.who, account_id, new_key=key)


def _account_page(request: Request, who: Who, account_id: str, **context):
    rt = request.app.state.rt
    with rt.db.read() as s:
        money = accounts.money_summary(s, account_id)
        keys = accounts.list_api_keys(s, account_id)
    context.setdefault("errors", {})
    return render(request, "admin/account.html", who, money=money, keys=keys,
                  now=rt.clock.now(), status_code=400 if context["errors"] else 200, **context)


@router.get("/accounts/{account_id}")
def account_page(account_id: str, request: Request, who: Who = Depends(operator)):
    return _account_page(request, who, account_id)


@router.post("/accounts/{account_id}/deposit")
def account_deposit(account_id: str, request: Request, posted: Posted = Depends(by_operator)):
    rt = request.app.state.rt
    try:
        body = DepositIn.model_validate({"amount": str(posted.form.get("amount") or "")})
        with rt.db.write() as s:
            ledger.deposit(s, account_id, to_micro(body.amount), rt.clock.now())
    except ValidationError as exc:
        return _account_page(request, posted.who, account_id, errors=_errors(exc))
    except APIError as exc:
        if exc.status_code == 404:
            raise
        return _account_page(request, posted.who, account_id, errors={"amount": exc.detail})
    return redirect(f"/console/admin/accounts/{account_id}")


@router.post("/accounts/{account_id}/keys")
def key_create(account_id: str, request: Request, posted: Posted = Depends(by_operator)):
    rt = request.app.state.rt
    raw = str(posted.form.get("expires_days") or "").strip()
    expires = None
    if raw:
        if not raw.isdigit() or not 1 <= int(raw) <= 3650:
            return _account_page(request, posted.who, account_id,
                                 errors={"expires_days": "Days must be a whole number, 1–3650"})
        expires = rt.clock.now() + dt.timedelta(days=int(raw))
    with rt.db.write() as s:
        _, key = accounts.create_api_key(s, account_id, expires, rt.clock.now())
    return _account_page(request, posted.who, account_id, new_key=key)


@router.post("/keys/{key_id}/revoke")
def key_revoke(key_id: str, request: Request, posted: Posted = Depends(by_operator)):
    rt = request.app.state.rt
    with rt.db.write() as s:
        row = accounts.revoke_api_key(s, key_id, rt.clock.now())
        account_id = row.account_id
    rt.invalidate("api_keys")
    return redirect(f"/console/admin/accounts/{account_id}")


@router.get("/audit")
def audit_page(request: Request, who: Who = Depends(operator)):
    rt = request.app.state.rt
    with rt.db.read() as s:
        report = audit.audit(s)
    return render(request, "admin/audit.html", who, report=report)
