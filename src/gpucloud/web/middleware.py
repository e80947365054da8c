"""One pure-ASGI middleware that every request passes: request id, access log line, metrics.

Pure ASGI (no BaseHTTPMiddleware, which runs the app in a separate task and buffers nothing
useful here): it wraps `send` to learn the status and add the header, and costs a few
microseconds per request.

- `X-Request-ID`: taken from the request when it is a plausible id (1–128 characters of
  `A-Za-z0-9._:-`), otherwise generated (32 hex digits); sent back on every response and set
  in a contextvar that the logging filter adds to every log line of the request.
- Access log: one line per request on the `gpucloud.access` logger — method, route template
  (never the raw path, which holds ids), status, duration, account id, request id. Never
  bodies, query strings, keys or other headers.
- Metrics: request count and latency by method, route template and status.
"""

from __future__ import annotations

import logging
import random
import re
import time

from gpucloud import metrics
from gpucloud.request_context import RequestInfo, current
from gpucloud.web.logs import AccessLog

access_log = AccessLog(logging.getLogger("gpucloud.access"))

_VALID_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
UNMATCHED = "<unmatched>"  # 404s: one label, whatever path was asked for
# (method, route template, status) → its counter and histogram: `labels()` looks them up under
# a lock with string conversions on every call. Bounded by the routes × methods × statuses.
_series: dict[tuple, tuple] = {}


def _incoming_id(headers) -> str | None:
    for name, value in headers:
        if name == b"x-request-id":
            return value.decode("ascii") if _VALID_ID.fullmatch(value) else None
    return None


class RequestMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Generated from `random`, not `os.urandom`: the id must be unique, not secret, and
        # os.urandom's getrandom() call releases the interpreter lock, on every request on the
        # event loop, to a read thread that then holds it through its next database step
        # (docs/api-speed.md, "request ids from `random`"). `random` is seeded from the OS,
        # and reseeded in a forked child, so processes do not repeat each other's ids.
        rid = _incoming_id(scope["headers"]) or f"{random.getrandbits(128):032x}"
        info = RequestInfo(rid)
        # Not reset afterwards: each request runs in its own task (so its own context), and
        # the app's 500 handler, which runs outside this middleware, still reads it.
        current.set(info)
        header = (b"x-request-id", rid.encode("ascii"))
        status = 500  # what the client gets if the app raises before answering
        start = time.perf_counter()

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope["method"]
            labels = (method, route, status)
            series = _series.get(labels)
            if series is None:
                code = str(status)
                series = _series[labels] = (metrics.REQUESTS.labels(method, route, code),
                                            metrics.REQUEST_SECONDS.labels(method, route, code))
            series[0].inc()
            series[1].observe(duration)
            if access_log.enabled():
                access_log.write(rid, {
                    "method": method, "route": route, "status": status,
                    "duration_ms": round(duration * 1000, 3), "account_id": info.account_id})
