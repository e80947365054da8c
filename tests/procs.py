"""Real `gpucloud serve` processes for tests that need restarts or several servers."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
GPUCLOUD = str(Path(sys.executable).parent / "gpucloud")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class ServerProcess:
    def __init__(self, cwd: Path, env: dict[str, str] | None = None, port: int | None = None):
        self.cwd = cwd
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GPUCLOUD_")}
        self.env.update(env or {})
        self.env.setdefault("GPUCLOUD_LOCAL_PROVIDER", "0")
        self.env.setdefault("GPUCLOUD_RATE_LIMITS", "0")  # polling loops; test_limits.py has them on
        self.proc: subprocess.Popen | None = None
        self.log = cwd / f"server-{self.port}.log"

    # A start imports, migrates and builds the OpenAPI document: over a minute was seen on a
    # machine whose two cores also booted guests under TCG.
    def start(self, timeout: float = 180) -> ServerProcess:
        self.cwd.mkdir(parents=True, exist_ok=True)
        fh = open(self.log, "ab")
        self.proc = subprocess.Popen([GPUCLOUD, "serve", "--port", str(self.port)], cwd=self.cwd,
                                     env=self.env, stdout=fh, stderr=subprocess.STDOUT)
        started = time.monotonic()
        last: object = None
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early with code {self.proc.returncode}:\n"
                                   f"--- server log {self.log} ---\n{self.output()}")
            try:
                last = httpx.get(self.url + "/gpu/api-docs/openapi.json", timeout=1).status_code
                if last == 200:
                    return self
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.1)
        # Say everything there is to say: a start that fails on a busy machine must not leave
        # "did not start" as the only clue.
        raise RuntimeError(
            f"server did not start within {timeout:g} s (pid {self.proc.pid} still running; "
            f"last answer on {self.url}: {last!r}; database "
            f"{self.env.get('GPUCLOUD_DATABASE_URL', 'SQLite in ' + str(self.cwd))}):\n"
            f"--- server log {self.log} ---\n{self.output() or '(empty)'}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def printed(self, pattern: str) -> list[str]:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", self.output())
        return re.findall(pattern, plain)

    def kill(self) -> None:
        """Hard kill: what a crash or power loss looks like to the database."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
