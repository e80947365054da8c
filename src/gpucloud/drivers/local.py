"""What this machine offers the `local` provider: a Docker or Podman engine that answers, and
its NVIDIA GPUs. The catalog side (catalog/local_provider.py) turns that into a provider and
plans; this module knows nothing of the catalog."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from gpucloud.drivers.base import DriverError
from gpucloud.drivers.docker.config import parse_config
from gpucloud.drivers.docker.engine import Engine

log = logging.getLogger("gpucloud")

# A busy Podman takes over a second to answer /version, and on a loaded two-core machine
# (the test suite's guests booting beside it) it was seen to take more than 5 s: the server
# then started without the local provider. A socket nobody listens on is refused at once,
# so the wait is only ever spent on an engine that is there but slow.
PING_TIMEOUT = 15.0


def candidate_engines() -> list[str]:
    """Engine URLs to try, most explicit first. DOCKER_HOST and XDG_RUNTIME_DIR are the
    engines' own conventions (what the docker and podman CLIs read), not gpucloud settings."""
    urls: list[str] = []
    docker_host = os.environ.get("DOCKER_HOST", "").strip()
    if docker_host.startswith(("unix://", "tcp://")):
        urls.append(docker_host)
    paths = ["/run/gpucloud-podman/podman.sock", "/var/run/docker.sock",
             "/run/podman/podman.sock"]
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        paths += [f"{runtime_dir}/podman/podman.sock", f"{runtime_dir}/docker.sock"]
    paths.append(str(Path.home() / ".docker/run/docker.sock"))
    for path in paths:
        if Path(path).is_socket():
            urls.append(f"unix://{path}")
    return list(dict.fromkeys(urls))


def find_engine() -> tuple[str, str] | None:
    """(engine_url, "Podman"|"Docker") of the first engine that answers a ping."""
    for url in candidate_engines():
        try:
            engine = Engine(parse_config({"engine_url": url, "timeout_seconds": PING_TIMEOUT}))
        except ValueError:
            continue
        try:
            if engine.ping():
                return url, "Podman" if engine.is_podman() else "Docker"
        except DriverError as exc:  # an odd engine must never stop the server from starting
            log.debug("engine %s: %s", url, exc)
        finally:
            engine.close()
    return None


def host_gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs of this host via nvidia-smi: [{index, model, vram_gib}], or []."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not parts[2].isdigit():
            continue
        model = re.sub(r"^(nvidia|geforce|tesla|quadro)\s+", "", parts[1].lower())
        model = re.sub(r"^(geforce|rtx)\s+(?=rtx)", "", model)
        model = re.sub(r"[^a-z0-9]+", "-", model).strip("-") or "gpu"
        gpus.append({"index": parts[0], "model": model,
                     "vram_gib": max(1, round(int(parts[2]) / 1024))})
    return gpus
