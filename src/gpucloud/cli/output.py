"""Printing: rich tables for people, exact JSON for scripts, one-line errors on stderr."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from gpucloud.client import GpuCloudError, MissingCredentials
from gpucloud.client.wire import dumps


def console(stderr: bool = False) -> Console:
    """A console on the *current* stdout/stderr (CliRunner swaps them per invocation). When the
    output is not a terminal, tables get a wide fixed width so ids are never wrapped or cut."""
    stream = sys.stderr if stderr else sys.stdout
    is_tty = hasattr(stream, "isatty") and stream.isatty()
    return Console(file=stream, width=None if is_tty else 240, highlight=False,
                   soft_wrap=not is_tty)


def plain(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="python")
    if isinstance(obj, (list, tuple)):
        return [plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


def print_json(obj: Any) -> None:
    """Money stays exact: Decimal is written digit for digit, datetimes as ISO 8601 with Z."""
    typer.echo(dumps(plain(obj), indent=2))


def money(value: Decimal | None) -> str:
    if value is None:
        return "-"
    whole, _, frac = format(value, "f").partition(".")
    return f"{whole}.{frac.rstrip('0').ljust(2, '0')}"  # at least cents, never a lost digit


def cell(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if hasattr(value, "isoformat"):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None,
          right: Sequence[str] = ()) -> None:
    t = Table(title=title, header_style="bold", show_lines=False)
    for col in columns:
        t.add_column(col, justify="right" if col in right else "left", overflow="fold")
    for row in rows:
        t.add_row(*(cell(v) for v in row))
    console().print(t)


def fields(pairs: Sequence[tuple[str, Any]], *, title: str | None = None) -> None:
    """A two-column key/value view for one object."""
    t = Table(title=title, show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for key, value in pairs:
        t.add_row(key, cell(value))
    console().print(t)


def info(message: str) -> None:
    console(stderr=True).print(message)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: …` on one line on stderr; return the Exit to raise."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def api_errors() -> Iterator[None]:
    """API errors exit 1 with the server's message; missing keys are a usage error (2)."""
    try:
        yield
    except MissingCredentials as exc:
        raise fail(exc.message, 2) from None
    except GpuCloudError as exc:
        raise fail(exc.message, 1) from None
