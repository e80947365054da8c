"""GET /gpu/account and the admin account endpoints. Thin: auth, one service call, a schema."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Depends, Request, Response

from gpucloud import idempotency
from gpucloud.accounts import service
from gpucloud.accounts.auth import current_account, require_admin
from gpucloud.accounts.schemas import (
    AccountCreate,
    AccountCreated,
    AccountOut,
    ApiKeyCreate,
    ApiKeyCreated,
    DepositIn,
)
from gpucloud.billing import ledger
from gpucloud.bodies import BodyRoute
from gpucloud.jsonresp import JSON, isoformat_z
from gpucloud.money import from_micro, to_micro

public = APIRouter(prefix="/gpu", route_class=BodyRoute, tags=["account"])
admin = APIRouter(prefix="/admin", route_class=BodyRoute, tags=["admin: accounts"],
                   dependencies=[Depends(require_admin)])


def account_json(summary: dict) -> dict:
    return {"id": summary["id"], "name": summary["name"],
            "balance": from_micro(summary["balance"]),
            "reserved": from_micro(summary["reserved"]), "spent": from_micro(summary["spent"])}


@public.get("/account", response_model=AccountOut, operation_id="getAccount")
async def get_account(request: Request):
    rt = request.app.state.rt
    caller = await current_account(request)
    return JSON(account_json(await service.read_money_summary(rt, caller.account_id)))


@admin.post("/accounts", status_code=201, response_model=AccountCreated,
            operation_id="adminCreateAccount")
def create_account(body: AccountCreate, request: Request,
                   key: str | None = Depends(idempotency.key_header)):
    rt = request.app.state.rt

    def work(s) -> tuple[int, dict]:
        account, api_key = service.create_account(s, body.name, to_micro(body.balance or 0),
                                                  rt.clock.now())
        return 201, {"id": account.id, "name": account.name,
                     "balance": from_micro(account.balance), "api_key": api_key}

    return idempotency.run(rt, "admin", key, idempotency.fingerprint("adminCreateAccount", body),
                           work)


@admin.get("/accounts/{account_id}", response_model=AccountOut, operation_id="adminGetAccount")
def get_account_admin(account_id: str, request: Request):
    rt = request.app.state.rt
    with rt.db.read() as s:
        return JSON(account_json(service.money_summary(s, account_id)))


@admin.post("/accounts/{account_id}/deposits", response_model=AccountOut,
            operation_id="adminDeposit")
def deposit(account_id: str, body: DepositIn, request: Request,
            key: str | None = Depends(idempotency.key_header)):
    rt = request.app.state.rt

    def work(s) -> tuple[int, dict]:
        ledger.deposit(s, account_id, to_micro(body.amount), rt.clock.now())
        s.flush()
        return 200, account_json(service.money_summary(s, account_id))

    return idempotency.run(rt, "admin", key,
                           idempotency.fingerprint(f"adminDeposit {account_id}", body), work)


@admin.post("/accounts/{account_id}/api-keys", status_code=201, response_model=ApiKeyCreated,
            operation_id="adminCreateApiKey")
def create_key(account_id: str, body: ApiKeyCreate, request: Request):
    rt = request.app.state.rt
    expires = body.expires_at
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=dt.timezone.utc)
    with rt.db.write() as s:
        row, key = service.create_api_key(s, account_id, expires, rt.clock.now())
        out = {"id": row.id, "api_key": key,
               "expires_at": isoformat_z(expires) if expires else None}
    return JSON(out, status_code=201)


@admin.delete("/api-keys/{key_id}", status_code=204, operation_id="adminRevokeApiKey")
def revoke_key(key_id: str, request: Request):
    rt = request.app.state.rt
    with rt.db.write() as s:
        service.revoke_api_key(s, key_id, rt.clock.now())
    rt.invalidate("api_keys")
    return Response(status_code=204)
