"""Rendered catalog responses, kept as bytes.

The plans endpoints are the most-read part of the API and change rarely, so each distinct
response (path + filters) is rendered once and served from memory until it expires
(`plans_cache_seconds`, which bounds staleness from changes made by *other* processes) or a
change committed through this process invalidates it (the PLANS_CHANGED after-commit effect
its code registers, see db.after_commit).

A render that started before an invalidation must not be stored after it (it may hold the old
rows), hence the generation counter.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

MAX_ENTRIES = 512  # filters make keys; bound them so odd queries cannot grow memory forever


class PlansCache:
    def __init__(self, ttl: float):
        self.ttl = ttl
        self.generation = 0
        self._entries: dict[str, tuple[float, bytes]] = {}
        self._lock = threading.Lock()
        # Renders in progress, so that when an entry expires under load one request renders
        # and the others wait for it instead of all rendering the same bytes at once.
        self._inflight: dict[tuple[int, int, str], asyncio.Future] = {}

    def get(self, key: str) -> bytes | None:
        hit = self._entries.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return None

    def put(self, key: str, body: bytes, generation: int) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if generation != self.generation:
                return
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + self.ttl, body)

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._entries.clear()


    async def get_or_render(self, key: str, render: Callable[[], Awaitable[bytes]]) -> bytes:
        body = self.get(key)
        if body is not None:
            return body
        loop = asyncio.get_running_loop()
        # Keyed by generation too: a request that arrives after an invalidation must not be
        # handed a render that started before it.
        generation = self.generation
        flight = (id(loop), generation, key)
        pending = self._inflight.get(flight)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future = loop.create_future()
        self._inflight[flight] = future
        try:
            body = await render()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: no "never retrieved" warning without waiters
            raise
        finally:
            self._inflight.pop(flight, None)
        self.put(key, body, generation)
        future.set_result(body)
        return body


def plans_cache(rt) -> PlansCache:
    cache = rt.caches.get("plans")
    if cache is None:
        cache = rt.caches.setdefault("plans", PlansCache(rt.settings.plans_cache_seconds))
    return cache
