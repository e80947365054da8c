"""Did the startup command actually start? (a container that cannot start vs one that crashed)

With an init process (`init: true`) the engine reports a successful start even when the
startup command does not exist: the init (catatonit, tini) starts fine, fails to exec the
command, prints why and exits. That must be a failed create, not an ACTIVE instance whose
process "crashed".

On an engine on this machine the answer is exact: the init's child process is visible in
/proc, and once its executable differs from the init's, the command was exec'd. For a remote
engine there is no such view, so a container that stops within `start_check_seconds` with the
init's "failed to exec" message counts as not started.
"""

from __future__ import annotations

import os
import time

from gpucloud.drivers.base import DriverTransientError
from gpucloud.drivers.docker.labels import EXEC_FAILED

# Seconds: a host execs a command sooner than this. 10 s was not enough once, on 2 cores
# with four emulated guests booting beside the engine; only a command that neither
# execs nor exits waits it out, so a long bound costs nothing in the normal case.
LOCAL_LIMIT = 60.0
# Seconds to wait for the init's "failed to exec" line after it exited with an init's code:
# the engine copies the output asynchronously, later on a loaded host; only an exit with
# such a code and no such line (a command that exits 1 at once) waits it out.
LOG_PATIENCE = 2.0
# Seconds the engine may go on calling an init running whose pid this host never saw before
# the check concludes it has no view into the engine's processes (another PID namespace).
# Podman reports an init's exit only once its monitor (conmon) has, which on a loaded host
# took longer than one more inspect (seen in CI): the pid is gone, the engine says running.
GONE_PATIENCE = 2.0


def exec_state(pid: int) -> str:
    """`execed`, `pending` (the init has not exec'd a child yet), `gone` (no such process
    here: it exited, or lives in another PID namespace) or `unknown` (no view into it: a
    kernel without /proc/…/children, a process not ours to read)."""
    if pid <= 0 or not os.path.exists(f"/proc/{pid}"):
        return "gone"
    try:
        init_exe = os.readlink(f"/proc/{pid}/exe")
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            children = [int(c) for c in fh.read().split()]
    except FileNotFoundError:
        return "gone"  # exited between the two looks
    except (OSError, ValueError):
        return "unknown"
    for child in children:
        try:
            if os.readlink(f"/proc/{child}/exe") != init_exe:
                return "execed"
        except OSError:
            continue  # exiting or not ours to read: look at the others, then again
    return "pending"


def exec_failure(engine, container, window: float, local: bool) -> str | None:
    """The init's complaint when the startup command could not be executed, else None."""
    started = time.monotonic()
    seen = False  # the init's pid was in /proc at least once: it is ours to watch
    gone_since = None  # since when the engine calls running a pid /proc does not show
    while True:
        elapsed = time.monotonic() - started
        try:
            engine.call(container.reload)
        except DriverTransientError:
            if elapsed >= LOCAL_LIMIT:
                raise
            time.sleep(0.02)  # caught the engine mid-exit: look again
            continue
        if container.status != "running":
            break
        if local:
            pid = int((container.attrs.get("State") or {}).get("Pid") or 0)
            state = exec_state(pid)
            if state == "execed" or elapsed >= LOCAL_LIMIT:
                return None
            if state == "pending":
                seen, gone_since = True, None
            elif state == "gone":
                # Most often the init exited after the engine's answer: ask the engine until
                # it says exited. Falling back to the time window here counted a command that
                # could not exec as started whenever the engine was slower to report the exit
                # than the window (seen in CI, and again in a full run with Podman slow to
                # report the exit). Only a pid never seen here, for GONE_PATIENCE, means no
                # view into the engine's processes: then the time window decides.
                now = time.monotonic()
                gone_since = gone_since or now
                if not seen and now - gone_since >= GONE_PATIENCE:
                    local = False
            else:  # unknown: no view into this engine's processes
                local = False
        if not local and elapsed >= window:
            return None
        time.sleep(0.005 if local else 0.02)
    # The init's message can reach the log a moment after the exit; only wait for it when
    # the exit code is one an init uses for "could not exec" (catatonit 1, tini 126/127).
    code = (container.attrs.get("State") or {}).get("ExitCode")
    patience = LOG_PATIENCE if code in (1, 126, 127) else 0.0
    started = time.monotonic()
    while True:
        raw = engine.call(container.logs, stdout=True, stderr=True, tail=5)
        for line in raw.decode("utf-8", errors="replace").splitlines():
            if EXEC_FAILED.search(line):
                return line.strip()[:300]
        if time.monotonic() - started >= patience:
            return None
        time.sleep(0.05)
