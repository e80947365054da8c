"""The libvirt driver against the real libvirtd of this machine, with a real booted guest.

One guest is booted for the module (20-150 s under TCG on a shared machine) and the slow tests
share it; the others define domains without waiting for a boot."""

from __future__ import annotations

import shutil
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import paramiko
import pytest

from gpucloud.drivers.base import ForwardedPort, WorkloadSpec
from gpucloud.drivers.libvirt import LibvirtDriver
from gpucloud.drivers.libvirt import domain_xml as dx
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


def wait_running(driver: LibvirtDriver, spec: WorkloadSpec):
    st = driver.create(spec)
    deadline = time.monotonic() + le.BOOT_TIMEOUT
    while st.phase == "pending" and time.monotonic() < deadline:
        time.sleep(2)
        st = driver.status(spec.instance_id, st.state)
    assert st.phase == "running", (st.phase, st.reason, driver.logs(spec.instance_id, None, 20))
    return st


@pytest.fixture(scope="module")
def guest():
    le.require_libvirt()
    storage = le.storage_dir()
    driver = make_driver(storage)
    key = le.Key()
    spec = make_spec(port=driver.cfg.port_range[0], ssh_key=key.public)
    started = time.monotonic()
    try:
        st = wait_running(driver, spec)
        yield {"driver": driver, "spec": spec, "status": st, "key": key, "storage": storage,
               "boot_seconds": time.monotonic() - started}
    finally:
        driver.delete(spec.instance_id, None)
        driver.close()
        shutil.rmtree(storage, ignore_errors=True)


def test_the_guest_has_the_plans_shape_and_takes_the_customers_key(guest):
    st, spec, key = guest["status"], guest["spec"], guest["key"]
    assert (st.ssh_user, st.ssh_host, st.ssh_port) == ("debian", "127.0.0.1", spec.ports[0].external_port)
    assert st.forwarded_ports == [ForwardedPort(22, spec.ports[0].external_port, "tcp")]
    out = le.ssh_run(key, "127.0.0.1", st.ssh_port, st.ssh_user,
                     "hostname; nproc; grep MemTotal /proc/meminfo; sudo -n true && echo sudo-ok")
    hostname, nproc, meminfo, sudo = out.splitlines()
    assert hostname == spec.name
    assert int(nproc) == spec.vcpu
    mem_kib = int(meminfo.split()[1])
    # The kernel keeps a little for itself: a 1 GiB guest reports ~0.95 GiB.
    assert 0.85 * 1024 ** 2 < mem_kib <= 1024 ** 2
    assert sudo == "sudo-ok"


def test_password_logins_are_refused(guest):
    st = guest["status"]
    transport = paramiko.Transport(("127.0.0.1", st.ssh_port))
    try:
        transport.start_client(timeout=30)
        with pytest.raises(paramiko.BadAuthenticationType) as err:
            transport.auth_password(st.ssh_user, "debian")
        assert "password" not in err.value.allowed_types
        assert "publickey" in err.value.allowed_types
    finally:
        transport.close()


def test_create_again_finds_the_same_domain(guest):
    driver, spec = guest["driver"], guest["spec"]
    again = driver.create(spec)
    assert again.phase == "running" and again.ssh_port == guest["status"].ssh_port
    name = dx.domain_name(spec.instance_id)
    assert name in le.domain_names()
    assert spec.instance_id in driver.list_owned()
    status = driver.status(spec.instance_id, guest["status"].state)
    assert status.phase == "running" and status.state["ready_at"]
    events = [e.message for e in driver.events(spec.instance_id, status.state)]
    assert any(m.startswith("SSH answered") for m in events), events


def test_the_serial_console_is_the_log(guest):
    driver, spec = guest["driver"], guest["spec"]
    lines = driver.logs(spec.instance_id, None, None)
    assert any("Linux version" in line for line in lines), lines[:5]
    assert not any("\x1b" in line for line in lines)
    assert len(driver.logs(spec.instance_id, None, 3)) == 3


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
    le.require_libvirt()
    storage = le.storage_dir()
    driver = make_driver(storage, boot_timeout_seconds=1)
    spec = make_spec(port=driver.cfg.port_range[0], vcpu=1)
    try:
        assert driver.create(spec).phase in ("pending", "failed")
        deadline = time.monotonic() + 120
        while not driver.logs(spec.instance_id, None, 1) and time.monotonic() < deadline:
            time.sleep(1)  # the kernel's first lines on the serial console
        st = driver.status(spec.instance_id, None)
        assert st.phase == "failed"
        assert st.reason.startswith("The VM's SSH server did not answer within 1 s of its "
                                    "start. Last serial console lines: ")
        assert st.reason.split("lines: ", 1)[1].strip()  # what the guest printed so far
    finally:
        driver.delete(spec.instance_id, None)
        le.remove_domains([spec.instance_id])
        shutil.rmtree(storage, ignore_errors=True)
