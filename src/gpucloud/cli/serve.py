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
    workers: bool = typer.Option(
        None, "--workers/--no-workers", help="Run background workers [GPUCLOUD_WORKERS]"
    ),
) -> None:
    """Start the API server (and its background workers)."""
    # Lazy on purpose, not to dodge a cycle: the server stack (FastAPI, SQLAlchemy, uvicorn,
    # docker-py) costs over a second to import, and every other command is a thin HTTP client
    # that must not pay for it. tests/test_layers.py allows exactly this function.
    import uvicorn
    from rich.console import Console

    from gpucloud.app import create_app
    from gpucloud.bootstrap import bootstrap
    from gpucloud.runtime import Runtime
    from gpucloud.settings import Settings

    flags = {
        "host": host,
        "port": port,
        "database_url": database_url,
        "data_dir": data_dir,
        "clock": clock,
        "demo": demo,
        "workers": workers,
    }
    settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    console = Console(stderr=True, soft_wrap=True)
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
    app = create_app(rt=rt)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False
    )
