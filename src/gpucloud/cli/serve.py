"""`gpucloud serve`: migrate, bootstrap, print the keys once, run uvicorn with the workers."""

from __future__ import annotations

from pathlib import Path

import typer


def serve(
    host: str = typer.Option(None, help="Bind address [GPUCLOUD_HOST, default 127.0.0.1]"),
    port: int = typer.Option(None, help="Port [GPUCLOUD_PORT, default 8000]"),
    database_url: str = typer.Option(None, help="Database URL [GPUCLOUD_DATABASE_URL]"),
    data_dir: Path = typer.Option(None, help="Data directory [GPUCLOUD_DATA_DIR, default .]"),
    clock: str = typer.Option(None, help="system | manual [GPUCLOUD_CLOCK]"),
    demo: bool = typer.Option(
        None, "--demo/--no-demo", help="Seed the demo catalog [GPUCLOUD_DEMO]"
    ),
    background: bool = typer.Option(
        None, "--background/--no-background",
        help="Run the background lifecycle and billing workers [GPUCLOUD_WORKERS]",
    ),
    processes: int = typer.Option(
        None, "--workers", min=1,
        help="Server processes, each with its background workers (PostgreSQL only for more "
        "than 1) [GPUCLOUD_PROCESSES, default 1]",
    ),
) -> None:
    """Start the API server (and its background workers)."""
    # Lazy on purpose, not to dodge a cycle: the server stack (FastAPI, SQLAlchemy, uvicorn,
    # docker-py) costs over a second to import, and every other command is a thin HTTP client
    # that must not pay for it. tests/test_layers.py allows exactly this function.
    import os
    import tempfile

    import uvicorn
    from rich.console import Console

    from gpucloud.app import create_app
    from gpucloud.bootstrap import bootstrap
    from gpucloud.runtime import Runtime
    from gpucloud.settings import Settings
    from gpucloud.web.logs import configure as configure_logging
    from gpucloud.web.server import settle_heap, uvicorn_options

    flags = {
        "host": host,
        "port": port,
        "database_url": database_url,
        "data_dir": data_dir,
        "clock": clock,
        "demo": demo,
        "workers": background,
        "processes": processes,
    }
    settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    console = Console(stderr=True, soft_wrap=True)
    if settings.processes > 1 and not settings.effective_database_url.startswith("postgresql"):
        console.print(
            f"[red]--workers {settings.processes} needs PostgreSQL[/]: SQLite has one writer "
            "at a time and its file cannot be shared safely by several server processes. "
            "Set GPUCLOUD_DATABASE_URL=postgresql://… or run one process."
        )
        raise typer.Exit(2)
    configure_logging(settings.log_level, settings.log_format, settings.access_log)
    rt = Runtime.build(settings)
    result = bootstrap(rt)
    db_label = "SQLite" if rt.db.is_sqlite else "PostgreSQL"
    console.print(
        f"[bold]gpucloud[/] on {db_label} · clock: {settings.clock}"
        f" · demo: {'on' if settings.effective_demo else 'off'}"
    )
    if result.admin_key:
        console.print(f"Admin key (shown once, keep it): [bold yellow]{result.admin_key}[/]")
    if result.demo_api_key:
        console.print(
            f"Demo account {result.demo_account_id} API key: [bold green]{result.demo_api_key}[/]"
        )
        console.print(
            f"  curl -H 'X-API-KEY: {result.demo_api_key}' "
            f"http://{settings.host}:{settings.port}/gpu/plans/"
        )
    for note in result.notes:
        console.print(note)
    console.print(f"API docs: http://{settings.host}:{settings.port}/gpu/api-docs")
    # log_config=None: uvicorn's loggers go through our handler (JSON lines when asked for);
    # our own middleware writes the access log.
    common = dict(host=settings.host, port=settings.port, log_level=settings.log_level,
                  access_log=False, log_config=None, **uvicorn_options(settings))
    if settings.processes == 1:
        app = create_app(rt=rt)
        settle_heap(settings)
        uvicorn.run(app, **common)
        return
    # N processes, each with its own Runtime and background worker, all coordinated through
    # the database's leased rows. They read their settings from the environment: pass on what
    # the flags set, and the secrets generated at bootstrap (the secret key file is shared
    # through the data dir; the admin key is stored hashed in the database).
    rt.close()
    for name, value in flags.items():
        if value is not None:
            os.environ["GPUCLOUD_" + name.upper()] = str(value)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="gpucloud-metrics-"))
    uvicorn.run("gpucloud.app:app_factory", factory=True, workers=settings.processes, **common)
