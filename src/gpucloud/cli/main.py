"""The `gpucloud` command. Sub-commands live in their own modules and register here."""

from __future__ import annotations

import typer

from gpucloud.cli import commands
from gpucloud.cli.serve import serve

app = typer.Typer(help="gpucloud: a self-hostable GPU cloud marketplace.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.command("serve")(serve)


@app.callback()
def _root() -> None:
    """gpucloud: serve the API, or drive a gpucloud server from the terminal."""


# Client-side commands (plans, deploy, admin …) are added by gpucloud.cli.commands.
commands.register(app)

if __name__ == "__main__":  # python -m gpucloud.cli.main
    app()
