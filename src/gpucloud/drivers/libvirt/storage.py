"""Per-instance files on the host: the disk overlay, the cloud-init seed, the console log.

Layout: `<storage_dir>/<provider id>/<instance id>/{disk.qcow2, seed.iso, console.log}`, so
several providers can share one storage_dir and the directories of one provider can be listed
for cleanup. Every file is written under a temporary name and renamed into place: a crash
mid-write leaves no half file that a retried create would take for a finished one.

Directories are 0755 and files 0644 because QEMU runs as `libvirt-qemu`, not as this server;
libvirt itself hands the disk and seed to that user while the domain runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from gpucloud.drivers.base import DriverError

COMMAND_TIMEOUT = 120
# Bytes of the console log's end that a read looks at: at most this much (a whole-log read,
# or a tail among blank lines), first a chunk (a tail of a few lines).
CONSOLE_READ_LIMIT = 1 << 20
CONSOLE_CHUNK = 64 << 10


class StorageError(DriverError):
    pass


def _run(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StorageError(f"{args[0]} failed: {exc}") from None
    if done.returncode != 0:
        raise StorageError(f"{args[0]} failed: {' '.join(done.stderr.split())[:500]}")
    return done.stdout


class InstanceFiles:
    def __init__(self, storage_dir: str, provider_id: str, instance_id: str):
        self.dir = Path(storage_dir) / provider_id / instance_id
        self.disk = self.dir / "disk.qcow2"
        self.seed = self.dir / "seed.iso"
        self.console = self.dir / "console.log"

    def ensure_dir(self) -> None:
        self.dir.parent.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        for d in (self.dir.parent, self.dir):
            d.mkdir(mode=0o755, exist_ok=True)
            os.chmod(d, 0o755)

    def make_overlay(self, base: str, size_gib: int) -> None:
        """A qcow2 overlay on `base`, as large as the plan's storage (never smaller than the
        base, which qemu-img refuses)."""
        if self.disk.exists():
            return
        info = json.loads(_run(["qemu-img", "info", "--output=json", base]))
        size = max(size_gib * 1024 ** 3, int(info.get("virtual-size") or 0))
        tmp = self.disk.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", info.get("format", "qcow2"),
              "-b", base, str(tmp), str(size)])
        os.chmod(tmp, 0o644)
        tmp.rename(self.disk)

    def make_seed(self, user_data: str, meta_data: str) -> None:
        """The NoCloud seed: an ISO9660 volume labelled `cidata` holding the two files."""
        if self.seed.exists():
            return
        with tempfile.TemporaryDirectory(dir=self.dir) as work:
            src = Path(work) / "cidata"
            src.mkdir()
            (src / "user-data").write_text(user_data)
            (src / "meta-data").write_text(meta_data)
            tmp = Path(work) / "seed.iso"
            _run(["genisoimage", "-quiet", "-output", str(tmp), "-volid", "cidata",
                  "-joliet", "-rock", str(src / "user-data"), str(src / "meta-data")])
            os.chmod(tmp, 0o644)
            tmp.rename(self.seed)

    def console_tail(self, lines: int | None, clean: Callable[[str], str] = str) -> list[str]:
        """The console's last `lines` non-blank lines (all of them when None), each through
        `clean`, read from the end of the file and never more than CONSOLE_READ_LIMIT bytes of
        it: QEMU appends whatever the guest prints, and a guest flooding its console would
        otherwise have every poll of its logs read the whole file into memory."""
        try:
            with self.console.open("rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                most = min(size, CONSOLE_READ_LIMIT)
                span = most if lines is None else min(most, CONSOLE_CHUNK)
                while True:
                    fh.seek(size - span)
                    out = _console_lines(fh.read(span), clean, cut=span < size)
                    if lines is None or len(out) >= lines or span >= most:
                        break
                    span = min(most, span * 4)  # blank or long lines: look further back
        except OSError:
            return []
        return out[-lines:] if lines else out

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.exists():
            raise StorageError(f"could not remove {self.dir}")


def _console_lines(raw: bytes, clean: Callable[[str], str], cut: bool) -> list[str]:
    out = raw.decode("utf-8", errors="replace").replace("\r", "").splitlines()
    if cut and out:
        out = out[1:]  # begins mid-line (or mid-character): not a line the guest printed
    out = [clean(line) for line in out]
    return [line for line in out if line.strip()]


def instance_dirs(storage_dir: str, provider_id: str) -> list[str]:
    """Instance ids that still have files under the provider's directory."""
    try:
        return sorted(p.name for p in (Path(storage_dir) / provider_id).iterdir() if p.is_dir())
    except OSError:
        return []


def user_data(user: str, ssh_key: str | None, hostname: str) -> str:
    """cloud-config: the customer's key on the image's user, password login off.

    `ssh_pwauth` is deliberately absent: it restarts sshd after it came up, racing the first
    login; the image has `PasswordAuthentication no` built in instead."""
    doc = {
        "hostname": hostname,
        "fqdn": hostname,
        "preserve_hostname": False,
        "users": [{"name": user, "shell": "/bin/bash", "lock_passwd": True,
                   "sudo": "ALL=(ALL) NOPASSWD:ALL",
                   "ssh_authorized_keys": [ssh_key] if ssh_key else []}],
        "disable_root": True,
    }
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)


def meta_data(instance_id: str, hostname: str) -> str:
    return yaml.safe_dump({"instance-id": instance_id, "local-hostname": hostname},
                          sort_keys=False)


def hostname_for(name: str, instance_id: str) -> str:
    """The instance name as a valid hostname (RFC 1123 label)."""
    out = "".join(c if c.isalnum() or c == "-" else "-" for c in name.lower()).strip("-")
    return out[:63].strip("-") or f"vm-{instance_id[:8]}"
