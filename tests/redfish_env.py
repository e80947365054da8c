"""The bare-metal test kit scripts/setup-redfish.sh prepares: libvirt domains as machines,
sushy-emulator as their BMCs, the test OS and wipe images. Helpers to build a provider config
on it and to look at a machine from outside (power state, disk contents)."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import sushy

CACHE = Path(os.environ.get("GPUCLOUD_VM_CACHE", "/var/cache/gpucloud-test")) / "redfish"
STATE = Path(os.environ.get("GPUCLOUD_REDFISH_STATE", "/var/lib/gpucloud-test/redfish"))
BMC_URL = f"http://127.0.0.1:{os.environ.get('GPUCLOUD_REDFISH_PORT', '8470')}"
SSH_BASE = int(os.environ.get("GPUCLOUD_BM_SSH_BASE", "22100"))
URI = "qemu:///system"
IMAGE = "Test OS"
MEDIA_ROOT = Path("/var/lib/gpucloud-test/redfish-media")


def password() -> str:
    return (STATE / "bmc-password").read_text().strip()


def systems() -> dict[str, str]:
    """Machine (domain) name → Redfish System path. Fails (never skips) when the kit is
    not running: ./scripts/test starts it."""
    missing = [p for p in ("vmlinuz", "testos.img", "wipe.img") if not (CACHE / p).is_file()]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} missing in {CACHE}: run scripts/setup-redfish.sh")
    try:
        conn = sushy.Sushy(BMC_URL, username="admin", password=password())
        return {conn.get_system(p).name: p
                for p in conn.get_system_collection().members_identities}
    except Exception as exc:  # the emulator is down: say so plainly
        raise RuntimeError(f"sushy-emulator does not answer at {BMC_URL} ({exc}): "
                           "run scripts/setup-redfish.sh") from None


def machine(i: int, found: dict[str, str], **bmc) -> dict:
    return {"name": f"bm{i}",
            "bmc": {"url": BMC_URL, "system": found[f"gpucloud-bm-{i}"], "username": "admin",
                    "password": password(), "verify_tls": False, **bmc},
            "ssh": {"host": "127.0.0.1", "port": SSH_BASE + i}}


# Seconds of manual clock per poll in the Redfish tests (a poll every second or so): the clock
# moves no faster than wall time, since the provisioning deadline is on it while a boot under
# TCG on a loaded machine took minutes of wall time (the driver's boot timeout is wall time).
CLOCK_STEP = 1

# Under TCG on a loaded machine the kernel's early check of the IO-APIC timer can fail ("Kernel
# panic - not syncing: IO-APIC + timer doesn't work!", seen on a wipe boot): the machine then
# stays on and the wipe times out. `no_timer_check` skips that check (as cloud images of VMs
# do), and `panic=10` reboots a kernel that panics anyway, so the boot media run again.
CMDLINE = "console=ttyS0,115200 no_timer_check panic=10"


def config(media_port: int, machines: list[dict], **overrides) -> dict:
    media = MEDIA_ROOT / uuid.uuid4().hex[:8]
    media.mkdir(parents=True, exist_ok=True)
    out = {"media_url": f"http://127.0.0.1:{media_port}",
           "media_listen": f"127.0.0.1:{media_port}", "media_dir": str(media),
           "images": {IMAGE: {"kernel": str(CACHE / "vmlinuz"),
                              "initrd": str(CACHE / "testos.img"), "cmdline": CMDLINE}},
           "wipe": {"kernel": str(CACHE / "vmlinuz"), "initrd": str(CACHE / "wipe.img"),
                    "cmdline": CMDLINE},
           # Wall-clock bounds: a boot or a wipe under TCG took minutes on a loaded machine.
           "machines": machines, "graceful_off_seconds": 1, "boot_timeout_seconds": 600,
           "wipe_timeout_seconds": 480}
    out.update(overrides)
    return out


def domstate(i: int) -> str:
    return subprocess.run(["virsh", "-c", URI, "domstate", f"gpucloud-bm-{i}"],
                          capture_output=True, text=True, check=True).stdout.strip()


def console_tail(i: int, lines: int = 25) -> str:
    """The end of the machine's serial console (every boot appends to it): what a failure
    message needs to tell a hung boot from a wipe that ran and failed."""
    try:
        text = (STATE / f"gpucloud-bm-{i}.console.log").read_text(errors="replace")
    except OSError as exc:
        return f"(no console log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def disk(i: int) -> Path:
    return STATE / f"gpucloud-bm-{i}.qcow2"


def disk_bytes(i: int, tmp: Path) -> bytes:
    """The machine's whole disk as the OS sees it (qcow2 → raw), read back from outside."""
    raw = tmp / f"bm{i}.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(disk(i)), str(raw)],
                   check=True, capture_output=True)
    return raw.read_bytes()
