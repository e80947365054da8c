"""Rendered catalog responses, kept as bytes.

The plans endpoints are the most-read part of the API and change rarely, so each distinct
response (path + filters) is rendered once and served from memory until it expires
(`plans_cache_seconds`, which bounds staleness from changes made by *other* processes) or a
change through this process calls `rt.invalidate("plans")`.

A render that started before an invalidation must not be stored after it (it may hold the old
rows), hence the generation counter.
"""

from __future__ import annotations

import threading
import time

MAX_ENTRIES = 512  # filters make keys; bound them so odd queries cannot grow memory forever


class PlansCache:
    def __init__(self, ttl: float):
        self.ttl = ttl
        self.generation = 0
        self._entries: dict[str, tuple[float, bytes]] = {}
        self._lock = threading.Lock()

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


def plans_cache(rt) -> PlansCache:
    cache = rt.caches.get("plans")
    if cache is None:
        cache = rt.caches.setdefault("plans", PlansCache(rt.settings.plans_cache_seconds))
    return cache
