"""Drive one endpoint from C keep-alive connections for a fixed time; req/s and p50/p99.

wrk (C, one thread) when it is installed (`apt-get install wrk`): it costs a fraction of the
CPU the server under test does, which matters on a 2-core machine where the load generator
and the server share the cores. Otherwise a small HTTP/1.1 client on raw asyncio streams
(httpx would cost more CPU per request than the server and so measure itself).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field


@dataclass
class Result:
    requests: int = 0
    errors: int = 0
    statuses: dict = field(default_factory=dict)  # code (or class, from wrk) -> count
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    p50_ms: float | None = None  # set directly by wrk; computed from latencies otherwise
    p99_ms: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        given = {50: self.p50_ms, 99: self.p99_ms}.get(int(p))
        if given is not None:
            return given
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(p / 100 * len(data)))] * 1000


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None = None

    def raw(self, host: str) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        if self.body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(self.body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + (self.body or b"")


def engine() -> str:
    return "wrk" if shutil.which("wrk") else "asyncio"


def measure(host: str, port: int, req: Request, seconds: float = 2.0, connections: int = 32,
            warmup: float = 0.5) -> Result:
    if engine() == "wrk":
        _wrk(host, port, req, warmup, connections)
        return _wrk(host, port, req, seconds, connections)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    raw = req.raw(f"{host}:{port}")
    asyncio.run(_run(host, port, raw, warmup, connections))
    return asyncio.run(_run(host, port, raw, seconds, connections))


# --- wrk -------------------------------------------------------------------------------------

def _lua_string(value: str | bytes) -> str:
    if isinstance(value, bytes):
        value = value.decode()
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_STATUS_LUA = """
done = function(summary, latency, requests)
  io.write(string.format("NON2XX %d\\n", summary.errors.status))
  io.write(string.format("P50 %f\\nP99 %f\\n", latency:percentile(50) / 1000,
                         latency:percentile(99) / 1000))
end
"""


def _wrk(host: str, port: int, req: Request, seconds: float, connections: int) -> Result:
    lines = [f"wrk.method = {_lua_string(req.method)}"]
    for k, v in req.headers.items():
        lines.append(f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}")
    if req.body is not None:
        lines.append('wrk.headers["Content-Type"] = "application/json"')
        lines.append(f"wrk.body = {_lua_string(req.body)}")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write("\n".join(lines) + "\n" + _STATUS_LUA)
        script = fh.name
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
         "-s", script, f"http://{host}:{port}{req.path}"],
        capture_output=True, text=True, check=True).stdout
    res = Result(seconds=1.0)
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if m:
        res.requests = int(m.group(1))
        unit = {"ms": 0.001, "s": 1.0, "m": 60.0}.get(m.group(3), 1.0)
        res.seconds = float(m.group(2)) * unit
    # wrk counts responses outside 2xx/3xx without their codes: enough to tell a fast 403
    # from a real answer.
    bad = int(re.search(r"NON2XX (\d+)", out).group(1))
    res.statuses = {"2xx": res.requests - bad, "other": bad} if bad else {"2xx": res.requests}
    res.p50_ms = float(re.search(r"P50 ([\d.]+)", out).group(1))
    res.p99_ms = float(re.search(r"P99 ([\d.]+)", out).group(1))
    err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if err:
        res.errors = sum(int(x) for x in err.groups())
    return res


# --- asyncio fallback ------------------------------------------------------------------------

async def _worker(host: str, port: int, request: bytes, stop_at: float, result: Result) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
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


async def _run(host: str, port: int, request: bytes, seconds: float, connections: int) -> Result:
    result = Result()
    start = time.perf_counter()
    await asyncio.gather(*(_worker(host, port, request, start + seconds, result)
                           for _ in range(connections)))
    result.seconds = time.perf_counter() - start
    return result
