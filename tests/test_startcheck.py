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
from types import SimpleNamespace

from gpucloud.drivers.docker import containers, startcheck
from gpucloud.drivers.docker.startcheck import exec_failure, exec_state, pid_view


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


def test_an_init_that_execs_between_the_reads_is_not_taken_for_the_command(monkeypatch):
    # The engine called the container running while its first process was still the
    # runtime (crun) about to exec the init; the init exec'd and forked its child between
    # our reads of the first process and of its children. The child differs from "crun",
    # but it is the init's, not the command: look again.
    parent = _spawn(["sh", "-c", "sleep 30 & wait"])
    try:
        assert _wait(lambda: exec_state(parent.pid) == "execed", "the child to exec")
        real = os.readlink
        first = {"left": 1}

        def readlink(path, *args, **kwargs):
            if path == f"/proc/{parent.pid}/exe" and first["left"]:
                first["left"] -= 1
                return "/usr/bin/crun"  # the first read, before the exec
            return real(path, *args, **kwargs)

        monkeypatch.setattr(os, "readlink", readlink)
        assert exec_state(parent.pid) == "pending"
        assert exec_state(parent.pid) == "execed"  # looked at again: the child is the command
    finally:
        _stop(parent)


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
    failure = exec_failure(_Engine(), container, window=0.0, view=True)
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
    failure = exec_failure(_Engine(), container, window=0.0, view=True)
    assert failure is not None and "failed to exec" in failure
    assert container.reloads == 21


def test_an_init_never_seen_is_waited_for_while_the_engine_calls_it_running():
    # The init failed to exec and exited before the first look into /proc (its pid was never
    # seen here); Podman on a loaded host went on calling it running for seconds (CI). With a
    # view into the engine's PIDs, a pid not in /proc is an exited init: ask until the engine
    # says so, however long that takes (within LOCAL_LIMIT), never fall back to the window.
    line = b"catatonit: failed to exec pid1: No such file or directory\n"
    container = _SlowToReportTheExit(_exited_pid(), line, running_answers=10**9)
    started = time.monotonic()

    def reload():
        container.running_answers = 10**9 if time.monotonic() - started < 3.0 else 0
        _SlowToReportTheExit.reload(container)

    container.reload = reload
    failure = exec_failure(_Engine(), container, window=0.0, view=True)
    assert failure is not None and "failed to exec" in failure
    assert time.monotonic() - started >= 3.0


def test_an_init_caught_exiting_is_gone_and_one_unreadable_look_keeps_the_view(monkeypatch):
    # Reading an exiting init's children can fail with ESRCH (a file opened while it was
    # there): that is an exited init, not a host without a view into /proc.
    alive = _spawn(["sleep", "30"])
    try:
        def vanishing(path, *args, **kwargs):
            raise ProcessLookupError(3, "No such process")

        monkeypatch.setattr(startcheck, "open", vanishing, raising=False)
        assert exec_state(alive.pid) == "gone"
    finally:
        monkeypatch.undo()
        _stop(alive)
    # And a look that could not read it at all, once, does not drop the view: with a window
    # of 0 the check would call the command started; it asks on until the engine reports
    # the exit and the init's complaint.
    line = b"catatonit: failed to exec pid1: No such file or directory\n"
    container = _SlowToReportTheExit(_exited_pid(), line, running_answers=5)
    looks = iter(["unknown", "pending", "unknown", "gone", "gone"])
    monkeypatch.setattr(startcheck, "exec_state", lambda pid: next(looks, "gone"))
    failure = exec_failure(_Engine(), container, window=0.0, view=True)
    assert failure is not None and "failed to exec" in failure
    assert container.reloads == 6


def test_an_init_that_cannot_be_read_look_after_look_leaves_the_window_to_decide(
        monkeypatch):
    container = _SlowToReportTheExit(_exited_pid(), b"", running_answers=10**9)
    monkeypatch.setattr(startcheck, "exec_state", lambda pid: "unknown")
    started = time.monotonic()
    assert exec_failure(_Engine(), container, window=0.0, view=True) is None
    assert container.reloads == startcheck.UNKNOWN_LOOKS and time.monotonic() - started < 5


def test_without_a_view_the_window_decides():
    # An engine whose processes this host cannot see: its pid is never in /proc, and a
    # container still running after the window counts as started, without a wait of a minute.
    class Elsewhere:
        status, attrs, reloads = "created", {}, 0

        def reload(self):
            self.reloads += 1
            self.status, self.attrs = "running", {"State": {"Pid": pid}}

    pid = _exited_pid()
    container = Elsewhere()
    started = time.monotonic()
    assert exec_failure(_Engine(), container, window=0.2, view=False) is None
    assert 0.2 <= time.monotonic() - started < 5
    assert container.reloads >= 2


def _serve_unix(argv_prefix: list[str], path: str) -> subprocess.Popen:
    """A process listening on a unix socket at `path`, started under `argv_prefix`."""
    code = ("import socket, time; s = socket.socket(socket.AF_UNIX); "
            f"s.bind({path!r}); s.listen(); time.sleep(60)")
    proc = subprocess.Popen([*argv_prefix, sys.executable, "-c", code])
    _wait(lambda: os.path.exists(path), "the socket")
    return proc


def test_pid_view_tells_an_engine_in_our_pid_namespace_from_one_elsewhere(tmp_path):
    here = _serve_unix([], str(tmp_path / "here.sock"))
    # The same program in a PID namespace of its own (root: the test command runs as root).
    elsewhere = _serve_unix(["unshare", "--pid", "--fork", "--kill-child"],
                            str(tmp_path / "elsewhere.sock"))
    try:
        assert pid_view(str(tmp_path / "here.sock")) is True
        assert pid_view(str(tmp_path / "elsewhere.sock")) is False
        # No engine there at all: nothing known, asked again next time.
        assert pid_view(str(tmp_path / "nobody.sock")) is None
    finally:
        for proc in (here, elsewhere):
            proc.kill()
            proc.wait()


def test_a_command_that_execs_is_started():
    # A real init stand-in: a process whose child execs another program.
    proc = _spawn([sys.executable, "-c", "import subprocess; subprocess.run(['sleep', '30'])"])

    class Running:
        status, attrs = "created", {}

        def reload(self):
            self.status, self.attrs = "running", {"State": {"Pid": proc.pid}}

    try:
        assert exec_failure(_Engine(), Running(), window=0.0, view=True) is None
        assert exec_state(proc.pid) == "execed"
    finally:
        _stop(proc)


def test_a_view_not_known_yet_is_asked_again_at_the_next_check(monkeypatch):
    # The engine's socket could not be asked at the first check (a busy engine): that check
    # goes by the window, and the next one asks again instead of keeping "no view" for good.
    answers = iter([None, True])
    monkeypatch.setattr(containers, "pid_view", lambda path: next(answers))
    views = []
    monkeypatch.setattr(containers, "exec_failure",
                        lambda engine, container, window, view: views.append(view))
    cfg = SimpleNamespace(is_local=True, socket_path="/run/engine.sock", start_check_seconds=0.1)
    checks = containers.Containers(engine=None, cfg=cfg, provider_id="p")
    for _ in range(3):
        checks.exec_failure(None)
    assert views == [False, True, True]

