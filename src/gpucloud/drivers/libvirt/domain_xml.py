"""Domain XML for one instance, and reading our metadata back out of a defined domain.

Choices and why:
- q35 with the seed CD-ROM on virtio-scsi: Debian's cloud kernel has no AHCI driver, so a
  SATA CD-ROM (q35's default) would be invisible and the guest would boot without its key.
- User networking is a QEMU `-netdev user` with a host forward, given through
  `<qemu:commandline>`: this libvirt's own `<interface type='user'>` forwards ports only with
  the passt backend, which it does not support. The NIC gets an explicit PCI address, or it
  clashes with the addresses libvirt assigns to its own devices.
- Under TCG (`domain_type: qemu`) the translation cache is capped: QEMU's default reserves
  1 GiB per VM. `host-passthrough` is for KVM only (it hangs TCG here).
- A virtio RNG: a freshly booted guest generates its SSH host keys, and starving for entropy
  under emulation delays sshd.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

NS = "urn:gpucloud:libvirt:1"  # our metadata namespace (libvirt wants a URI; no network use)
NS_PREFIX = "gpucloud"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
NAME_PREFIX = "gpucloud-"
NIC_PCI_SLOT = "0x10"  # free on q35's pcie.0: libvirt fills root ports from slot 1 upwards
UUID_NS = uuid.UUID("6f0d4e0a-8d52-4f7e-9b7f-3c1c8c1b5a11")


def domain_name(instance_id: str) -> str:
    return f"{NAME_PREFIX}{instance_id}"


def domain_uuid(instance_id: str) -> str:
    """Stable per instance: defining the same instance twice names the same domain."""
    return str(uuid.uuid5(UUID_NS, instance_id))


@dataclass
class DomainSpec:
    instance_id: str
    provider_id: str
    title: str
    domain_type: str  # kvm | qemu
    vcpu: int
    memory_mib: int
    disk_path: str
    disk_format: str
    seed_path: str
    console_path: str
    network: str  # user | network:NAME | bridge:NAME
    ssh_port: int | None = None  # host port forwarded to the guest's 22 (network user)
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    gpu_devices: list[str] = field(default_factory=list)
    tb_cache_mib: int = 128
    extra_metadata: dict[str, str] = field(default_factory=dict)  # login user, image, start


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _pci_address(parent: ET.Element, pci: str) -> None:
    dom, bus, rest = pci.split(":")
    slot, function = rest.split(".")
    _sub(parent, "address", domain=f"0x{dom}", bus=f"0x{bus}", slot=f"0x{slot}",
         function=f"0x{function}")


def build(d: DomainSpec) -> str:
    ET.register_namespace("qemu", QEMU_NS)
    ET.register_namespace(NS_PREFIX, NS)
    root = ET.Element("domain", type=d.domain_type)
    _sub(root, "name", domain_name(d.instance_id))
    _sub(root, "uuid", domain_uuid(d.instance_id))
    _sub(root, "title", d.title.replace("\n", " ")[:200])
    meta = _sub(root, "metadata")
    ET.SubElement(meta, f"{{{NS}}}instance", metadata_attrs(d))
    _sub(root, "memory", str(d.memory_mib), unit="MiB")
    _sub(root, "vcpu", str(d.vcpu))
    os_el = _sub(root, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="q35")
    if d.kernel:
        _sub(os_el, "kernel", d.kernel)
        if d.initrd:
            _sub(os_el, "initrd", d.initrd)
        _sub(os_el, "cmdline", d.cmdline or "")
    else:
        _sub(os_el, "boot", dev="hd")
    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if d.domain_type == "qemu":
        tcg = _sub(features, "tcg")
        _sub(tcg, "tb-cache", str(d.tb_cache_mib), unit="MiB")
    else:
        _sub(root, "cpu", mode="host-passthrough")
    _sub(root, "clock", offset="utc")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    dev = _sub(root, "devices")
    disk = _sub(dev, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type=d.disk_format, discard="unmap")
    _sub(disk, "source", file=d.disk_path)
    _sub(disk, "target", dev="vda", bus="virtio")
    _sub(dev, "controller", type="scsi", index="0", model="virtio-scsi")
    cd = _sub(dev, "disk", type="file", device="cdrom")
    _sub(cd, "driver", name="qemu", type="raw")
    _sub(cd, "source", file=d.seed_path)
    _sub(cd, "target", dev="sda", bus="scsi")
    _sub(cd, "readonly")
    kind, _, name = d.network.partition(":")
    if kind in ("network", "bridge"):
        nic = _sub(dev, "interface", type=kind)
        _sub(nic, "source", **{kind: name})
        _sub(nic, "model", type="virtio")
    serial = _sub(dev, "serial", type="file")
    _sub(serial, "source", path=d.console_path)
    _sub(serial, "target", port="0")
    for pci in d.gpu_devices:
        host = _sub(dev, "hostdev", mode="subsystem", type="pci", managed="yes")
        _sub(host, "driver", name="vfio")
        _pci_address(_sub(host, "source"), pci)
    rng = _sub(dev, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    _sub(dev, "memballoon", model="none")
    if kind == "user":
        cmd = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
        forward = f",hostfwd=tcp::{d.ssh_port}-:22" if d.ssh_port else ""
        for arg in ("-netdev", f"user,id=gcnet0{forward}", "-device",
                    f"virtio-net-pci,netdev=gcnet0,bus=pcie.0,addr={NIC_PCI_SLOT}"):
            ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=arg)
    return ET.tostring(root, encoding="unicode")


def metadata_attrs(d: DomainSpec) -> dict[str, str]:
    out = {"id": d.instance_id, "provider": d.provider_id, **d.extra_metadata}
    if d.ssh_port:
        out["ssh_port"] = str(d.ssh_port)
    return out


def read_metadata(xml: str) -> dict[str, str]:
    """Our attributes from a domain's XML (empty when the domain is not ours)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    el = root.find(f"metadata/{{{NS}}}instance")
    return dict(el.attrib) if el is not None else {}


def interface_macs(xml: str) -> list[str]:
    """MAC addresses of a defined domain's NICs (libvirt assigns them at define)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return []
    return [m.get("address") for m in root.findall("devices/interface/mac") if m.get("address")]
