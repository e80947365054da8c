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


class _SlowToReportTheExit(_InitThatCouldNotExec):
    """Podman on a loaded host: the init exits, and the engine goes on calling it running
    (same pid) for several more inspects before it says exited."""

    def __init__(self, pid: int, line: bytes, running_answers: int):
        super().__init__(pid, line)
        self.running_answers = running_answers

    def reload(self):
        self.reloads += 1
        if self.reloads <= self.running_answers:
            self.status, self.attrs = "running", {"State": {"Pid": self.pid}}
        else:
            self.status, self.attrs = "exited", {"State": {"Pid": 0, "ExitCode": 127}}


def test_an_engine_slow_to_report_the_inits_exit_is_asked_until_it_does():
    line = b"catatonit: failed to exec pid1: No such file or directory\n"
    container = _SlowToReportTheExit(_exited_pid(), line, running_answers=20)
    # (The check before this one took the second "running" with the same vanished pid for
    # "no view" and called the command started.)
    failure = exec_failure(_Engine(), container, window=0.0, local=True)
    assert failure is not None and "failed to exec" in failure
    assert container.reloads == 21


def test_an_init_seen_then_gone_is_waited_for_past_the_patience_for_unseen_pids():
    # The pid was in /proc (pending: nothing exec'd yet), then the init exited; the engine
    # says running for longer than GONE_PATIENCE. A pid once seen here is ours to watch.
    line = b"catatonit: failed to exec pid1: No such file or directory\n"
    init = _spawn(["sleep", "0.3"])
    try:
        container = _SlowToReportTheExit(init.pid, line, running_answers=10**9)
        started = time.monotonic()

        def reload():
            container.running_answers = 10**9 if time.monotonic() - started < 2.5 else 0
            _SlowToReportTheExit.reload(container)

        container.reload = reload
        failure = exec_failure(_Engine(), container, window=0.0, local=True)
    finally:
        init.wait()
    assert failure is not None and "failed to exec" in failure
    assert time.monotonic() - started >= 2.5


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
