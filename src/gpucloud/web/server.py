"""How `gpucloud serve` runs uvicorn: connection limits that hold against idle and half-sent
connections (issue 14).

- A connection must finish its request headers within `header_timeout_seconds` of
  connecting (or of starting its next request); uvicorn alone waits forever, so 2,000 idle
  sockets or 200 half-sent requests used to stay open until the process ran out of files.
- Idle keep-alive connections close after `keep_alive_seconds`.
- Past `max_connections` concurrent connections new ones get 503 instead of failing for lack
  of file descriptors; by default the cap leaves room under the open-file limit.
- X-Forwarded-For is believed only from `trusted_proxies`.
"""

from __future__ import annotations

import asyncio
import gc
import resource
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gpucloud.settings import Settings

# Files the process needs besides client sockets: database pools, logs, the engine socket.
_RESERVED_FILES = 200


def max_connections(settings: Settings) -> int:
    if settings.max_connections:
        return settings.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(64, soft - _RESERVED_FILES)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on request headers. A class at module
    level (not a closure) so `--workers N` can hand it to its child processes; each child sets
    `deadline_seconds` from its settings (`configure`)."""

    deadline_seconds = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.deadline_seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # Between requests the keep-alive timeout applies instead.
        self._disarm()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def configure(settings: Settings) -> None:
    HeaderDeadlineProtocol.deadline_seconds = settings.header_timeout_seconds


def settle_heap(settings: Settings) -> None:
    """Take what startup built out of the garbage collector's reach, and collect the young
    generation less often. Called once the app is built, in every server process.

    The modules, the app, SQLAlchemy's and pydantic's structures are hundreds of thousands of
    objects that live as long as the process; every full collection walked all of them, and
    under load that was a pause of ~130 ms every few seconds (the p99 of every endpoint).
    `gc.freeze()` moves them to a generation the collector never scans. Requests then make
    short-lived objects, mostly freed by reference counting, so few are left for the collector
    to scan: a larger youngest-generation threshold makes fewer collections, each hardly
    longer. Figures in docs/api-speed.md."""
    gc.collect()
    gc.freeze()
    if settings.gc_gen0_threshold:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(settings.gc_gen0_threshold, gen1, gen2)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    configure(settings)
    trusted = settings.trusted_proxies
    return dict(
        http=HeaderDeadlineProtocol,
        timeout_keep_alive=settings.keep_alive_seconds,
        limit_concurrency=max_connections(settings),
        proxy_headers=bool(trusted),
        forwarded_allow_ips=",".join(trusted) if trusted else None,
        server_header=False,
    )
