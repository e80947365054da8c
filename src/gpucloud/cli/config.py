"""Where the CLI finds its server and keys: flag > environment variable > profile > default.

These are settings of the *client*, not of the server (gpucloud.settings is the server's), so
they live here. Profiles are a TOML file under the user's config dir, written mode 0600 because
it holds keys:

    [profiles.default]
    url = "http://127.0.0.1:8000"
    api_key = "gc_..."
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from gpucloud.client import DEFAULT_URL

CONFIG_DIR_ENV = "GPUCLOUD_CONFIG_DIR"
DEFAULT_PROFILE = "default"
DEFAULT_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class ClientConfig:
    url: str = DEFAULT_URL
    api_key: str | None = None
    admin_key: str | None = None
    poll_interval: float = DEFAULT_POLL_SECONDS


def config_dir() -> Path:
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_config_dir("gpucloud"))


def config_file() -> Path:
    return config_dir() / "config.toml"


def read_profiles() -> dict[str, dict[str, Any]]:
    path = config_file()
    if not path.exists():
        return {}
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    profiles = data.get("profiles", {})
    return profiles if isinstance(profiles, dict) else {}


def write_profile(name: str, values: dict[str, str]) -> Path:
    """Add or replace one profile, keeping the others. The file is created 0600 (it holds API
    keys) and replaced atomically so a crash never leaves half a file."""
    profiles = read_profiles()
    profiles[name] = {k: v for k, v in values.items() if v}
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".toml.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        tomli_w.dump({"profiles": profiles}, fh)
    os.chmod(tmp, 0o600)  # O_CREAT's mode is masked by umask and ignored for an existing file
    os.replace(tmp, path)
    return path


def resolve(url: str | None, api_key: str | None, admin_key: str | None,
            profile: str | None, poll_interval: float | None = None) -> ClientConfig:
    """Flags and env vars arrive merged by Typer (a flag wins over its env var); what is still
    missing comes from the profile, then from the defaults."""
    name = profile or os.environ.get("GPUCLOUD_PROFILE") or DEFAULT_PROFILE
    stored = read_profiles().get(name, {})
    if profile and not stored:
        raise FileNotFoundError(f"no profile {profile!r} in {config_file()}")
    return ClientConfig(
        url=(url or stored.get("url") or DEFAULT_URL).rstrip("/"),
        api_key=api_key or stored.get("api_key"),
        admin_key=admin_key or stored.get("admin_key"),
        poll_interval=poll_interval if poll_interval is not None else DEFAULT_POLL_SECONDS,
    )
