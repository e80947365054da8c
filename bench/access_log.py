"""What one access-log line costs: the middleware's `access_log.info(…)` through the handler
`gpucloud serve` installs (JSON, buffered, to /dev/null), against the standard library's
own StreamHandler and Formatter on the same logger, in the same process.

    .venv/bin/python bench/access_log.py [--n 200000]

Every request writes one line, so this is a cost every endpoint pays.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import timeit

from gpucloud.web.logs import configure


def _line(log: logging.Logger) -> None:
    log.info("%s %s %s", "GET", "/gpu/instances/{instance_id}", 200, extra={"access": {
        "method": "GET", "route": "/gpu/instances/{instance_id}", "status": 200,
        "duration_ms": 0.412, "account_id": "5b0c9a7e-3f0e-4a51-9d7c-1d1f4f0c2a11"}})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    args = ap.parse_args()
    log = logging.getLogger("gpucloud.access")
    stderr, sys.stderr = sys.stderr, open(os.devnull, "w")  # noqa: SIM115
    configure("info", "json", True)
    sys.stderr = stderr
    ours = min(timeit.repeat(lambda: _line(log), number=args.n, repeat=3)) / args.n * 1e6

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [logging.StreamHandler(open(os.devnull, "w"))]  # noqa: SIM115
    root.handlers[0].setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    stdlib = min(timeit.repeat(lambda: _line(log), number=args.n, repeat=3)) / args.n * 1e6
    root.handlers[:] = saved

    print(f"{'access line':40} {'µs':>6}")
    print(f"{'gpucloud JSON handler (as served)':40} {ours:6.2f}")
    print(f"{'stdlib StreamHandler + Formatter':40} {stdlib:6.2f}")
    print(f"{'ratio':40} {ours / stdlib:6.2f}x")


if __name__ == "__main__":
    main()
