"""Connection options shared by every client command, and parsers for the small value syntaxes
(`22/tcp`, `K=V`, money, SSH keys from a file or inline)."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import typer

from gpucloud.cli import config
from gpucloud.cli.output import api_errors, fail
from gpucloud.client import Client

_CONN_PARAMS: list[tuple[str, type, Any]] = [
    ("url", typing.Optional[str], typer.Option(  # noqa: UP045 - Typer needs the Optional form
        None, "--url", envvar="GPUCLOUD_URL", show_envvar=True, rich_help_panel="Connection",
        help="Server URL (default: the profile's, else http://127.0.0.1:8000)")),
    ("api_key", typing.Optional[str], typer.Option(  # noqa: UP045
        None, "--api-key", envvar="GPUCLOUD_API_KEY", show_envvar=True,
        rich_help_panel="Connection", help="API key (header X-API-KEY)")),
    ("admin_key", typing.Optional[str], typer.Option(  # noqa: UP045
        None, "--admin-key", envvar="GPUCLOUD_ADMIN_KEY", show_envvar=True,
        rich_help_panel="Connection", help="Admin key for `gpucloud admin` (X-ADMIN-KEY)")),
    ("profile", typing.Optional[str], typer.Option(  # noqa: UP045
        None, "--profile", envvar="GPUCLOUD_PROFILE", rich_help_panel="Connection",
        help="Profile written by `gpucloud login` (default: \"default\")")),
    ("poll_interval", float, typer.Option(
        config.DEFAULT_POLL_SECONDS, "--poll-interval", envvar="GPUCLOUD_POLL_INTERVAL",
        min=0.01, rich_help_panel="Connection", help="Seconds between polls (--wait, --follow)")),
]
_INJECTED = ("client", "cfg")


def connected(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the connection options and call it with `client=` (and `cfg=` if it asks).

    The root callback belongs to `gpucloud serve`'s module, so the options go on each command;
    this decorator keeps them declared once. Errors from the client become one-line messages
    with exit code 1 (2 when a key is missing).
    """
    hints = typing.get_type_hints(func, include_extras=True)
    sig = inspect.signature(func)
    wants_cfg = "cfg" in sig.parameters
    params = [p.replace(annotation=hints.get(p.name, p.annotation))
              for p in sig.parameters.values() if p.name not in _INJECTED]
    for name, annotation, default in _CONN_PARAMS:
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=annotation))

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        conn = {name: kwargs.pop(name) for name, _, _ in _CONN_PARAMS}
        try:
            cfg = config.resolve(conn["url"], conn["api_key"], conn["admin_key"],
                                 conn["profile"], conn["poll_interval"])
        except (FileNotFoundError, ValueError) as exc:
            raise fail(str(exc), 2) from None
        if wants_cfg:
            kwargs["cfg"] = cfg
        with api_errors(), Client(cfg.url, cfg.api_key, cfg.admin_key) as client:
            return func(*args, client=client, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


# -- value parsers (a bad value is a usage error: exit 2 with Click's message) --------------------
PROTOCOLS = ("tcp", "udp", "http")


def parse_port(value: str) -> dict[str, str]:
    """`22`, `22/tcp`, `80/http`. The number itself is checked by the server, so that a bad one
    is reported with its field path like any other API validation error."""
    port, _, proto = value.partition("/")
    proto = (proto or "tcp").lower()
    if not port or proto not in PROTOCOLS:
        raise typer.BadParameter(f"{value!r}: expected PORT[/PROTOCOL] with PROTOCOL one of "
                                 f"{', '.join(PROTOCOLS)}")
    return {"port": port, "protocol": proto}


def parse_env(value: str) -> dict[str, str]:
    name, sep, val = value.partition("=")
    if not sep or not name:
        raise typer.BadParameter(f"{value!r}: expected NAME=VALUE")
    return {"name": name, "value": val}


def parse_money(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise typer.BadParameter(f"{value!r} is not a decimal amount") from None
    if not amount.is_finite():
        raise typer.BadParameter(f"{value!r} is not a decimal amount")
    return amount


def read_ssh_key(value: str | None) -> str | None:
    """A path to a public key file, or the key itself."""
    if not value:
        return value
    path = Path(value).expanduser()
    if not value.startswith(("ssh-", "ecdsa-")) and path.is_file():
        return path.read_text().strip()
    return value.strip()
