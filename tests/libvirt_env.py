"""The real libvirt host of the tests: the guest image scripts/setup-libvirt.sh caches, a
storage directory QEMU (running as libvirt-qemu) can reach, keys, and SSH into guests.

Guests are small (2 vCPUs at most, 1 GiB, TCG with a capped translation cache) because the
test machines are shared; one booted guest is shared by the slow tests of a module."""

from __future__ import annotations

import io
import os
import subprocess
import time
import uuid
from pathlib import Path

import libvirt
import paramiko
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519

from gpucloud.drivers.libvirt.domain_xml import read_metadata

CACHE = Path(os.environ.get("GPUCLOUD_VM_CACHE", "/var/cache/gpucloud-test"))
IMAGE = "Debian 12"
URI = "qemu:///system"
# Not under /tmp/pytest-of-root: that is 0700, and QEMU runs as libvirt-qemu.
STORAGE_ROOT = Path("/var/lib/gpucloud-test")
BOOT_TIMEOUT = 600.0  # the slowest boot seen here under load was ~150 s


def require_libvirt() -> None:
    """Fail (never skip) when the host is not ready: ./scripts/test sets it up."""
    missing = [p for p in ("debian12.qcow2", "vmlinuz", "initrd.img") if not (CACHE / p).is_file()]
    if missing:
        raise RuntimeError(f"guest image missing in {CACHE} ({', '.join(missing)}): "
                           "run scripts/setup-libvirt.sh")
    try:
        libvirt.open(URI).close()
    except libvirt.libvirtError as exc:
        raise RuntimeError(f"libvirtd does not answer at {URI}: {exc}; "
                           "run scripts/setup-libvirt.sh") from None


def storage_dir() -> str:
    path = STORAGE_ROOT / f"vms-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(STORAGE_ROOT, 0o755)
    return str(path)


def image(**overrides) -> dict:
    out = {"path": str(CACHE / "debian12.qcow2"), "user": "debian",
           "kernel": str(CACHE / "vmlinuz"), "initrd": str(CACHE / "initrd.img")}
    out.update(overrides)
    return out


def config(storage: str, port_range: tuple[int, int], **overrides) -> dict:
    out = {"uri": URI, "domain_type": "qemu", "images": {IMAGE: image()},
           "storage_dir": storage, "network": "user", "public_host": "127.0.0.1",
           "port_range": list(port_range), "tb_cache_mib": 64}
    out.update(overrides)
    return out


class Key:
    """A fresh Ed25519 key pair: the public half goes to the API, the private one logs in."""

    def __init__(self):
        priv = ed25519.Ed25519PrivateKey.generate()
        self.public = priv.public_key().public_bytes(
            ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode() + " test@gpucloud"
        pem = priv.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH,
                                 ser.NoEncryption()).decode()
        self.pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(pem))


def ssh_run(key: Key, host: str, port: int, user: str, command: str,
            attempts: int = 10) -> str:
    """Run one command in the guest over SSH with the key (sshd may still be settling right
    after its banner first answered, hence a few attempts)."""
    last: Exception | None = None
    for _ in range(attempts):
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(host, port=port, username=user, pkey=key.pkey, timeout=30,
                           banner_timeout=60, auth_timeout=60, allow_agent=False,
                           look_for_keys=False)
            _, out, err = client.exec_command(command, timeout=60)
            text = out.read().decode()
            if out.channel.recv_exit_status() != 0:
                raise AssertionError(f"{command!r} failed in the guest: {err.read().decode()}")
            return text
        except (paramiko.SSHException, OSError) as exc:
            last = exc
            time.sleep(3)
        finally:
            client.close()
    raise AssertionError(f"could not log in to {user}@{host}:{port}: {last}")


def domain_names() -> set[str]:
    """`virsh list --all --name`: every domain the host knows, running or not."""
    out = subprocess.run(["virsh", "-c", URI, "list", "--all", "--name"], capture_output=True,
                         text=True, check=True).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def remove_domains(instance_ids) -> None:
    """Cleanup after a test that failed half-way (destroy + undefine, errors ignored)."""
    for iid in instance_ids:
        name = f"gpucloud-{iid}"
        subprocess.run(["virsh", "-c", URI, "destroy", name], capture_output=True)
        subprocess.run(["virsh", "-c", URI, "undefine", name], capture_output=True)


def domains_of(provider_id: str) -> list[str]:
    """Instance ids of every domain (running or not) whose metadata names the provider."""
    conn = libvirt.open(URI)
    try:
        out = []
        for dom in conn.listAllDomains(0):
            meta = read_metadata(dom.XMLDesc(0))
            if meta.get("provider") == provider_id:
                out.append(meta["id"])
        return sorted(out)
    finally:
        conn.close()
