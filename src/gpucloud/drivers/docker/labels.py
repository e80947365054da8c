"""Labels that make gpucloud's containers findable on an engine, and what they encode.

Every container carries `gpucloud.managed=true`, `gpucloud.provider=<provider id>`,
`gpucloud.instance=<instance id>`, `gpucloud.generation=<config generation>`,
`gpucloud.since=<epoch of the instance's first container>` and
`gpucloud.expose=<80/http=30000,...>`; with GPUs also `gpucloud.gpus=<device,...>`.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
import time

from gpucloud.drivers.base import ForwardedPort

L_MANAGED, L_PROVIDER, L_INSTANCE = "gpucloud.managed", "gpucloud.provider", "gpucloud.instance"
L_GENERATION, L_EXPOSE, L_GPUS = "gpucloud.generation", "gpucloud.expose", "gpucloud.gpus"
# When the instance's first container was made (epoch seconds): carried over to replacements
# so /events still finds the engine's events of containers an update removed.
L_SINCE = "gpucloud.since"
FIRST_GENERATION = 1  # the control plane numbers container configs from 1
MAX_NOTES = 50
# catatonit: "failed to exec pid1: No such file…"; tini: "exec /x failed: No such file…".
EXEC_FAILED = re.compile(r"failed to exec|exec .* failed", re.IGNORECASE)


def container_name(instance_id: str) -> str:
    return f"gpucloud-{instance_id}"


def generation_of(container) -> int:
    try:
        return int(container.labels.get(L_GENERATION, "0"))
    except ValueError:
        return 0


def command_args(startup_command: str) -> list[str]:
    """Split like a shell would (as `docker run IMAGE cmd…` and compose do); the image's
    ENTRYPOINT stays. Unbalanced quotes: let a shell make sense of it."""
    try:
        return shlex.split(startup_command)
    except ValueError:
        return ["/bin/sh", "-c", startup_command]


def forwarded_ports(label: str) -> list[ForwardedPort]:
    out = []
    for item in filter(None, label.split(",")):
        inner, _, host = item.partition("=")
        port, _, proto = inner.partition("/")
        out.append(ForwardedPort(port=int(port), external_port=int(host), protocol=proto))
    return out


def since_of(container) -> int:
    label = container.labels.get(L_SINCE, "")
    if label.isdigit():
        return int(label)
    created = container.attrs.get("Created")
    return int(parse_ts(created).timestamp()) - 1 if created else int(time.time()) - 3600


def parse_ts(value: str) -> dt.datetime:
    # Engines give RFC 3339 with nanoseconds; Python wants at most microseconds.
    head, _, frac = value.rstrip("Z").partition(".")
    frac = "".join(ch for ch in frac if ch.isdigit())[:6]
    base = dt.datetime.fromisoformat(head + (f".{frac}" if frac else ""))
    if base.tzinfo is None:
        base = base.replace(tzinfo=dt.UTC)
    return base
