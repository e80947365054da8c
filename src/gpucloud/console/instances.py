"""Instances: one list with live status, a page per instance (connect, billing, logs and
events that follow, update or rename, terminate with a confirmation).

Live parts are htmx polls of small fragments; a fragment stops asking once there is nothing
left to change (an ENDED or FAILED instance), so idle tabs cost nothing.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from gpucloud.console import forms
from gpucloud.console.sessions import Who
from gpucloud.console.web import (
    ConsoleRoute,
    Posted,
    by_customer,
    customer,
    fragment,
    redirect,
    render,
)
from gpucloud.errors import APIError, BadRequest, FieldError
from gpucloud.instances import events as instance_events
from gpucloud.instances import feed, service, transitions, views
from gpucloud.instances.models import ENDED, FAILED
from gpucloud.instances.schemas import ContainerUpdate, VmRename
from gpucloud.jsonresp import stamped

router = APIRouter(route_class=ConsoleRoute)

WORKLOADS = ("container", "vm", "baremetal")
FINAL = (ENDED, FAILED)
FEED_LINES = 200
DONE = {"update": "Update requested: the container is redeployed with the new settings.",
        "rename": "Renamed.", "terminated": "Terminated: the unspent reserve is back in your "
        "balance."}


def _rows(rt, account_id: str) -> list[Any]:
    with rt.db.read() as s:
        return service.list_summaries(s, account_id)


@router.get("/instances")
def instances_page(request: Request, who: Who = Depends(customer)):
    rows = _rows(request.app.state.rt, who.account_id)
    return render(request, "instances.html", who, rows=rows)


@router.get("/instances/rows")
def instances_rows(request: Request, who: Who = Depends(customer)):
    rows = _rows(request.app.state.rt, who.account_id)
    return fragment(request, "_instance_rows.html", rows=rows)


def _details(rt, account_id: str, instance_id: str) -> tuple[Any, dict[str, Any]]:
    with rt.db.read() as s:
        inst = service.get_owned(s, account_id, instance_id, WORKLOADS)
    if inst.workload == "container":
        details = views.container_details(inst)
        details["ssh_connection"] = _container_ssh(details)
    else:
        details = views.vm_details(inst)
    details["workload"] = inst.workload
    details["status"] = inst.status  # containers call it instance_status in the API
    details["updating"] = inst.pending_update is not None
    return inst, details


def _container_ssh(details: dict[str, Any]) -> str | None:
    """Containers have no ssh_connection field in the API; the forwarded port 22 is it."""
    net = details.get("network") or {}
    for p in net.get("forwarded_ports") or []:
        if str(p["port"]) == "22" and net.get("domain"):
            return f"ssh -p {p['external_port']} root@{net['domain']}"
    return None


def _update_values(inst: Any) -> dict[str, str]:
    config = inst.container or {}
    env = [e for e in config.get("environment", []) if e["name"] != service.SSH_ENV]
    return {"name": inst.name, "image": config.get("image") or "",
            "env": "\n".join(f"{e['name']}={e['value']}" for e in env),
            "startup_command": config.get("startup_command") or "",
            "ssh_key": inst.ssh_key or "", "reg_host": "", "reg_username": "",
            "reg_password": ""}


def _page(request: Request, who: Who, instance_id: str, v: dict[str, str] | None = None,
          errors: dict[str, list[str]] | None = None):
    inst, d = _details(request.app.state.rt, who.account_id, instance_id)
    done = DONE.get(request.query_params.get("done", ""))
    return render(request, "instance.html", who, i=d, v=v or _update_values(inst),
                  errors=errors or {}, done=done, final=d["status"] in FINAL,
                  status_code=400 if errors else 200)


@router.get("/instances/{instance_id}")
def instance_page(instance_id: str, request: Request, who: Who = Depends(customer)):
    return _page(request, who, instance_id)


@router.get("/instances/{instance_id}/live")
def instance_live(instance_id: str, request: Request, who: Who = Depends(customer)):
    _, d = _details(request.app.state.rt, who.account_id, instance_id)
    return fragment(request, "_instance_live.html", i=d, final=d["status"] in FINAL)


@router.get("/instances/{instance_id}/feed/{which}")
async def instance_feed(instance_id: str, which: str, request: Request,
                        who: Who = Depends(customer)):
    # Async like the API's logs/events: the provider is awaited through the driver-call pool,
    # so a hung provider holds no request thread; the database is read in the threadpool.
    rt = request.app.state.rt
    follow = request.query_params.get("follow", "1") == "1"
    _, d = await run_in_threadpool(_details, rt, who.account_id, instance_id)
    error = None
    lines: list[str] = []
    try:
        if d["workload"] != "container":
            # VMs have no provider log; their lifecycle is ours
            lines = (await run_in_threadpool(_own_lines, rt, instance_id))[-FEED_LINES:]
        elif which == "logs":
            lines = await feed.logs(rt, who.account_id, instance_id, FEED_LINES)
        else:
            lines = await feed.events(rt, who.account_id, instance_id, FEED_LINES)
    except APIError as exc:
        error = exc.detail
    return fragment(request, "_feed.html", i=d, which="logs" if which == "logs" else "events",
                    lines=lines, error=error, follow=follow and d["status"] not in FINAL)


def _own_lines(rt, instance_id: str) -> list[str]:
    with rt.db.read() as s:
        return stamped(instance_events.for_instance(s, instance_id))


def _change(rt, who: Who, instance_id: str, apply) -> None:
    with rt.db.write() as s:
        inst = service.get_owned(s, who.account_id, instance_id, WORKLOADS, for_update=True)
        apply(s, inst, rt.clock.now())  # its cache and worker effects run after commit


@router.post("/instances/{instance_id}/update")
def update(instance_id: str, request: Request, posted: Posted = Depends(by_customer)):
    rt = request.app.state.rt
    v = forms.values(posted.form, forms.UPDATE_FIELDS)
    try:
        body = ContainerUpdate.model_validate(forms.update_body(v))

        def apply(s, inst, now) -> None:
            if inst.workload != "container":
                raise BadRequest("Only containers can be updated; rename a VM instead")
            service.request_update(s, rt, inst, body, now)

        _change(rt, posted.who, instance_id, apply)
    except ValidationError as exc:
        return _page(request, posted.who, instance_id, v, forms.from_validation(exc))
    except (FieldError, APIError) as exc:
        if getattr(exc, "status_code", 400) == 404:
            raise
        return _page(request, posted.who, instance_id, v, forms.from_service(exc))
    return redirect(f"/console/instances/{instance_id}?done=update")


@router.post("/instances/{instance_id}/rename")
def rename(instance_id: str, request: Request, posted: Posted = Depends(by_customer)):
    rt = request.app.state.rt
    name = str(posted.form.get("name") or "").strip()
    try:
        body = VmRename.model_validate({"name": name})
        _change(rt, posted.who, instance_id,
                lambda s, inst, now: service.rename(inst, body.name, now))
    except ValidationError as exc:
        return _page(request, posted.who, instance_id, {"name": name},
                     forms.from_validation(exc))
    return redirect(f"/console/instances/{instance_id}?done=rename")


@router.get("/instances/{instance_id}/terminate")
def terminate_confirm(instance_id: str, request: Request, who: Who = Depends(customer)):
    _, d = _details(request.app.state.rt, who.account_id, instance_id)
    return render(request, "terminate.html", who, i=d)


@router.post("/instances/{instance_id}/terminate")
def terminate(instance_id: str, request: Request, posted: Posted = Depends(by_customer)):
    rt = request.app.state.rt
    try:
        _change(rt, posted.who, instance_id, transitions.terminate)
    except APIError as exc:
        if exc.status_code == 404:
            raise
        _, d = _details(rt, posted.who.account_id, instance_id)
        return render(request, "terminate.html", posted.who, i=d, error=exc.detail,
                      status_code=400)
    return redirect(f"/console/instances/{instance_id}?done=terminated")
