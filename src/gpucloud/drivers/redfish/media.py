"""Boot media: a per-instance ISO (kernel, initrd, and an appended initrd holding the NoCloud
seed), and the small file server BMCs fetch it from.

Why the seed is an appended initrd inside the ISO: a BMC has one virtual CD, so there is no
second drive for a `cidata` volume, and the customer's key must travel in the one ISO. Linux
unpacks every initrd it is given over the same root, so the seed lands in
/var/lib/cloud/seed/nocloud/ beside whatever the OS image brings.

Why gpucloud serves the media itself from a file server of its own (not an API route): BMCs
sit on a management network that should not reach the customer API, and a driver touches no
database, so the media cannot be looked up by a route. The server serves only
`/<token>.iso` files from `media_dir`, where the token is 32 random bytes (unguessable), and
refuses (and deletes) files older than `media_ttl_seconds`. Several server processes may share
one `media_dir`: whichever binds the port serves the ISOs of all of them.
"""

from __future__ import annotations

import http.server
import logging
import os
import re
import secrets
import shutil
import socketserver
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from gpucloud.drivers.base import DriverError

log = logging.getLogger("gpucloud.redfish.media")

ISOLINUX_BIN = "/usr/lib/ISOLINUX/isolinux.bin"
LDLINUX_C32 = "/usr/lib/syslinux/modules/bios/ldlinux.c32"
TOKEN_RE = re.compile(r"^/([A-Za-z0-9_-]{43})\.iso$")
SEED_DIR = "var/lib/cloud/seed/nocloud"


class MediaError(DriverError):
    pass


def _cpio_entry(name: str, data: bytes, mode: int) -> bytes:
    """One entry of a `newc` cpio archive (what the kernel unpacks as an initramfs)."""
    encoded = name.encode() + b"\0"
    fields = [0, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def seed_initrd(user_data: str, meta_data: str) -> bytes:
    """An uncompressed initrd with the NoCloud seed (directories first, as cpio wants)."""
    out = b""
    parts = SEED_DIR.split("/")
    for i in range(1, len(parts) + 1):
        out += _cpio_entry("/".join(parts[:i]), b"", 0o040755)
    out += _cpio_entry(f"{SEED_DIR}/user-data", user_data.encode(), 0o100600)
    out += _cpio_entry(f"{SEED_DIR}/meta-data", meta_data.encode(), 0o100644)
    return out + _cpio_entry("TRAILER!!!", b"", 0)


def build_iso(dest: Path, kernel: str, initrd: str, cmdline: str, seed: bytes | None) -> None:
    """A BIOS-bootable ISO (isolinux) that boots `kernel` with `initrd` (+ the seed)."""
    for path in (ISOLINUX_BIN, LDLINUX_C32):
        if not os.path.isfile(path):
            raise MediaError(f"{path} is missing on the gpucloud server (install isolinux "
                             "and syslinux-common)")
    with tempfile.TemporaryDirectory(dir=dest.parent) as work:
        tree = Path(work) / "iso"
        (tree / "isolinux").mkdir(parents=True)
        (tree / "boot").mkdir()
        shutil.copy(ISOLINUX_BIN, tree / "isolinux" / "isolinux.bin")
        shutil.copy(LDLINUX_C32, tree / "isolinux" / "ldlinux.c32")
        try:
            shutil.copy(kernel, tree / "boot" / "vmlinuz")
            shutil.copy(initrd, tree / "boot" / "initrd.img")
        except OSError as exc:
            raise MediaError(f"cannot read the boot image: {exc}") from None
        initrds = "/boot/initrd.img"
        if seed is not None:
            (tree / "boot" / "seed.img").write_bytes(seed)
            initrds += ",/boot/seed.img"
        (tree / "isolinux" / "isolinux.cfg").write_text(
            "DEFAULT boot\nPROMPT 0\nTIMEOUT 0\nLABEL boot\n  KERNEL /boot/vmlinuz\n"
            f"  INITRD {initrds}\n  APPEND {cmdline}\n")
        tmp = Path(work) / "out.iso"
        try:
            done = subprocess.run(
                ["genisoimage", "-quiet", "-o", str(tmp), "-b", "isolinux/isolinux.bin",
                 "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4",
                 "-boot-info-table", "-R", "-J", "-V", "GPUCLOUD", str(tree)],
                capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MediaError(f"genisoimage failed: {exc}") from None
        if done.returncode != 0:
            raise MediaError(f"genisoimage failed: {' '.join(done.stderr.split())[:300]}")
        os.chmod(tmp, 0o644)
        tmp.rename(dest)


class MediaStore:
    """ISOs in `media_dir`: `<token>.iso`, plus `by-key/<key>` naming the token of a key
    (an instance, or the wipe of an instance) so that a retried step finds its ISO again."""

    def __init__(self, media_dir: str, media_url: str, ttl_seconds: float):
        self.dir = Path(media_dir)
        self.url = media_url.rstrip("/")
        self.ttl = ttl_seconds

    def ensure(self, key: str, build) -> str:
        """URL of the ISO for `key`, built with `build(path)` unless it exists and is fresh."""
        (self.dir / "by-key").mkdir(parents=True, exist_ok=True)
        ref = self.dir / "by-key" / key
        token = ref.read_text().strip() if ref.exists() else ""
        iso = self.dir / f"{token}.iso"
        if not token or not iso.exists() or self.expired(iso):
            token = secrets.token_urlsafe(32)
            iso = self.dir / f"{token}.iso"
            build(iso)
            ref.write_text(token)
        return f"{self.url}/{token}.iso"

    def drop(self, key: str) -> None:
        ref = self.dir / "by-key" / key
        try:
            token = ref.read_text().strip()
        except OSError:
            return
        (self.dir / f"{token}.iso").unlink(missing_ok=True)
        ref.unlink(missing_ok=True)

    def expired(self, path: Path) -> bool:
        try:
            return time.time() - path.stat().st_mtime > self.ttl
        except OSError:
            return True


class _Handler(http.server.BaseHTTPRequestHandler):
    store: MediaStore

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        m = TOKEN_RE.match(self.path.split("?", 1)[0])
        path = self.store.dir / f"{m.group(1)}.iso" if m else None
        if path is None or not path.is_file() or self.store.expired(path):
            if path is not None and path.is_file():
                path.unlink(missing_ok=True)
            self.send_error(404)
            return
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if body:
            with open(path, "rb") as fh:
                shutil.copyfileobj(fh, self.wfile)

    def log_message(self, fmt: str, *args) -> None:
        log.debug("media: " + fmt, *args)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class MediaServer:
    """Serves a MediaStore on `listen` (host:port) in a background thread."""

    def __init__(self, store: MediaStore, listen: str):
        self.store = store
        host, _, port = listen.rpartition(":")
        self.address = (host or "127.0.0.1", int(port))
        self._server: _Server | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._server is not None:
                return
            handler = type("Handler", (_Handler,), {"store": self.store})
            try:
                self._server = _Server(self.address, handler)
            except OSError as exc:
                # Another gpucloud process on this host serves the same media_dir.
                log.info("media server not started on %s:%s: %s", *self.address, exc)
                return
            threading.Thread(target=self._server.serve_forever, name="redfish-media",
                             daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None
