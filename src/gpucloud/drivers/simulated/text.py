"""Realistic log and event lines for simulated workloads, derived from their stored timestamps.

Nothing here is stored: the same row gives the same lines in every process, and new lines
appear only as the server clock moves past their timestamps.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from gpucloud.drivers.simulated.models import SimWorkload

HEARTBEAT = dt.timedelta(minutes=10)


def _at(base: dt.datetime, seconds: float) -> dt.datetime:
    return base + dt.timedelta(seconds=seconds)


def seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "big")


def events(row: SimWorkload) -> list[tuple[dt.datetime, str]]:
    cfg = row.config
    created, ready = row.created_at, row.ready_at
    span = (ready - created).total_seconds()
    name, node = cfg["name"], cfg["node"]
    out = [(created, f"Scheduling workload on node {node}")]
    if cfg["workload"] == "container":
        image = cfg["image"]
        out.append((_at(created, span * 0.1), f'Pulling image "{image}"'))
        if cfg.get("fail"):
            out.append((ready, f'Failed to pull image "{image}": {cfg["fail"]}'))
            out.append((ready, f"Error: ImagePullBackOff; giving up on container {name}"))
        else:
            out.append((_at(created, span * 0.7),
                        f'Successfully pulled image "{image}" in {span * 0.6:.1f}s'))
            out.append((_at(created, span * 0.85), f"Created container {name}"))
            out.append((ready, f"Started container {name}"))
    else:
        out.append((_at(created, span * 0.1), f"Allocating {cfg['gpu']} on node {node}"))
        out.append((_at(created, span * 0.4), f'Provisioning disk from image "{cfg["os_image"]}"'))
        if cfg.get("fail"):
            out.append((ready, f"Failed to boot machine: {cfg['fail']}"))
        else:
            out.append((_at(created, span * 0.8), "Machine powered on"))
            out.append((ready, "cloud-init finished; SSH is reachable"))
    for change in cfg.get("history", []):
        at = dt.datetime.fromisoformat(change["at"])
        out += [(at, f"Stopping container {name} (update to generation {change['generation']})"),
                (at, f"Stopped container {name}"),
                (at, f'Pulling image "{change["image"]}"'),
                (at, f'Successfully pulled image "{change["image"]}" in 1.4s'),
                (at, f"Created container {change['name']}"),
                (at, f"Started container {change['name']}")]
        name = change["name"]
    if row.lost_at is not None:
        out.append((row.lost_at, f"Node {node} stopped responding; workload lost"))
    if row.deleted_at is not None and (row.lost_at is None or row.deleted_at < row.lost_at):
        if cfg["workload"] == "container":
            out += [(row.deleted_at, f"Stopping container {name}"),
                    (row.deleted_at, f"Killed container {name}"),
                    (row.deleted_at, f"Removed container {name}")]
        else:
            out += [(row.deleted_at, "Machine powered off"), (row.deleted_at, "Disk wiped")]
    out.sort(key=lambda e: e[0])  # stable: same-instant lines keep their causal order
    return out


def _boot(cfg: dict[str, Any], image: str, env_names: list[str], command: str | None,
          at: dt.datetime) -> list[tuple[dt.datetime, str]]:
    lines = [f"Starting container from {image}",
             f"NVIDIA driver 550.54.15, CUDA 12.4: {cfg['gpu']} visible"]
    if "SSH_PUBKEY" in env_names:
        lines.append("Installed SSH public key from SSH_PUBKEY into /root/.ssh/authorized_keys")
    for p in cfg.get("expose", []):
        if p["port"] == 22:
            lines.append("sshd listening on 0.0.0.0 port 22")
        elif p["protocol"] == "http":
            lines.append(f"HTTP server listening on 0.0.0.0:{p['port']}")
        else:
            lines.append(f"Listening on 0.0.0.0:{p['port']}/{p['protocol']}")
    if command:
        lines.append(f"+ {command}")
    return [(at, line) for line in lines]


def _vm_boot(cfg: dict[str, Any], at: dt.datetime) -> list[tuple[dt.datetime, str]]:
    lines = [f"Booting {cfg['os_image']}", f"NVIDIA driver 550.54.15: {cfg['gpu']} visible",
             "cloud-init: added SSH key for user ubuntu", "sshd listening on 0.0.0.0 port 22"]
    return [(at, line) for line in lines]


def logs(row: SimWorkload, now: dt.datetime, max_heartbeats: int) -> list[tuple[dt.datetime, str]]:
    cfg = row.config
    if now < row.ready_at or cfg.get("fail"):
        return []
    end = min(t for t in (now, row.lost_at, row.deleted_at) if t is not None)
    if cfg["workload"] != "container":
        out = _vm_boot(cfg, row.ready_at)
    else:
        first = cfg.get("initial") or cfg  # the config before any update
        out = _boot(cfg, first["image"], first["env_names"], first["startup_command"],
                    row.ready_at)
        for change in cfg.get("history", []):
            at = dt.datetime.fromisoformat(change["at"])
            out.append((at, "Received SIGTERM, shutting down"))
            out += _boot(cfg, change["image"], change["env_names"], change["startup_command"], at)
    out = [(at, line) for at, line in out if at <= end]
    beats = int((end - row.ready_at) / HEARTBEAT)
    for n in range(max(1, beats - max_heartbeats + 1), beats + 1):
        s = seed(row.instance_id, n)
        out.append((row.ready_at + n * HEARTBEAT,
                    f"heartbeat: up {n * 10}m, gpu util {s % 97}%, gpu mem {(s >> 8) % 90 + 5}%"))
    if row.deleted_at is not None and row.deleted_at <= now and row.deleted_at == end:
        out.append((end, "Received SIGTERM, shutting down"))
    out.sort(key=lambda e: e[0])
    return out

