"""Engine events → readable lines for `/events`.

Docker and Podman both serve `GET /events` with `since`/`until` (so the stream ends) and label
filters; their attribute names differ slightly (Docker `exitCode`, Podman `containerExitCode`).
Bookkeeping noise (init, cleanup, attach, exec, mounts) is dropped: a customer wants to read
what happened to their container, not every runtime call.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from gpucloud.drivers.base import DriverEvent

_CONTAINER = {
    "create": "Container {name} created from image {image}",
    "start": "Container {name} started",
    "restart": "Container {name} restarted",
    "stop": "Container {name} stopped",
    "pause": "Container {name} paused",
    "unpause": "Container {name} resumed",
    "oom": "Container {name} ran out of memory (OOM killed)",
    "destroy": "Container {name} removed",
    "remove": "Container {name} removed",
    "rename": "Container renamed to {name}",
}
_IMAGE = {"pull": "Image {name} pulled"}


def event_time(event: dict[str, Any]) -> dt.datetime:
    nanos = event.get("timeNano")
    if nanos:
        return dt.datetime.fromtimestamp(int(nanos) / 1e9, dt.UTC)
    return dt.datetime.fromtimestamp(int(event.get("time", 0)), dt.UTC)


def describe(event: dict[str, Any]) -> str | None:
    """One readable line, or None for events not worth showing."""
    kind = (event.get("Type") or "").lower()
    action = (event.get("Action") or event.get("status") or "").split(":")[0].lower()
    attrs = (event.get("Actor") or {}).get("Attributes") or {}
    name = attrs.get("name") or (event.get("id") or "")[:12]
    if kind == "image":
        template = _IMAGE.get(action)
        return template.format(name=name) if template else None
    if kind != "container":
        return None
    if action == "die":
        code = attrs.get("exitCode", attrs.get("containerExitCode"))
        return f"Container {name} exited with code {code}" if code is not None \
            else f"Container {name} exited"
    if action == "kill":
        signal = attrs.get("signal")
        return f"Container {name} killed (signal {signal})" if signal \
            else f"Container {name} killed"
    if action == "health_status":
        return f"Container {name} health: {event.get('status', '').split(':')[-1].strip()}"
    template = _CONTAINER.get(action)
    if template is None:
        return None
    return template.format(name=name, image=attrs.get("image") or event.get("from") or "?")


def to_driver_events(raw: list[dict[str, Any]]) -> list[DriverEvent]:
    out = []
    for event in raw:
        line = describe(event)
        if line is not None:
            out.append(DriverEvent(at=event_time(event), message=line))
    out.sort(key=lambda e: e.at)
    return out
