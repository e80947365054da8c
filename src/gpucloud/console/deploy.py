"""Deploy, in the Fluence console's steps: a plan (from the plans page), the form, a review
with the hourly price and the 3-hour upfront against the balance, then "Deploy".

The review runs the real deploy in a transaction that is rolled back, so whatever the API
would refuse (balance, location, OS image, a plan just taken) is refused before the button.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from gpucloud.accounts import service as accounts
from gpucloud.catalog import plans
from gpucloud.catalog import service as catalog
from gpucloud.console import forms
from gpucloud.console.pages import machine_rows
from gpucloud.console.sessions import Who
from gpucloud.console.web import ConsoleRoute, Posted, by_customer, customer, redirect, render
from gpucloud.errors import PLAN_UNAVAILABLE, APIError, FieldError, NotFound
from gpucloud.instances import service
from gpucloud.instances.schemas import ContainerDeploy, VmDeploy
from gpucloud.money import to_micro

router = APIRouter(route_class=ConsoleRoute)
MACHINES = {"vm": "VM", "baremetal": "Bare metal"}


class _DryRun(Exception):
    """Raised inside the review's transaction so that it rolls back."""


def find_plan(s, plan_id: str) -> dict[str, Any] | None:
    """The plan as the plans page shows it, with what the form needs; None if not deployable.
    The offer's own row says which of the three catalogs to render."""
    try:
        workload = catalog.get_offer(s, plan_id).workload
    except NotFound:
        return None
    for p in plans.container_plans(s) if workload == "container" else []:
        if p["plan"]["id"] == plan_id:
            plan = p["plan"]
            return {"id": plan_id, "workload": "container", "kind": "Container",
                    "gpu": plan["gpu_model"], "gpu_count": plan["supply"]["gpu_count"],
                    "supply": plan["supply"], "hour": plan["pricing"]["hour"],
                    "countries": p["attributes"]["location"], "location": None,
                    "os_options": []}
    if workload in MACHINES:
        kind = MACHINES[workload]
        for o in machine_rows(plans.machine_plans(s, workload)):
            if o["id"] == plan_id:
                return {"id": plan_id, "workload": workload, "kind": kind,
                        "gpu": o["gpu_model"], "gpu_count": o["gpu_count"],
                        "supply": {"vcpu": o["vcpu"], "memory": o["memory"],
                                   "storage": o["storage"]},
                        "hour": o["pricing"]["hour"], "countries": [],
                        "location": o["location"], "os_options": o["os_options"]}
    return None


def _defaults(images: list[dict], preset: str | None) -> dict[str, str]:
    image = next((i for i in images if i["slug"] == preset), images[0] if images else None)
    v = {f: "" for f in forms.CONTAINER_FIELDS + forms.VM_FIELDS}
    v["ports"] = "22/tcp"
    if image is not None:
        v["image"] = image["image"]
        v["ports"] = "\n".join(f"{p['port']}/{p['protocol']}" for p in image["expose"]) or "22/tcp"
        v["env"] = "\n".join(f"{e['name']}={e['value']}" for e in image["environment"])
        v["startup_command"] = image["startup_command"] or ""
    return v


def _form_page(request: Request, who: Who, plan_id: str, v: dict[str, str] | None = None,
               errors: dict[str, list[str]] | None = None, preset: str | None = None):
    rt = request.app.state.rt
    with rt.db.read() as s:
        plan = find_plan(s, plan_id) if plan_id else None
        images = plans.default_images(s)
    if not plan_id:
        return render(request, "deploy_pick.html", who)
    if plan is None:
        return render(request, "deploy_pick.html", who, status_code=400, error=PLAN_UNAVAILABLE)
    if v is None:
        v = _defaults(images, preset)
        if plan["os_options"]:
            v["os_image"] = plan["os_options"][0]
    return render(request, "deploy.html", who, plan=plan, v=v, errors=errors or {},
                  images=images, status_code=400 if errors else 200)


@router.get("/deploy")
def deploy_form(request: Request, who: Who = Depends(customer)):
    q = request.query_params
    return _form_page(request, who, q.get("plan", ""), preset=q.get("preset"))


def _parse(posted: Posted, workload: str) -> tuple[dict[str, str], Any, dict]:
    plan_id = str(posted.form.get("plan") or "")
    if workload == "container":
        v = forms.values(posted.form, forms.CONTAINER_FIELDS)
        try:
            return v, ContainerDeploy.model_validate(forms.container_body(plan_id, v)), {}
        except ValidationError as exc:
            return v, None, forms.from_validation(exc)
    v = forms.values(posted.form, forms.VM_FIELDS)
    try:
        return v, VmDeploy.model_validate(forms.vm_body(plan_id, v)), {}
    except ValidationError as exc:
        return v, None, forms.from_validation(exc)


def _attempt(rt, who: Who, workload: str, body: Any, commit: bool) -> str:
    try:
        with rt.db.write() as s:
            now = rt.clock.now()
            if workload == "container":
                inst = service.deploy_container(s, rt, who.account_id, body, now)
            else:
                inst = service.deploy_vm(s, rt, who.account_id, workload, body, now)
            instance_id = inst.id
            if not commit:
                raise _DryRun()
    except _DryRun:  # rolled back: the deploy's after-commit effects were dropped with it
        return instance_id
    return instance_id


def _step(request: Request, posted: Posted, commit: bool):
    rt = request.app.state.rt
    plan_id = str(posted.form.get("plan") or "")
    with rt.db.read() as s:
        plan = find_plan(s, plan_id)
        money = accounts.money_summary(s, posted.who.account_id)
    if plan is None:
        return render(request, "deploy_pick.html", posted.who, status_code=400,
                      error=PLAN_UNAVAILABLE)
    v, body, errors = _parse(posted, plan["workload"])
    if body is not None:
        try:
            instance_id = _attempt(rt, posted.who, plan["workload"], body, commit)
        except (APIError, FieldError) as exc:
            errors = forms.from_service(exc)
        else:
            if commit:
                return redirect(f"/console/instances/{instance_id}")
            upfront = to_micro(plan["hour"]) * plans.UPFRONT_HOURS
            return render(request, "review.html", posted.who, plan=plan, v=v, money=money,
                          upfront=upfront, after=money["balance"] - upfront)
    return _form_page(request, posted.who, plan_id, v=v, errors=errors)


@router.post("/deploy/review")
def review(request: Request, posted: Posted = Depends(by_customer)):
    return _step(request, posted, commit=False)


@router.post("/deploy")
def deploy(request: Request, posted: Posted = Depends(by_customer)):
    return _step(request, posted, commit=True)


@router.post("/deploy/edit")
def edit(request: Request, posted: Posted = Depends(by_customer)):
    """'Change' on the review page: the form again, with what was typed."""
    fields = forms.CONTAINER_FIELDS + forms.VM_FIELDS
    return _form_page(request, posted.who, str(posted.form.get("plan") or ""),
                      v=forms.values(posted.form, fields))
