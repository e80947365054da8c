"""A small HTTP/1.1 keep-alive load generator on raw asyncio streams.

httpx costs more CPU per request than the server under test does, so on a 2-core machine it
would measure itself. This speaks just enough HTTP/1.1 (Content-Length bodies, keep-alive) to
drive one endpoint from C concurrent connections for a fixed time, bounded in count and time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class Result:
    requests: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(p / 100 * len(data)))] * 1000


def build_request(method: str, path: str, host: str, headers: dict[str, str],
                  body: bytes | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for k, v in headers.items():
        lines.append(f"{k}: {v}")
    if body is not None:
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def _worker(host: str, port: int, request: bytes, stop_at: float, max_requests: int,
                  result: Result) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at and result.requests < max_requests:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
                    break
            if length:
                await reader.readexactly(length)
            result.latencies.append(time.perf_counter() - t0)
            result.requests += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
    except (ConnectionError, asyncio.IncompleteReadError):
        result.errors += 1
    finally:
        writer.close()


async def run(host: str, port: int, request: bytes, seconds: float, connections: int,
              max_requests: int = 2_000_000) -> Result:
    result = Result()
    start = time.perf_counter()
    stop_at = start + seconds
    await asyncio.gather(*(_worker(host, port, request, stop_at, max_requests, result)
                           for _ in range(connections)))
    result.seconds = time.perf_counter() - start
    return result


def measure(host: str, port: int, request: bytes, seconds: float = 5.0,
            connections: int = 32, warmup: float = 1.0) -> Result:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(run(host, port, request, warmup, connections))
    return asyncio.run(run(host, port, request, seconds, connections))
