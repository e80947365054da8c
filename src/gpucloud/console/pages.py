"""Customer pages that only read: home, plans, account."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from gpucloud.accounts import service as accounts
from gpucloud.billing import service as billing
from gpucloud.catalog import plans
from gpucloud.console import charts
from gpucloud.console.sessions import Who
from gpucloud.console.web import ConsoleRoute, customer, render
from gpucloud.errors import FieldError
from gpucloud.instances import service as instances

router = APIRouter(route_class=ConsoleRoute)

KINDS = {"containers": "Containers", "vms": "Virtual machines", "baremetal": "Bare metal"}
FILTERS = ("gpu_model", "gpu_count", "location", "max_price")
LEDGER_PAGE = 20


@router.get("/")
def home(request: Request, who: Who = Depends(customer)):
    rt = request.app.state.rt
    with rt.db.read() as s:
        money = accounts.money_summary(s, who.account_id)
        counts: dict[str, int] = {}
        for (_, status), n in instances.status_counts(s, who.account_id).items():
            counts[status] = counts.get(status, 0) + n
    return render(request, "home.html", who, money=money, counts=counts)


def _filters(request: Request) -> tuple[dict[str, str], plans.PlanFilters | None, dict]:
    raw = {k: request.query_params.get(k, "").strip() for k in FILTERS}
    given = {k: v for k, v in raw.items() if v}
    try:
        return raw, plans.PlanFilters.model_validate(given) if given else None, {}
    except ValidationError as exc:
        return raw, None, {str(e["loc"][0]): e["msg"] for e in exc.errors()}


def machine_rows(data: dict) -> list[dict]:
    """VM/bare-metal options out of their GPU-model groups, cheapest first."""
    rows = []
    for group in data["data"]:
        for by_count in group["availability_by_number"]:
            for option in by_count["options"]:
                rows.append({"gpu_model": group["gpu_model"], "gpu_count": by_count["gpu_count"],
                             **option})
    rows.sort(key=lambda r: (r["pricing"]["hour"], r["id"]))
    return rows


@router.get("/plans")
def plans_page(request: Request, who: Who = Depends(customer)):
    rt = request.app.state.rt
    kind = request.query_params.get("kind", "containers")
    if kind not in KINDS:
        kind = "containers"
    raw, filters, errors = _filters(request)
    with rt.db.read() as s:
        if kind == "containers":
            everything = plans.container_plans(s)
            rows = [] if errors else everything if filters is None \
                else plans.container_plans(s, filters)
            models = sorted({p["plan"]["gpu_model"]["model"] for p in everything})
            locations = sorted({c for p in everything for c in p["attributes"]["location"]})
        else:
            workload = "vm" if kind == "vms" else "baremetal"
            everything = machine_rows(plans.machine_plans(s, workload))
            rows = [] if errors else everything if filters is None \
                else machine_rows(plans.machine_plans(s, workload, filters))
            models = sorted({r["gpu_model"]["model"] for r in everything})
            locations = sorted({r["location"] for r in everything})
    return render(request, "plans.html", who, kind=kind, kinds=KINDS, rows=rows, raw=raw,
                  errors=errors, models=models, locations=locations)


@router.get("/account")
def account_page(request: Request, who: Who = Depends(customer)):
    rt = request.app.state.rt
    cursor = request.query_params.get("cursor") or None
    today = rt.clock.now().date()
    since = dt.datetime.combine(today - dt.timedelta(days=13), dt.time(),
                                tzinfo=dt.timezone.utc)
    with rt.db.read() as s:
        money = accounts.money_summary(s, who.account_id)
        try:
            entries, next_cursor = billing.transactions(s, who.account_id, LEDGER_PAGE, cursor)
        except FieldError:
            entries, next_cursor = billing.transactions(s, who.account_id, LEDGER_PAGE, None)
            cursor = None
        per_day = billing.spend_per_day(s, who.account_id, since)
    bars = charts.spend_bars(per_day, today)
    return render(request, "account.html", who, money=money, entries=entries,
                  next_cursor=next_cursor, first_page=cursor is None, bars=bars,
                  chart=charts, total_14d=sum(b.micro for b in bars))
