"""The VM console log read from its end: a guest that floods its console costs a poll of its
logs a bounded read, and a tail of a few lines is the end of the whole log."""

from __future__ import annotations

from gpucloud.drivers.libvirt import storage
from gpucloud.drivers.libvirt.driver import _plain
from gpucloud.drivers.libvirt.storage import InstanceFiles


def _files(tmp_path, content: bytes) -> InstanceFiles:
    files = InstanceFiles(str(tmp_path), "p1", "i1")
    files.dir.mkdir(parents=True)
    files.console.write_bytes(content)
    return files


def test_a_flooded_console_is_read_from_its_last_mib(tmp_path):
    # 3 MiB of numbered lines: the whole-log read is the lines of the last MiB, in order.
    lines = [f"line {n:07d} " + "x" * 50 for n in range(3 * 2**20 // 64)]
    files = _files(tmp_path, ("\r\n".join(lines) + "\r\n").encode())
    whole = files.console_tail(None)
    assert whole[-1] == lines[-1] and whole == lines[-len(whole):]
    kept = sum(len(line) + 2 for line in whole)
    assert storage.CONSOLE_READ_LIMIT - 2 * 64 < kept <= storage.CONSOLE_READ_LIMIT
    assert files.console_tail(5) == lines[-5:]


def test_a_tail_looks_past_blank_and_escape_only_lines(tmp_path):
    # The last 200 KB are blank lines and bare escapes (a guest clearing its screen): a tail
    # reads further back than its first chunk for the lines before them.
    text = "\n".join(f"boot step {n}" for n in range(100)) + "\n"
    text += "\x1b[2J\x1b[H\n" * 20_000 + "\n" * 50_000
    files = _files(tmp_path, text.encode())
    assert len(text) > 3 * storage.CONSOLE_CHUNK
    assert files.console_tail(3, _plain) == ["boot step 97", "boot step 98", "boot step 99"]
    # Escapes are removed from what is shown, blank lines dropped.
    files = _files(tmp_path / "b", b"\x1b[32mOK\x1b[0m Started sshd\n\n\x1b]0;title\x07login:\n")
    assert files.console_tail(None, _plain) == ["OK Started sshd", "login:"]


def test_a_short_or_missing_console(tmp_path):
    files = _files(tmp_path, b"one\ntwo\n")
    assert files.console_tail(None) == ["one", "two"]
    assert files.console_tail(5) == ["one", "two"]
    assert InstanceFiles(str(tmp_path), "p1", "nope").console_tail(3) == []


def test_a_line_cut_by_the_window_is_left_out(tmp_path):
    # One line longer than the whole window: nothing of it is shown as if it were a line.
    files = _files(tmp_path, b"head\n" + b"y" * (storage.CONSOLE_READ_LIMIT + 10) + b"\ntail\n")
    assert files.console_tail(None) == ["tail"]
    assert files.console_tail(2) == ["tail"]
