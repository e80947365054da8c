"""Did a container's startup command exec? The /proc view and the race with an exiting init.

Real processes stand in for a container's init; the engine's side (inspect, logs) is a small
stand-in, since the question here is what the check concludes from what the engine says.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from gpucloud.drivers.docker.startcheck import exec_failure, exec_state


def _wait(pred, what: str, limit: float = 10.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if (value := pred()):
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _spawn(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the child too
    proc.wait()


def _exited_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_exec_state_tells_pending_execed_and_gone():
    # A process with no child yet: its init has not exec'd anything.
    alone = _spawn(["sleep", "30"])
    # A shell whose child is another program (sleep): the command was exec'd.
    parent = _spawn(["sh", "-c", "sleep 30 & wait"])
    try:
        assert exec_state(alone.pid) == "pending"
        assert _wait(lambda: exec_state(parent.pid) == "execed", "the child to exec")
    finally:
        _stop(alone)
        _stop(parent)
    assert exec_state(alone.pid) == "gone"
    assert exec_state(0) == "gone"


class _Engine:
    def call(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)


class _InitThatCouldNotExec:
    """The engine said `running` with the init's pid, which exits before /proc is read; asked
    again, the engine says `exited` with the init's code, and the log has its complaint."""

    def __init__(self, pid: int, line: bytes):
        self.pid, self.line, self.reloads = pid, line, 0
        self.status, self.attrs = "created", {}

    def reload(self):
        self.reloads += 1
        if self.reloads == 1:
            self.status, self.attrs = "running", {"State": {"Pid": self.pid}}
        else:
            self.status, self.attrs = "exited", {"State": {"Pid": 0, "ExitCode": 127}}

    def logs(self, **_):
        return self.line


def test_an_init_gone_before_proc_is_read_is_asked_about_again():
    line = b"catatonit: failed to exec pid1: No such file or directory\n"
    container = _InitThatCouldNotExec(_exited_pid(), line)
    # A window of 0: the engine's answer came later than the window (a loaded host). The
    # check must not take the vanished pid for "no view" and call the command started.
    failure = exec_failure(_Engine(), container, window=0.0, local=True)
    assert failure is not None and "failed to exec" in failure
    assert container.reloads == 2


def test_a_pid_that_stays_invisible_falls_back_to_the_window():
    # An engine whose processes this host cannot see (another PID namespace): the same pid
    # reported running twice and never in /proc is "no view", not a wait of a minute.
    class Elsewhere:
        status, attrs, reloads = "created", {}, 0

        def reload(self):
            self.reloads += 1
            self.status, self.attrs = "running", {"State": {"Pid": pid}}

    pid = _exited_pid()
    container = Elsewhere()
    started = time.monotonic()
    assert exec_failure(_Engine(), container, window=0.2, local=True) is None
    assert time.monotonic() - started < 5
    assert container.reloads >= 2


def test_a_command_that_execs_is_started():
    # A real init stand-in: a process whose child execs another program.
    proc = _spawn([sys.executable, "-c", "import subprocess; subprocess.run(['sleep', '30'])"])

    class Running:
        status, attrs = "created", {}

        def reload(self):
            self.status, self.attrs = "running", {"State": {"Pid": proc.pid}}

    try:
        assert exec_failure(_Engine(), Running(), window=0.0, local=True) is None
        assert exec_state(proc.pid) == "execed"
    finally:
        _stop(proc)
