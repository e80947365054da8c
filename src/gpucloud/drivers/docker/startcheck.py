"""Did the startup command actually start? (a container that cannot start vs one that crashed)

With an init process (`init: true`) the engine reports a successful start even when the
startup command does not exist: the init (catatonit, tini) starts fine, fails to exec the
command, prints why and exits. That must be a failed create, not an ACTIVE instance whose
process "crashed".

Whether /proc here shows the engine's processes is a property of the engine, not of one
container: the process serving the engine's unix socket (SO_PEERCRED) lives in this process's
PID namespace or not (`pid_view`). With that view the answer is exact: the init's child is
visible in /proc, and once its executable differs from the init's, the command was exec'd;
an init pid that is not there has exited, and the engine is asked until it says so. Without
it (a remote engine, or a socket whose engine runs in another PID namespace) a container that
stops within `start_check_seconds` with the init's "failed to exec" message counts as not
started.
"""

from __future__ import annotations

import os
import socket
import struct
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
# Looks in a row that cannot read an init's /proc before the check stops using /proc.
UNKNOWN_LOOKS = 3
# Attempts to ask the engine's socket who serves it before the answer is "cannot tell".
SOCKET_TRIES = 3


def pid_view(socket_path: str) -> bool | None:
    """Whether the engine serving `socket_path` reports PIDs of this process's namespace:
    its socket's peer is visible here and shares our PID namespace. An init that fails to
    exec is often gone before the first look into /proc, so "this pid was never seen" could
    not tell an exited init from an engine elsewhere (Podman, loaded, reported the exit
    seconds late: seen in CI). None: the socket could not be asked (no engine there, or one
    too busy to accept), so nothing is known yet; the caller asks again next time rather than
    keep "no view" for good."""
    for attempt in range(SOCKET_TRIES):
        if attempt:
            time.sleep(0.1)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(socket_path)
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                        struct.calcsize("3i"))
        except OSError:
            continue
        pid = struct.unpack("3i", creds)[0]  # 0: the peer lives in a namespace we cannot see
        try:
            return pid > 0 and \
                os.readlink(f"/proc/{pid}/ns/pid") == os.readlink("/proc/self/ns/pid")
        except OSError:
            return False  # a peer whose namespace we may not read is not ours
    return None


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
    except (FileNotFoundError, ProcessLookupError):
        return "gone"  # exited between the looks (ENOENT, or ESRCH from a file opened before)
    except (OSError, ValueError):
        return "unknown"
    for child in children:
        try:
            if os.readlink(f"/proc/{child}/exe") == init_exe:
                continue
            # The engine may call a container running while its first process is still the
            # runtime's (crun, runc) about to exec the init: if the init exec'd and forked
            # between the two reads above, its child differs from the runtime, not the init.
            if os.readlink(f"/proc/{pid}/exe") != init_exe:
                return "pending"
            return "execed"
        except OSError:
            continue  # exiting or not ours to read: look at the others, then again
    return "pending"


def exec_failure(engine, container, window: float, view: bool) -> str | None:
    """The init's complaint when the startup command could not be executed, else None.
    `view`: the engine's PIDs are this host's (`pid_view`)."""
    started = time.monotonic()
    unknown = 0  # looks in a row that could not read the init's /proc
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
        if view:
            pid = int((container.attrs.get("State") or {}).get("Pid") or 0)
            state = exec_state(pid)
            if state == "execed" or elapsed >= LOCAL_LIMIT:
                return None
            # A kernel or a process that does not let us look says so every time; an init
            # caught exiting can fail a read once, and taking that for "no view" let the
            # window call a command that never ran started (seen under a full test run).
            unknown = unknown + 1 if state == "unknown" else 0
            if unknown >= UNKNOWN_LOOKS:
                view = False
            # pending: nothing exec'd yet. gone: the init exited after the engine's answer;
            # the engine reports that exit, late on a loaded host: ask again until it does.
        if not view and elapsed >= window:
            return None
        time.sleep(0.005 if view else 0.02)
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
