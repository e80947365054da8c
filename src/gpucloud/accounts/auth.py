"""Request authentication: X-API-KEY for /gpu, X-ADMIN-KEY for /admin."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader

from gpucloud.accounts import service
from gpucloud.accounts.service import KeyCache, hash_key
from gpucloud.errors import Forbidden

# Declared as security schemes so Swagger UI offers an "Authorize" button.
api_key_header = APIKeyHeader(name="X-API-KEY", auto_error=False)
admin_key_header = APIKeyHeader(name="X-ADMIN-KEY", auto_error=False)


@dataclass(frozen=True)
class Caller:
    account_id: str
    key_id: str


def _cache(rt) -> KeyCache:
    cache = rt.caches.get("api_keys")
    if cache is None:
        cache = rt.caches["api_keys"] = KeyCache(rt.settings.api_key_cache_seconds)
    return cache


def authenticate(rt, key: str | None) -> Caller:
    if not key:
        raise Forbidden("Missing API key")
    cache = _cache(rt)
    digest = hash_key(key)
    hit = cache.get(digest)
    if hit is None:
        with rt.db.read() as s:
            found = service.lookup_key(s, key, rt.clock.now())
        if found is None:
            raise Forbidden("Invalid API key")
        cache.put(digest, *found)
        hit = found
    account_id, key_id, expires_at = hit
    if expires_at is not None and expires_at <= rt.clock.now():
        raise Forbidden("API key expired")
    return Caller(account_id=account_id, key_id=key_id)


async def current_account(request: Request) -> Caller:
    """Async so a cached key costs no threadpool hop; a cache miss reads the database in the
    threadpool."""
    rt = request.app.state.rt
    key = request.headers.get("x-api-key")
    caller = cached_caller(rt, key)
    if caller is None:
        caller = await run_in_threadpool(authenticate, rt, key)
    return caller


def require_admin(request: Request) -> None:
    key = request.headers.get("x-admin-key")
    if not key:
        raise Forbidden("Missing admin key")
    if not admin_key_ok(request.app.state.rt, key):
        raise Forbidden("Invalid admin key")


def admin_key_ok(rt, key: str) -> bool:
    """The one check of the admin key (the header here, the console's sign-in form)."""
    expected = rt.caches.get("admin_key_hash")
    if expected is None:
        if rt.settings.admin_key:
            expected = hash_key(rt.settings.admin_key)
        else:
            with rt.db.read() as s:
                expected = service.admin_key_hash(s) or ""
        rt.caches["admin_key_hash"] = expected
    return bool(expected) and hmac.compare_digest(hash_key(key), expected)


def cached_caller(rt, key: str | None) -> Caller | None:
    """Cache-only check for async hot paths: a Caller if the key is known-good in memory,
    None if a database lookup is needed (then call `authenticate` in the threadpool)."""
    if not key:
        raise Forbidden("Missing API key")
    hit = _cache(rt).get(hash_key(key))
    if hit is None:
        return None
    account_id, key_id, expires_at = hit
    if expires_at is not None and expires_at <= rt.clock.now():
        raise Forbidden("API key expired")
    return Caller(account_id=account_id, key_id=key_id)
