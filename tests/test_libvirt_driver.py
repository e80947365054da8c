"""The libvirt driver against the real libvirtd of this machine, without waiting for a boot.

Domains are defined and started for real here, but no test waits for a guest's SSH: the booted
guests (user networking, a libvirt network, a bridge; logins, the console, create again) are
shared by the tests of test_libvirt_api.py, since each boot costs 20-150 s of the shared
cores."""

from __future__ import annotations

import shutil
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gpucloud.drivers.base import ForwardedPort, WorkloadSpec
from gpucloud.drivers.libvirt import LibvirtDriver
from gpucloud.drivers.libvirt import domain_xml as dx
from gpucloud.drivers.libvirt.driver import neighbour_address
from gpucloud.drivers.libvirt.storage import InstanceFiles
from tests import libvirt_env as le
from tests.procs import free_port

PROVIDER = "prov-driver-test"


def make_driver(storage: str, **overrides) -> LibvirtDriver:
    port = free_port()
    cfg = LibvirtDriver.validate_config(le.config(storage, (port, port), **overrides))
    return LibvirtDriver(PROVIDER, cfg, None)


def make_spec(name: str = "driver-box", port: int | None = None, **overrides) -> WorkloadSpec:
    values = dict(instance_id=str(uuid.uuid4()), provider_id=PROVIDER, workload="vm", name=name,
                  gpu_count=0, gpu_model="none", vcpu=2, memory_gib=1, storage_gib=3,
                  location="test", os_image=le.IMAGE,
                  ports=[ForwardedPort(22, port, "tcp")] if port else [])
    values.update(overrides)
    return WorkloadSpec(**values)


def test_delete_removes_domain_and_files_and_is_safe_to_repeat():
    le.require_libvirt()
    storage = le.storage_dir()
    driver = make_driver(storage)
    spec = make_spec(port=driver.cfg.port_range[0])
    try:
        st = driver.create(spec)
        assert st.phase == "pending", st.reason
        files = Path(storage) / PROVIDER / spec.instance_id
        assert {p.name for p in files.iterdir()} >= {"disk.qcow2", "seed.iso"}
        assert dx.domain_name(spec.instance_id) in le.domain_names()
        driver.delete(spec.instance_id, st.state)
        assert dx.domain_name(spec.instance_id) not in le.domain_names()
        assert not files.exists()
        assert spec.instance_id not in driver.list_owned()
        driver.delete(spec.instance_id, st.state)
        assert driver.status(spec.instance_id, st.state).phase == "gone"
    finally:
        le.remove_domains([spec.instance_id])
        shutil.rmtree(storage, ignore_errors=True)


def test_a_missing_base_image_fails_without_a_domain(tmp_path):
    le.require_libvirt()
    storage = le.storage_dir()
    base = tmp_path / "gone.qcow2"
    base.write_bytes(b"")
    driver = make_driver(storage, images={le.IMAGE: le.image(path=str(base))})
    base.unlink()
    spec = make_spec(port=driver.cfg.port_range[0])
    st = driver.create(spec)
    assert st.phase == "failed"
    assert st.reason == f"The base image {base} of {le.IMAGE} is missing on the host"
    assert dx.domain_name(spec.instance_id) not in le.domain_names()
    other = driver.create(make_spec(port=1, os_image="Windows 95"))
    assert other.phase == "failed" and "no image 'Windows 95'" in other.reason
    shutil.rmtree(storage, ignore_errors=True)


def test_gpu_offer_domain_xml_passes_gpus_through_with_vfio():
    xml = dx.build(dx.DomainSpec(
        instance_id="i-1", provider_id="p-1", title="gpu box", domain_type="kvm", vcpu=8,
        memory_mib=65536, disk_path="/d/disk.qcow2", disk_format="qcow2",
        seed_path="/d/seed.iso", console_path="/d/console.log", network="bridge:br0",
        gpu_devices=["0000:41:00.0", "0000:c1:00.1"]))
    root = ET.fromstring(xml)
    assert root.get("type") == "kvm"
    assert root.find("os/type").get("machine") == "q35"
    assert root.find("cpu").get("mode") == "host-passthrough"
    assert root.find("features/tcg") is None
    hostdevs = root.findall("devices/hostdev")
    assert [(h.get("mode"), h.get("type"), h.get("managed"), h.find("driver").get("name"))
            for h in hostdevs] == [("subsystem", "pci", "yes", "vfio")] * 2
    assert [h.find("source/address").attrib for h in hostdevs] == [
        {"domain": "0x0000", "bus": "0x41", "slot": "0x00", "function": "0x0"},
        {"domain": "0x0000", "bus": "0xc1", "slot": "0x00", "function": "0x1"}]
    assert root.find("devices/interface/source").get("bridge") == "br0"
    assert root.find(f"{{{dx.QEMU_NS}}}commandline") is None
    assert dx.read_metadata(xml) == {"id": "i-1", "provider": "p-1"}


def test_a_libvirt_network_or_bridge_is_a_plain_virtio_nic():
    for network, kind, source in (("network:default", "network", "default"),
                                  ("bridge:virbr0", "bridge", "virbr0")):
        xml = dx.build(dx.DomainSpec(
            instance_id="i-3", provider_id="p-1", title="t", domain_type="qemu", vcpu=1,
            memory_mib=512, disk_path="/d/disk.qcow2", disk_format="qcow2",
            seed_path="/d/s.iso", console_path="/d/c.log", network=network))
        root = ET.fromstring(xml)
        nics = root.findall("devices/interface")
        assert [(n.get("type"), n.find("source").get(kind), n.find("model").get("type"))
                for n in nics] == [(kind, source, "virtio")]
        assert root.find(f"{{{dx.QEMU_NS}}}commandline") is None  # no user network, no forward
        assert "ssh_port" not in dx.read_metadata(xml)


def test_tcg_domain_xml_caps_the_translation_cache_and_forwards_ssh():
    xml = dx.build(dx.DomainSpec(
        instance_id="i-2", provider_id="p-1", title="t", domain_type="qemu", vcpu=1,
        memory_mib=512, disk_path="/d/disk.qcow2", disk_format="qcow2", seed_path="/d/s.iso",
        console_path="/d/c.log", network="user", ssh_port=31022, tb_cache_mib=64))
    root = ET.fromstring(xml)
    assert root.find("features/tcg/tb-cache").text == "64"
    assert root.find("cpu") is None
    cdrom = root.find("devices/disk[@device='cdrom']")
    assert cdrom.find("target").attrib == {"dev": "sda", "bus": "scsi"}
    args = [a.get("value") for a in root.iter(f"{{{dx.QEMU_NS}}}arg")]
    assert "user,id=gcnet0,hostfwd=tcp::31022-:22" in args
    assert any("addr=0x10" in a for a in args)


@pytest.mark.parametrize("change, message", [
    ({"uri": "qemu+ssh://host/system"}, "uri must be one of"),
    ({"domain_type": "xen"}, "domain_type"),
    ({"images": {}}, "images"),
    ({"images": {"X": {"path": "/nope/x.qcow2"}}}, "images.X: path /nope/x.qcow2 does not exist"),
    ({"images": {"X": {"path": "relative.qcow2"}}}, "path must be an absolute path"),
    ({"network": "wifi"}, "network must be user, network:NAME or bridge:NAME"),
    ({"port_range": "40000-30000"}, "port_range"),
    ({"gpus": [{"pci": "41:00.0", "model": "h100"}]}, "pci must look like 0000:41:00.0"),
    ({"gpus": [{"pci": "0000:41:00.0", "model": "h100"}] * 2}, "distinct pci"),
    ({"storage": "/x"}, "storage: Extra inputs are not permitted"),
])
def test_nonsense_configs_are_refused_with_a_reason(change, message):
    cfg = le.config("/var/lib/gpucloud-test/vms", (30000, 30010))
    cfg.update(change)
    with pytest.raises(ValueError) as err:
        LibvirtDriver.validate_config(cfg)
    assert message in str(err.value)


def test_a_guest_that_never_answers_fails_with_the_console_tail():
    """A kernel with no root filesystem (no initrd) panics within seconds and never answers:
    past the boot deadline (1 s) the VM is FAILED with what it printed, without waiting for a
    boot."""
    le.require_libvirt()
    storage = le.storage_dir()
    image = le.image(cmdline="console=ttyS0 panic=0")
    del image["initrd"]
    driver = make_driver(storage, boot_timeout_seconds=1, images={le.IMAGE: image})
    spec = make_spec(port=driver.cfg.port_range[0], vcpu=1)
    try:
        assert driver.create(spec).phase in ("pending", "failed")
        deadline = time.monotonic() + 120
        while (not any("Kernel panic" in line for line in driver.logs(spec.instance_id, None, 5))
               and time.monotonic() < deadline):
            time.sleep(0.5)
        st = driver.status(spec.instance_id, None)
        assert st.phase == "failed"
        assert st.reason.startswith("The VM's SSH server did not answer within 1 s of its "
                                    "start. Last serial console lines: ")
        assert "Kernel panic" in st.reason.split("lines: ", 1)[1]  # what the guest printed
    finally:
        driver.delete(spec.instance_id, None)
        le.remove_domains([spec.instance_id])
        shutil.rmtree(storage, ignore_errors=True)


def test_a_guest_flooding_its_console_leaves_a_bounded_rotated_log():
    """A guest whose init is `yes` prints to the serial console without end: libvirt hands
    the console file to its log daemon (qemu.conf `stdio_handler = "logd"`, the default),
    which rotates it (2 MiB, three old files, its defaults here), so the files stay bounded,
    and the tail is still the guest's latest output."""
    le.require_libvirt()
    storage = le.storage_dir()
    image = le.image(cmdline="root=/dev/vda console=ttyS0 init=/usr/bin/yes")
    driver = make_driver(storage, boot_timeout_seconds=600, images={le.IMAGE: image})
    spec = make_spec(port=driver.cfg.port_range[0], vcpu=1)
    files = InstanceFiles(storage, spec.provider_id, spec.instance_id)
    try:
        assert driver.create(spec).phase == "pending"
        deadline = time.monotonic() + 180
        while not (files.dir / "console.log.0").exists() and time.monotonic() < deadline:
            time.sleep(1)
        sizes = {p.name: p.stat().st_size for p in files.dir.glob("console.log*")}
        assert "console.log.0" in sizes, sizes  # rotated: over 2 MiB printed
        assert all(size <= 2 * 2**20 for size in sizes.values()), sizes
        assert driver.logs(spec.instance_id, None, 3) == ["y", "y", "y"]
    finally:
        driver.delete(spec.instance_id, None)
        le.remove_domains([spec.instance_id])
        shutil.rmtree(storage, ignore_errors=True)


def test_a_bridged_guest_is_found_in_the_hosts_neighbour_table_by_its_mac(tmp_path):
    """libvirt keeps no DHCP lease for a bridge, and its own ARP source fails on this host
    ("wrong nlmsg len"): the driver reads the neighbour table itself. Only complete entries
    (flag 0x2) count; MACs compare without case."""
    table = tmp_path / "arp"
    table.write_text(
        "IP address       HW type     Flags       HW address            Mask     Device\n"
        "192.168.122.77   0x1         0x0         52:54:00:aa:bb:cc     *        virbr0\n"
        "192.0.2.1        0x1         0x2         02:fc:00:00:00:05     *        eth0\n"
        "192.168.122.135  0x1         0x2         52:54:00:4c:b1:24     *        virbr0\n")
    assert neighbour_address(["52:54:00:4C:B1:24"], str(table)) == "192.168.122.135"
    assert neighbour_address(["52:54:00:aa:bb:cc"], str(table)) is None  # incomplete entry
    assert neighbour_address([], str(table)) is None
    assert neighbour_address(["52:54:00:4c:b1:24"], str(tmp_path / "missing")) is None
    xml = dx.build(dx.DomainSpec(
        instance_id="i-4", provider_id="p-1", title="t", domain_type="qemu", vcpu=1,
        memory_mib=512, disk_path="/d/disk.qcow2", disk_format="qcow2", seed_path="/d/s.iso",
        console_path="/d/c.log", network="bridge:virbr0"))
    assert dx.interface_macs(xml) == []  # libvirt assigns the MAC when it defines the domain
    assert dx.interface_macs(xml.replace(
        "<source bridge=\"virbr0\" />", "<source bridge=\"virbr0\" /><mac address=\"52:54:00:01:02:03\" />")) \
        == ["52:54:00:01:02:03"]
