"""Limits before work: body size, the key before the body, rate limits (pure ASGI).

Runs inside the request middleware (so its answers carry a request id and an access-log
line) and before routing, so nothing below it parses a byte it refuses:

- A body larger than `max_body_bytes` is answered 413: at once when Content-Length says so,
  else as soon as the streamed bytes pass the limit — never read whole.
- Under /gpu and /admin the key is checked first. A request without a valid key that carries
  a body is answered 403 before its body is read (parsing 13 MB of JSON for a caller we would
  refuse anyway stalled every other client); one without a body goes on to its route, which
  answers the same 403.
- Either answer, given before the body was read, closes the connection: kept alive, the
  server would read the rest of the body just to throw it away.
- Token buckets: per API key, per admin key, and per client address for requests without a
  valid key. An empty bucket is a 429 with Retry-After; every answer under /gpu and /admin
  carries X-RateLimit-Limit/-Remaining/-Reset. Buckets live in this process (several
  processes each keep their own: a client may get up to N times the rate).
- The console's sign-in forms draw on the same per-address bucket: an attempt takes a token
  before its key is checked (an empty bucket is the console's 429 page, the key unread) and
  gets it back unless the key was refused, so only failed sign-ins spend the budget.

The client address is the connection's peer, or what a trusted proxy says it is: uvicorn
rewrites it from X-Forwarded-For only for `trusted_proxies` (web/server.py).

`GPUCLOUD_GUARD=0` passes everything through, for bench/abuse.py's figures without the guard.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import Request

from gpucloud.accounts.auth import caller_of, check_admin_async
from gpucloud.console import signin
from gpucloud.errors import Forbidden
from gpucloud.jsonresp import dumps

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_OPEN = ("/gpu/api-docs", "/gpu/openapi.json")  # the document needs no key
_SIGN_IN = frozenset({"/console/login", "/console/admin/login"})


@dataclass
class Bucket:
    tokens: float
    at: float


class Limiter:
    """Token buckets by name; the least recently used are forgotten past `size` names, so a
    flood of distinct keys or addresses cannot grow memory without bound."""

    def __init__(self, rate: float, burst: int, size: int = 100_000):
        self.rate, self.burst, self.size = rate, burst, size
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()

    def take(self, name: str, now: float | None = None) -> tuple[bool, int, float]:
        """(allowed, tokens left, seconds until a token is back)."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.pop(name, None) or Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        allowed = bucket.tokens >= 1
        if allowed:
            bucket.tokens -= 1
        self._buckets[name] = bucket
        if len(self._buckets) > self.size:
            self._buckets.popitem(last=False)
        wait = 0.0 if bucket.tokens >= 1 else (1 - bucket.tokens) / self.rate
        return allowed, int(bucket.tokens), wait

    def give_back(self, name: str) -> None:
        """Return a token `take` handed out for work that turned out not to count."""
        bucket = self._buckets.get(name)
        if bucket is not None:
            bucket.tokens = min(self.burst, bucket.tokens + 1)


class _TooLarge(HTTPException):
    """Raised from `receive`. An HTTPException so that whoever catches it on the way up
    (FastAPI wraps other errors met while reading a body as a 400) still answers 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"Request body too large (limit {limit} bytes)")


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class _Headers:
    """Just enough of a headers mapping for `api_key_of`."""

    def __init__(self, scope):
        self.scope = scope

    def get(self, name: str, default=None):
        value = _header(self.scope, name.encode())
        return default if value is None else value


class GuardMiddleware:
    def __init__(self, app, settings):
        self.app = app
        self.on = settings.guard
        self.max_body = settings.max_body_bytes
        self.enabled = settings.rate_limits
        self.keys = Limiter(settings.rate_limit_key, settings.rate_limit_key_burst)
        self.admin = Limiter(settings.rate_limit_admin, settings.rate_limit_admin_burst)
        self.anonymous = Limiter(settings.rate_limit_anonymous,
                                 settings.rate_limit_anonymous_burst)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.on:
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        # An answer given before the body is read closes the connection: kept alive, the
        # server would go on reading (and throwing away) the rest of the body on the event
        # loop, 13 MB a request, while the other clients wait.
        unread = [(b"connection", b"close")] if length not in (None, "0") or \
            _header(scope, b"transfer-encoding") is not None else []
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _answer(send, 413, f"Request body too large (limit {self.max_body} bytes)",
                          unread)
            return
        path = scope["path"]
        # Either spelling: every route has a slash twin (routing.py).
        if path.rstrip("/") in _SIGN_IN and scope["method"] == "POST" and self.enabled:
            await self._sign_in(scope, receive, send)
            return
        kind = "admin" if path.startswith("/admin") or path == "/metrics" else \
            "api" if path.startswith("/gpu") and not path.startswith(_OPEN) else None
        limit_headers: list[tuple[bytes, bytes]] = []
        if kind is not None:
            refusal, limit_headers = await self._admit(scope, kind)
            if refusal is not None:
                await _answer(send, *refusal, [*limit_headers, *unread])
                return
        await self._run(scope, receive, send, limit_headers)

    async def _admit(self, scope, kind: str):
        """(None or (status, detail) to answer now, the rate-limit headers)."""
        rt = scope["app"].state.rt
        try:
            if kind == "api":
                caller = await caller_of(rt, _Headers(scope))
                limiter, name = self.keys, "k:" + caller.key_id
            else:
                await check_admin_async(rt, _header(scope, b"x-admin-key"))
                limiter, name = self.admin, "admin"
            refused = None
        except Forbidden as exc:
            limiter, name = self.anonymous, _address(scope)
            # With a body, refuse now rather than read it; without one the route says the
            # same, so requests look alike to the caller whatever they carry.
            refused = (403, exc.detail) if scope["method"] in _BODY_METHODS else None
        headers: list[tuple[bytes, bytes]] = []
        if self.enabled:
            allowed, left, wait = limiter.take(name)
            headers = [(b"x-ratelimit-limit", str(limiter.burst).encode()),
                       (b"x-ratelimit-remaining", str(left).encode()),
                       (b"x-ratelimit-reset", str(math.ceil(wait)).encode())]
            if not allowed:
                retry = (b"retry-after", str(max(1, math.ceil(wait))).encode())
                return (429, "Too many requests; slow down"), [*headers, retry]
        return refused, headers

    async def _sign_in(self, scope, receive, send) -> None:
        name = _address(scope)
        allowed, left, wait = self.anonymous.take(name)
        headers = [(b"x-ratelimit-limit", str(self.anonymous.burst).encode()),
                   (b"x-ratelimit-remaining", str(left).encode()),
                   (b"x-ratelimit-reset", str(math.ceil(wait)).encode())]
        if not allowed:
            page = signin.too_many_attempts(Request(scope), max(1, math.ceil(wait)))
            page.raw_headers.extend(headers)
            await page(scope, receive, send)
            return
        status = 0

        async def watch(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._run(scope, receive, watch, headers)
        finally:
            if status != signin.REFUSED_STATUS:
                self.anonymous.give_back(name)

    async def _run(self, scope, receive, send, limit_headers) -> None:
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge(self.max_body)
            return message

        async def send_with_limits(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if limit_headers:
                    message["headers"] = [*message.get("headers", ()), *limit_headers]
            await send(message)

        try:
            await self.app(scope, counted_receive, send_with_limits)
        except _TooLarge as exc:
            if not started:
                await _answer(send, 413, exc.detail, [(b"connection", b"close")])


def _address(scope) -> str:
    client = scope.get("client")
    return "a:" + (client[0] if client else "?")


async def _answer(send, status: int, detail: str, headers=()) -> None:
    body = dumps({"detail": detail})
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *headers]})
    await send({"type": "http.response.body", "body": body})
