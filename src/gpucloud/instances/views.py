"""Instance rows → the public JSON shapes (SPEC §3, §4).

Works on anything with the Instance attributes (an ORM object or a Core row), so the hot
routes build their answers from one plain SELECT without loading ORM objects. Timestamps stay
datetimes: `jsonresp.dumps` writes them (UTC, whole seconds, "Z") in C.
"""

from __future__ import annotations

from typing import Any

import orjson

from gpucloud.common import port_out
from gpucloud.instances.models import ACTIVE
from gpucloud.jsonresp import RenderedRows, dumps
from gpucloud.money import from_micro

ZERO = from_micro(0)


def resources(snapshot: dict[str, Any]) -> dict[str, Any]:
    """An instance's resources as the Fluence docs show them: the GPU interface in lower case
    (`"sxm"`), while container plans show it upper case (catalog.service.gpu_json)."""
    gpu = snapshot["gpu_model"]
    return {"supply": snapshot["supply"],
            "gpu_model": {**gpu, "interface": str(gpu.get("interface") or "").lower()}}


def _base(i: Any) -> dict[str, Any]:
    active = i.status == ACTIVE
    return {
        "id": i.id,
        "name": i.name,
        "resources": resources(i.resources),
        "domain": i.domain if active else None,
        "location": i.location,
        "created_at": i.created_at,
        "updated_at": i.updated_at,
    }


def container_item(i: Any) -> dict[str, Any]:
    out = _base(i)
    out["instance_status"] = i.status
    return out


def vm_item(i: Any) -> dict[str, Any]:
    out = _base(i)
    out["status"] = i.status
    return out


_LIST_ITEMS = RenderedRows()


def list_body(conn, stmt, keys: list) -> bytes:
    """GET /gpu/instances/, /vms, /baremetal: the JSON array of the account's instances of one
    workload (`keys`: what `rt.read(service.LIST_RAW, …, keys=True)` gave; `conn`: the
    `Reader` that converts them), each item rendered once per distinct row."""

    def render(raw) -> bytes:
        row = conn.convert(stmt, raw)
        row = row._replace(resources=orjson.loads(row.resources))
        return dumps(container_item(row) if row.workload == "container" else vm_item(row))

    return _LIST_ITEMS.join(keys, render)


# Details are polled (a console, a script waiting for ACTIVE): each distinct row is rendered
# once, as the list items are. Fewer than the list's: a details row is several times larger.
_DETAILS = RenderedRows(size=10_000)


def _json(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def details_body(conn, stmt, raw) -> bytes:
    """GET /gpu/instances/{id} and the VM and bare-metal details: the JSON of one raw row of
    `stmt` (service.DETAILS_RAW), rendered once per distinct row."""

    def render(raw) -> bytes:
        row = conn.convert(stmt, raw)
        row = row._replace(resources=_json(row.resources), container=_json(row.container),
                           network=_json(row.network))
        return dumps(container_details(row) if row.workload == "container" else vm_details(row))

    return _DETAILS.one(raw, render)


def billing(i: Any) -> dict[str, Any]:
    active = i.status == ACTIVE
    return {
        "hourly_usage": from_micro(i.price_hour) if active else ZERO,
        "total_spendings": from_micro(i.spent),
        "reserved_amount": from_micro(i.reserve),
        "next_billing_period": i.billed_until if active and i.billed_until else None,
    }


def container_info(config: dict[str, Any] | None) -> dict[str, Any]:
    config = config or {}
    return {
        "image": config.get("image"),
        "expose": [port_out(p) for p in config.get("expose", [])],
        "environment": [{"name": e["name"], "value": e["value"]}
                        for e in config.get("environment", [])],
        "startup_command": config.get("startup_command"),
    }


def _network(i: Any, with_ports: bool) -> dict[str, Any] | None:
    if i.status != ACTIVE:
        return None
    net = i.network or {}
    return {
        "domain": i.domain,
        "forwarded_ports": [port_out(p) for p in net.get("forwarded_ports", [])]
        if with_ports else [],
        "uri": net.get("uri") if with_ports else None,
    }


def container_details(i: Any) -> dict[str, Any]:
    out = container_item(i)
    out["container_status"] = "STARTED" if i.status == ACTIVE and i.container_started \
        else "NOT_STARTED"
    out["container_info"] = container_info(i.container)
    out["billing"] = billing(i)
    out["network"] = _network(i, with_ports=True)
    return out


def ssh_connection(i: Any) -> str | None:
    if i.status != ACTIVE:
        return None
    ssh = (i.network or {}).get("ssh")
    if not ssh:
        return None
    user, host, port = ssh.get("user") or "root", ssh.get("host") or i.domain, ssh.get("port") or 22
    return f"ssh {user}@{host}" if port == 22 else f"ssh -p {port} {user}@{host}"


def vm_details(i: Any) -> dict[str, Any]:
    out = vm_item(i)
    out["availability"] = i.workload
    out["os_image"] = i.os_image
    out["ssh_connection"] = ssh_connection(i)
    out["billing"] = billing(i)
    out["network"] = _network(i, with_ports=False)
    out["ssh_key"] = i.ssh_key
    return out
