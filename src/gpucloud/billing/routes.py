"""GET /gpu/account/transactions (an account's own ledger) and GET /admin/audit (the books
checked). Thin: auth, one service call."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from gpucloud import metrics, params
from gpucloud.accounts.auth import current_account, require_admin
from gpucloud.billing import audit, service
from gpucloud.bodies import BodyRoute
from gpucloud.common import MoneyOut
from gpucloud.jsonresp import JSON, RenderedRows, dumps, isoformat_z
from gpucloud.money import from_micro
from gpucloud.threads import run_aside

router = APIRouter(prefix="/gpu", route_class=BodyRoute, tags=["account"])
admin = APIRouter(prefix="/admin", route_class=BodyRoute, tags=["admin: billing"],
                   dependencies=[Depends(require_admin)])


class TransactionOut(BaseModel):
    id: int = Field(examples=[1042])
    at: dt.datetime = Field(examples=["2026-01-05T11:00:00Z"])
    kind: Literal["deposit", "reserve", "charge", "topup", "refund"] = Field(examples=["charge"])
    amount: MoneyOut = Field(description="Always positive; `kind` gives the direction.")
    instance_id: str | None = Field(examples=["5d0f6c1e-0a43-4a43-9a55-2f1f3c0d9b1e"])
    balance_after: MoneyOut = Field(description="The account balance right after this entry.")


class TransactionPage(BaseModel):
    items: list[TransactionOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page.",
        examples=["bGU6MTAwMQ"])


def _item(e) -> dict:
    return {"id": e.id, "at": isoformat_z(e.at), "kind": e.kind, "amount": from_micro(e.amount),
            "instance_id": e.instance_id, "balance_after": from_micro(e.balance_after)}


# A request-only route (gpucloud/params.py): the same parameters, bounds and 422s as when it
# declared them, `limit` checked before `cursor`, both after the key.
LIMIT = params.param("limit", int, 50, "Page size.", ge=1, le=500)
CURSOR = params.param("cursor", str | None, None, "`next_cursor` of the previous page.",
                      max_length=64)


@router.get("/account/transactions", response_model=TransactionPage,
            operation_id="listAccountTransactions",
            openapi_extra=params.openapi(LIMIT.doc, CURSOR.doc))
async def list_transactions(request: Request):
    """The account's ledger entries (deposit, reserve, charge, topup, refund), newest first."""
    rt = request.app.state.rt
    caller = await current_account(request)
    limit, cursor = params.read(request, LIMIT, CURSOR)
    return JSON(await _page(rt, caller.account_id, limit, cursor))


# Ledger entries never change: each is rendered once (keyed by the row as stored).
_ITEMS = RenderedRows()


async def _page(rt, account_id: str, limit: int, cursor: str | None) -> bytes:
    stmt, params = service.page_query(account_id, limit, cursor)
    convert = rt.db.reader.convert

    def render(rows: list) -> bytes:
        page = rows[:limit]
        next_cursor = service.encode_cursor(convert(stmt, page[-1]).id) \
            if len(rows) > limit else None
        items = _ITEMS.join(page, lambda raw: dumps(_item(convert(stmt, raw))))
        # What dumps({"items": [...], "next_cursor": …}) writes, with the items already JSON.
        return b'{"items":' + items + b',"next_cursor":' + dumps(next_cursor) + b"}"

    return await rt.read(stmt, params, keys=True, then=render)


def _audit(rt) -> audit.Report:
    with rt.db.read() as s:
        return audit.audit(s)


class CheckOut(BaseModel):
    name: str = Field(examples=["account_balances"])
    description: str
    ok: bool
    failures: int = Field(description="How many accounts, instances or entries fail it.")
    examples: list[str] = Field(description="The first few offending ids.")


class AuditOut(BaseModel):
    ok: bool = Field(description="Every check passed.")
    deposits: MoneyOut
    balances: MoneyOut
    reserves: MoneyOut
    charges: MoneyOut
    entries: int = Field(description="Ledger entries checked.")
    checks: list[CheckOut]


@admin.get("/audit", response_model=AuditOut, operation_id="adminAudit")
async def get_audit(request: Request):
    """Re-derive every balance, reserve and total from the ledger, on one snapshot, and report
    what does not match (docs/billing.md, "Checking the books")."""
    rt = request.app.state.rt
    # One audit at a time, aside: it reads the whole ledger (seconds on a large database).
    report = await run_aside(request.app.state, "audits", 1, _audit, rt)
    metrics.AUDIT_OK.set(1 if report.ok else 0)
    for check in report.checks:
        metrics.AUDIT_FAILURES.labels(check.name).set(check.failures)
    return JSON({
        "ok": report.ok, "deposits": from_micro(report.deposits),
        "balances": from_micro(report.balances), "reserves": from_micro(report.reserves),
        "charges": from_micro(report.charges), "entries": report.entries,
        "checks": [{"name": c.name, "description": c.description, "ok": c.ok,
                    "failures": c.failures, "examples": c.examples} for c in report.checks]})
