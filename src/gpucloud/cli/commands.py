"""The client side of the `gpucloud` command; `gpucloud.cli.main` calls `register(app)`."""

from __future__ import annotations

import typer

from gpucloud.cli import account, admin, deploy, instances, plans


def register(app: typer.Typer) -> None:
    app.command("plans")(plans.plans)
    app.command("images")(plans.images)
    app.add_typer(deploy.app, name="deploy")
    instances.register(app)
    account.register(app)
    app.add_typer(admin.app, name="admin")
