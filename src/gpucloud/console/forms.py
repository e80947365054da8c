"""Deploy and update forms ↔ the API's request bodies, and the API's errors back onto fields.

The console validates with the very models the API uses (`ContainerDeploy`, `VmDeploy`, …)
and calls the same services, so a rule breached in the browser yields the same words as a
422 or 400 from the API; this module only decides which form field a message belongs to.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.datastructures import FormData

from gpucloud.errors import APIError, FieldError

CONTAINER_FIELDS = ("name", "image", "ports", "env", "startup_command", "ssh_key", "location",
                    "reg_host", "reg_username", "reg_password")
VM_FIELDS = ("name", "os_image", "ssh_key")
UPDATE_FIELDS = ("name", "image", "env", "startup_command", "ssh_key", "reg_host",
                 "reg_username", "reg_password")


def values(form: FormData, fields: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for f in fields:
        v = form.get(f)
        out[f] = v.replace("\r\n", "\n") if isinstance(v, str) else ""
    return out


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


def ports(text: str) -> list[dict[str, str]]:
    """'22', '22/tcp', '80/http' per line → [{port, protocol}] (tcp when none is given)."""
    out = []
    for line in _lines(text):
        port, _, protocol = line.partition("/")
        out.append({"port": port.strip(), "protocol": protocol.strip().lower() or "tcp"})
    return out


def environment(text: str) -> list[dict[str, str]]:
    out = []
    for line in _lines(text):
        name, _, value = line.partition("=")
        out.append({"name": name.strip(), "value": value.strip()})
    return out


def _settings(v: dict[str, str]) -> dict[str, Any]:
    settings: dict[str, Any] = {"image": v["image"].strip()}
    env = environment(v["env"])
    if env:
        settings["environment"] = env
    if v["startup_command"].strip():
        settings["startup_command"] = v["startup_command"].strip()
    if v["reg_host"]:
        settings["credentials"] = {"host": v["reg_host"], "username": v["reg_username"],
                                   "password": v["reg_password"]}
    return settings


def container_body(plan_id: str, v: dict[str, str]) -> dict[str, Any]:
    settings = _settings(v)
    settings["expose"] = ports(v["ports"])
    body: dict[str, Any] = {"plan_id": plan_id, "name": v["name"].strip(),
                            "container_settings": settings}
    if v["location"]:
        body["constraints"] = {"location": v["location"]}
    if v["ssh_key"].strip():
        body["ssh_key"] = v["ssh_key"].strip()
    return body


def update_body(v: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = {"name": v["name"].strip(), "container_settings": _settings(v)}
    if v["ssh_key"].strip():
        body["ssh_key"] = v["ssh_key"].strip()
    return body


def vm_body(plan_id: str, v: dict[str, str]) -> dict[str, Any]:
    return {"plan_id": plan_id, "name": v["name"].strip(), "ssh_key": v["ssh_key"].strip(),
            "os_image": v["os_image"]}


# --- errors → fields ------------------------------------------------------------------------

_SETTINGS_FIELDS = {"image": "image", "expose": "ports", "environment": "env",
                    "startup_command": "startup_command"}
_CREDENTIAL_FIELDS = {"host": "reg_host", "username": "reg_username", "password": "reg_password"}


def field_of(loc: tuple | list) -> tuple[str, str]:
    """(form field, context prefix) for an error location of the API's request body."""
    loc = [p for p in loc if p != "body"]
    if not loc:
        return "form", ""
    head = loc[0]
    if head == "container_settings" and len(loc) > 1:
        part = loc[1]
        if part == "credentials":
            return _CREDENTIAL_FIELDS.get(loc[2] if len(loc) > 2 else "host", "reg_host"), ""
        field = _SETTINGS_FIELDS.get(str(part), "form")
        if field in ("ports", "env") and len(loc) > 2 and isinstance(loc[2], int):
            return field, f"line {loc[2] + 1}: "
        return field, ""
    if head == "constraints":
        return "location", ""
    if head == "plan_id":
        return "plan", ""
    return {"name": "name", "ssh_key": "ssh_key", "os_image": "os_image"}.get(str(head),
                                                                               "form"), ""


def _add(errors: dict[str, list[str]], loc, msg: str) -> None:
    field, prefix = field_of(loc)
    errors.setdefault(field, []).append(prefix + msg)


def from_validation(exc: ValidationError) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for err in exc.errors():
        _add(errors, err["loc"], err["msg"])
    return errors


def from_service(exc: APIError | FieldError) -> dict[str, list[str]]:
    """A 400 names no field; its words say which one it is about."""
    errors: dict[str, list[str]] = {}
    if isinstance(exc, FieldError):
        for err in exc.errors:
            _add(errors, err["loc"], err["msg"])
        return errors
    text = exc.detail
    if text.startswith("Location "):
        field = "location"
    elif text.startswith("Provided OS image"):
        field = "os_image"
    elif "already being applied" in text or "still being applied" in text:
        field = "form"
    else:  # balance, plan gone: about the plan as a whole
        field = "plan"
    errors[field] = [text]
    return errors
