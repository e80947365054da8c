"""Engine events → readable lines for `/events`.

Docker and Podman both serve `GET /events` with `since`/`until` (so the stream ends) and label
filters; their attribute names differ slightly (Docker `exitCode`, Podman `containerExitCode`).
Bookkeeping noise (init, cleanup, attach, exec, mounts, the rename that ends an update) is
dropped: a customer wants to read what happened to their container, not every runtime call.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from gpucloud.drivers.base import DriverEvent

_CONTAINER = {
    "create": "{who} created from image {image}",
    "start": "{who} started",
    "restart": "{who} restarted",
    "stop": "{who} stopped",
    "pause": "{who} paused",
    "unpause": "{who} resumed",
    "oom": "{who} ran out of memory (OOM killed)",
    "destroy": "{who} removed",
    "remove": "{who} removed",
}
_IMAGE = {"pull": "Image {name} pulled"}


def event_time(event: dict[str, Any]) -> dt.datetime:
    nanos = event.get("timeNano")
    if nanos:
        return dt.datetime.fromtimestamp(int(nanos) / 1e9, dt.UTC)
    return dt.datetime.fromtimestamp(int(event.get("time", 0)), dt.UTC)


def _who(name: str, instance_id: str | None) -> str:
    """The customer knows which instance this is: `gpucloud-<id>` reads as "Container", and
    an update's replacement (`gpucloud-<id>-g3`) as "Container (config 3)"."""
    if instance_id:
        base = f"gpucloud-{instance_id}"
        if name == base:
            return "Container"
        if name.startswith(base + "-g"):
            return f"Container (config {name[len(base) + 2 :]})"
    return f"Container {name}"


def describe(event: dict[str, Any], instance_id: str | None = None) -> str | None:
    """One readable line, or None for events not worth showing."""
    kind = (event.get("Type") or "").lower()
    action = (event.get("Action") or event.get("status") or "").split(":")[0].lower()
    attrs = (event.get("Actor") or {}).get("Attributes") or {}
    name = attrs.get("name") or (event.get("id") or "")[:12]
    who = _who(name, instance_id)
    if kind == "image":
        template = _IMAGE.get(action)
        return template.format(name=name) if template else None
    if kind != "container":
        return None
    if action == "die":
        code = attrs.get("exitCode", attrs.get("containerExitCode"))
        return f"{who} exited with code {code}" if code is not None else f"{who} exited"
    if action == "kill":
        signal = attrs.get("signal")
        return f"{who} killed (signal {signal})" if signal else f"{who} killed"
    if action == "health_status":
        return f"{who} health: {event.get('status', '').split(':')[-1].strip()}"
    template = _CONTAINER.get(action)
    if template is None:
        return None
    return template.format(who=who, name=name, image=attrs.get("image") or event.get("from") or "?")


def to_driver_events(
    raw: list[dict[str, Any]], instance_id: str | None = None
) -> list[DriverEvent]:
    out = []
    for event in raw:
        line = describe(event, instance_id)
        if line is not None:
            out.append(DriverEvent(at=event_time(event), message=line))
    out.sort(key=lambda e: e.at)
    return out
