"""The real libvirt host of the tests: the guest image scripts/setup-libvirt.sh caches, a
storage directory QEMU (running as libvirt-qemu) can reach, keys, and SSH into guests.

Guests are small (2 vCPUs at most, 1 GiB, TCG with a capped translation cache) because the
test machines are shared, and few: each boot costs 20-150 s of two shared cores, so the guests
of a module boot together once and its tests share them (see test_libvirt_api.py)."""

from __future__ import annotations

import io
import ipaddress
import os
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import paramiko
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519

from gpucloud.drivers.libvirt.domain_xml import read_metadata

CACHE = Path(os.environ.get("GPUCLOUD_VM_CACHE", "/var/cache/gpucloud-test"))
IMAGE = "Debian 12"
URI = "qemu:///system"
NETWORK = "default"  # libvirt's NAT network; scripts/setup-libvirt.sh defines and starts it
# Not under /tmp/pytest-of-root: that is 0700, and QEMU runs as libvirt-qemu.
STORAGE_ROOT = Path("/var/lib/gpucloud-test")
# Four guests booting together took over 10 min while the 2 cores were loaded 8 times over
# (other test runs and benchmarks); idle, one boots in 20-30 s. A slow pass beats a false fail.
BOOT_TIMEOUT = 1200.0


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


def require_network(name: str = NETWORK) -> tuple[str, ipaddress.IPv4Network]:
    """The bridge and IPv4 subnet of an active libvirt network; fails (never skips) when the
    network is missing or stopped."""
    conn = libvirt.open(URI)
    try:
        try:
            net = conn.networkLookupByName(name)
        except libvirt.libvirtError as exc:
            raise RuntimeError(f"libvirt network {name!r} is not defined ({exc}): "
                               "run scripts/setup-libvirt.sh") from None
        if not net.isActive():
            raise RuntimeError(f"libvirt network {name!r} is not running: "
                               "run scripts/setup-libvirt.sh")
        ip = ET.fromstring(net.XMLDesc(0)).find("ip")
        subnet = ipaddress.ip_network(f"{ip.get('address')}/{ip.get('netmask')}", strict=False)
        return net.bridgeName(), subnet
    finally:
        conn.close()


def storage_dir() -> str:
    path = STORAGE_ROOT / f"vms-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(STORAGE_ROOT, 0o755)
    return str(path)


# systemd gives up on a device after 90 s: on a machine loaded 8 times over, the guest's ttyS0
# came later than that and the serial console got no login prompt (tests read it there).
# `no_timer_check`: the kernel's early IO-APIC timer check failed a Redfish machine's boot
# under TCG on a loaded machine (a panic); see tests/redfish_env.py.
CMDLINE = ("root=/dev/vda console=ttyS0 systemd.default_device_timeout_sec=900 "
           "no_timer_check panic=10")


def image(**overrides) -> dict:
    out = {"path": str(CACHE / "debian12.qcow2"), "user": "debian",
           "kernel": str(CACHE / "vmlinuz"), "initrd": str(CACHE / "initrd.img"),
           "cmdline": CMDLINE}
    out.update(overrides)
    return out


def config(storage: str, port_range: tuple[int, int], **overrides) -> dict:
    out = {"uri": URI, "domain_type": "qemu", "images": {IMAGE: image()},
           "storage_dir": storage, "network": "user", "public_host": "127.0.0.1",
           "port_range": list(port_range), "tb_cache_mib": 64,
           "boot_timeout_seconds": BOOT_TIMEOUT}
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


def domain_xml(name: str) -> ET.Element:
    """`virsh dumpxml` of a running domain, parsed."""
    out = subprocess.run(["virsh", "-c", URI, "dumpxml", name], capture_output=True, text=True,
                         check=True).stdout
    return ET.fromstring(out)


def network_leases(name: str = NETWORK) -> dict[str, str]:
    """MAC → IPv4 address of every DHCP lease the libvirt network's dnsmasq handed out."""
    conn = libvirt.open(URI)
    try:
        leases = conn.networkLookupByName(name).DHCPLeases()
    finally:
        conn.close()
    return {lease["mac"]: lease["ipaddr"] for lease in leases
            if lease["type"] == libvirt.VIR_IP_ADDR_TYPE_IPV4}


def neighbour_mac(address: str) -> str | None:
    """The MAC the host's neighbour (ARP) table holds for an address on a local link."""
    out = subprocess.run(["ip", "neigh", "show", address], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else None


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
