"""What the benchmarks that start real `gpucloud serve` processes share: a free loopback port,
waiting until a URL answers, and an empty PostgreSQL database."""

from __future__ import annotations

import socket
import time

import httpx
from sqlalchemy import create_engine, text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 60) -> None:
    """Until `url` answers below 500; RuntimeError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def fresh_pg(url: str) -> str:
    """`url` (postgresql://…/NAME) after dropping and creating database NAME: every run
    starts from an empty database."""
    base, name = url.rsplit("/", 1)
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg://") + "/postgres",
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url
