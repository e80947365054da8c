"""Request authentication: X-API-KEY (or `Authorization: Bearer`) for /gpu, X-ADMIN-KEY for /admin.

The OpenAPI document declares the schemes for every operation (gpucloud/openapi.py); these
functions do the checking."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from gpucloud.accounts import service
from gpucloud.accounts.service import KeyCache, hash_key
from gpucloud.errors import Forbidden
from gpucloud.request_context import checked_caller, note_account, note_caller


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
    note_account(account_id)
    return Caller(account_id=account_id, key_id=key_id)


def api_key_of(headers) -> str | None:
    """The API key a request carries: `X-API-KEY`, or `Authorization: Bearer <key>` (newer
    Fluence pages document Bearer). Other Authorization schemes are left alone (a proxy in
    front may use Basic). Two different keys in one request are refused rather than guessed."""
    key = headers.get("x-api-key")
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() == "bearer":
            token = token.strip()
            if not token:
                raise Forbidden("Missing API key")
            if key and not hmac.compare_digest(key.encode(), token.encode()):
                raise Forbidden("X-API-KEY and Authorization name different API keys")
            return token
    return key


async def caller_of(rt, headers) -> Caller:
    """The account a request's key names, or Forbidden. Async so a cached key costs no
    threadpool hop; a cache miss reads the database on the request threads. The result is
    noted on the request, so a second check of the same request (the route after the limits
    middleware) costs nothing."""
    key = api_key_of(headers)
    caller = cached_caller(rt, key)
    if caller is None:
        caller = await rt.offload(authenticate, rt, key)
    note_caller(caller)
    return caller


async def current_account(request: Request) -> Caller:
    caller = checked_caller()
    if caller is not None:
        return caller
    return await caller_of(request.app.state.rt, request.headers)


def _admin_key_hash(rt) -> str:
    expected = rt.caches.get("admin_key_hash")
    if expected is None:
        if rt.settings.admin_key:
            expected = hash_key(rt.settings.admin_key)
        else:
            with rt.db.read() as s:
                expected = service.admin_key_hash(s) or ""
        rt.caches["admin_key_hash"] = expected
    return expected


def admin_key_ok(rt, key: str) -> bool:
    """The one check of the admin key (the header here, the console's sign-in form)."""
    expected = _admin_key_hash(rt)
    return bool(expected) and hmac.compare_digest(hash_key(key), expected)


def check_admin(rt, key: str | None) -> None:
    if not key:
        raise Forbidden("Missing admin key")
    if not admin_key_ok(rt, key):
        raise Forbidden("Invalid admin key")


async def check_admin_async(rt, key: str | None) -> None:
    """`check_admin` without blocking the event loop on the first (uncached) lookup."""
    if rt.caches.get("admin_key_hash") is None and key:
        await rt.offload(_admin_key_hash, rt)
    check_admin(rt, key)


def require_admin(request: Request) -> None:
    check_admin(request.app.state.rt, request.headers.get("x-admin-key"))


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
    note_account(account_id)
    return Caller(account_id=account_id, key_id=key_id)
