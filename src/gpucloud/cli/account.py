"""`gpucloud login`, `account`, `transactions`: who am I and where did my money go."""

from __future__ import annotations

from typing import Optional

import typer

from gpucloud.cli import config
from gpucloud.cli.options import connected
from gpucloud.cli.output import api_errors, fields, info, print_json, table
from gpucloud.client import Client


def login(
    url: str = typer.Option(..., "--url", help="Server URL"),
    api_key: str = typer.Option(..., "--api-key", help="Your API key"),
    admin_key: Optional[str] = typer.Option(None, "--admin-key",  # noqa: UP045
                                            help="Also store an admin key (operators)"),
    profile: str = typer.Option(config.DEFAULT_PROFILE, "--profile", help="Profile name"),
    check: bool = typer.Option(True, "--check/--no-check",
                               help="Verify the key against the server first"),
) -> None:
    """Save a server URL and API key to a profile (mode 0600) for later commands."""
    if check:
        with api_errors(), Client(url, api_key) as client:
            acct = client.account()
        info(f"Logged in as {acct.name} ({acct.id}).")
    path = config.write_profile(profile, {"url": url.rstrip("/"), "api_key": api_key,
                                          "admin_key": admin_key or ""})
    info(f"Saved profile {profile!r} to {path}")


@connected
def account(
    as_json: bool = typer.Option(False, "--json", help="JSON output"),
    *,
    client: Client,
) -> None:
    """Your account: balance, reserved for running instances, spent."""
    acct = client.account()
    if as_json:
        print_json(acct)
        return
    fields([("id", acct.id), ("name", acct.name), ("balance", acct.balance),
            ("reserved", acct.reserved), ("spent", acct.spent)])


@connected
def transactions(
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="At most N entries"),  # noqa: UP045
    cursor: Optional[str] = typer.Option(None, "--cursor",  # noqa: UP045
                                         help="Continue after a previous page"),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table"),
    *,
    client: Client,
) -> None:
    """Your ledger entries, newest first."""
    page = client.transactions(limit, cursor)
    if as_json:
        print_json(page)
        return
    table(["At", "Kind", "Amount", "Balance after", "Instance", "ID"],
          [[t.at, t.kind, t.amount, t.balance_after, t.instance_id, t.id] for t in page.items],
          right=("Amount", "Balance after"))
    if page.next_cursor:
        info(f"More: gpucloud transactions --cursor {page.next_cursor}")


def register(app: typer.Typer) -> None:
    app.command("login")(login)
    app.command("account")(account)
    app.command("transactions")(transactions)
