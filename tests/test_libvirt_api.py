"""Real VMs through the public API: `libvirt` providers on this machine's libvirtd, guests
booted under TCG, logged into over SSH with the key given at deploy.

Booting is what costs here (20-150 s of two shared cores per guest), so the module boots its
guests once, together, and its tests share them (`cloud`, in the order of this file: the last
ones rename, remove and terminate):
- alpha and beta on one provider with QEMU user networking (each its own forwarded port, disk
  and key);
- gamma on a provider with `network: network:default` (libvirt's NAT network: the guest's own
  address, found in the network's DHCP leases);
- delta on a provider with `network: bridge:<that network's bridge>` (found through ARP).

The shared guests run on one SQLite database of their own, beside the per-test databases. The
database side of VMs (deploy, reserve, rename, terminate, refunds) runs on SQLite and PostgreSQL
with the simulated driver (test_vms.py), as does a server killed during a deploy
(test_server_process.py); a real guest behind a killed server boots on PostgreSQL in
test_libvirt_restart.py. The tests below that boot nothing run on both backends.

The lifecycle runs through POST /admin/clock (manual clock): each small step runs the due work
against the real hypervisor, while the guests boot in wall time beside it."""

from __future__ import annotations

import ipaddress
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from gpucloud.app import create_app
from gpucloud.catalog.models import Provider
from gpucloud.cli.main import app as cli_app
from gpucloud.db import Database
from gpucloud.drivers.base import ForwardedPort, WorkloadSpec
from gpucloud.instances import reconcile
from gpucloud.instances.models import PortAllocation
from gpucloud.migrations.run import upgrade
from gpucloud.runtime import Runtime
from tests import libvirt_env as le
from tests.conftest import ADMIN_KEY, LiveServer, make_settings, reset_database
from tests.factories import Api, money
from tests.procs import free_port

PRICE = "0.5"
BALANCE = 100


@dataclass
class Cloud:
    api: Api
    account_id: str
    headers: dict
    storage: str
    ports: tuple[int, int]
    subnet: ipaddress.IPv4Network
    bridge: str
    providers: dict[str, str] = field(default_factory=dict)  # user | network | bridge → id
    ids: dict[str, str] = field(default_factory=dict)  # VM name → instance id
    keys: dict[str, le.Key] = field(default_factory=dict)
    details: dict[str, dict] = field(default_factory=dict)  # VM name → details once settled

    def driver(self, kind: str = "user"):
        pid = self.providers[kind]
        with self.api.rt.db.read() as s:
            config = s.get(Provider, pid).config
        return self.api.rt.driver_for(pid, "libvirt", config)

    def files(self, name: str, kind: str = "user") -> Path:
        return Path(self.storage) / self.providers[kind] / self.ids[name]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    """Three libvirt providers on this host and four guests booted at once, on a server with
    its own SQLite database (the per-test databases are emptied before every test)."""
    le.require_libvirt()
    bridge, subnet = le.require_network()
    tmp = tmp_path_factory.mktemp("libvirt-cloud")
    (tmp / "data").mkdir()
    settings = make_settings(f"sqlite:///{tmp / 'cloud.db'}", tmp / "data")
    db = Database(settings)
    upgrade(db)
    reset_database(db)
    db.dispose()
    rt = Runtime.build(settings, migrate=False)
    storage = le.storage_dir()
    lo = free_port()
    ports = (lo, lo + 5) if lo + 5 <= 65535 else (lo - 5, lo)
    made: list[str] = []
    try:
        with TestClient(create_app(rt=rt)) as client:
            api = Api(client, rt, ADMIN_KEY)
            account_id, headers = api.account(balance=BALANCE)
            c = Cloud(api, account_id, headers, storage, ports, subnet, bridge)
            offers = {}
            for kind, network, vcpu in (("user", "user", 2),
                                        ("network", f"network:{le.NETWORK}", 1),
                                        ("bridge", f"bridge:{bridge}", 1)):
                r = client.post("/admin/providers", headers=api.admin, json={
                    "name": f"vm-host-{kind}", "driver": "libvirt",
                    "config": le.config(storage, ports, network=network)})
                assert r.status_code == 201, r.text
                c.providers[kind] = r.json()["id"]
                offers[kind] = api.offer(c.providers[kind], workload="vm", vcpu=vcpu,
                                         memory_gib=1, storage_gib=3, price=PRICE, capacity=5,
                                         os_options=[le.IMAGE])
            for name, kind in (("alpha", "user"), ("beta", "user"), ("gamma", "network"),
                               ("delta", "bridge")):
                c.keys[name] = le.Key()
                r = client.post("/gpu/instances/vms", headers=headers, json={
                    "plan_id": offers[kind], "name": name, "ssh_key": c.keys[name].public,
                    "os_image": le.IMAGE})
                assert r.status_code == 201, r.text
                c.ids[name] = r.json()["instance_id"]
                made.append(c.ids[name])
            assert api.money(account_id)["reserved"] > 0
            settled = settle(api, headers, list(c.ids.values()))
            c.details = {name: settled[iid] for name, iid in c.ids.items()}
            yield c
    finally:
        le.remove_domains(made)
        shutil.rmtree(storage, ignore_errors=True)
        rt.close()


def settle(api: Api, headers: dict, ids: list[str],
           timeout: float = le.BOOT_TIMEOUT) -> dict[str, dict]:
    """Step the server clock in small moves (each runs the lifecycle against libvirt) until
    every instance is ACTIVE or FAILED; the guests boot in wall time meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        out = {iid: api.instance(headers, iid, "vms") for iid in ids}
        if all(d["status"] in ("ACTIVE", "FAILED") for d in out.values()):
            return out
        if time.monotonic() > deadline:
            raise AssertionError({iid: (d["status"], events(api, headers, iid)[-5:])
                                  for iid, d in out.items()})
        api.advance(2)
        time.sleep(1)


def events(api: Api, headers: dict, iid: str) -> list[str]:
    r = api.client.get(f"/gpu/instances/vms/{iid}/events", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def parse_ssh(command: str) -> tuple[str, str, int]:
    """`ssh -p 30022 debian@host` → (user, host, port)."""
    parts = command.split()
    assert parts[0] == "ssh", command
    port = int(parts[parts.index("-p") + 1]) if "-p" in parts else 22
    user, _, where = parts[-1].partition("@")
    return user, where, port


def active(c: Cloud, name: str) -> tuple[str, str, int]:
    """The VM is ACTIVE; where its ssh_connection says to log in."""
    d = c.details[name]
    assert d["status"] == "ACTIVE", events(c.api, c.headers, c.ids[name])
    assert any("SSH answered" in e for e in events(c.api, c.headers, c.ids[name]))
    return parse_ssh(d["ssh_connection"])


def test_vms_with_user_networking_each_get_a_port_a_disk_and_the_customers_key(cloud):
    seen_ports, disks = set(), set()
    for name in ("alpha", "beta"):
        user, where, port = active(cloud, name)
        assert (user, where) == ("debian", "127.0.0.1")
        assert cloud.details[name]["domain"] == "127.0.0.1"
        assert cloud.ports[0] <= port <= cloud.ports[1]
        seen_ports.add(port)
        out = le.ssh_run(cloud.keys[name], where, port, user,
                         "hostname; nproc; grep MemTotal /proc/meminfo; sudo -n true && echo ok")
        hostname, nproc, meminfo, sudo = out.splitlines()
        assert hostname == name  # its own seed: the instance name as hostname
        assert int(nproc) == 2  # the plan's vCPUs
        # The plan's 1 GiB; the kernel keeps a little for itself (~0.95 GiB reported).
        assert 0.85 * 1024 ** 2 < int(meminfo.split()[1]) <= 1024 ** 2
        assert sudo == "ok"
        files = cloud.files(name)
        disks.add(files / "disk.qcow2")
        assert (files / "disk.qcow2").is_file() and (files / "seed.iso").is_file()
    assert len(seen_ports) == 2 and len(disks) == 2  # two VMs at once: own port, own disk
    # The other VM's key does not open this one.
    user, where, port = parse_ssh(cloud.details["alpha"]["ssh_connection"])
    with pytest.raises(AssertionError, match="could not log in"):
        le.ssh_run(cloud.keys["beta"], where, port, user, "true", attempts=1)


def test_password_logins_are_refused(cloud):
    user, where, port = active(cloud, "alpha")
    transport = paramiko.Transport((where, port))
    try:
        transport.start_client(timeout=30)
        with pytest.raises(paramiko.BadAuthenticationType) as err:
            transport.auth_password(user, "debian")
        assert "password" not in err.value.allowed_types
        assert "publickey" in err.value.allowed_types
    finally:
        transport.close()


def guest_address(c: Cloud, name: str) -> str:
    """Log in where ssh_connection says (port 22 of the guest's own address) and return the
    address after checking the guest has it on its own NIC, in the network's subnet."""
    user, where, port = active(c, name)
    assert c.details[name]["ssh_connection"] == f"ssh debian@{where}"  # no forwarded port
    assert (user, port) == ("debian", 22) and c.details[name]["domain"] == where
    assert ipaddress.ip_address(where) in c.subnet
    out = le.ssh_run(c.keys[name], where, port, user,
                     "hostname; nproc; ip -4 -o addr show scope global")
    hostname, nproc, addrs = out.split("\n", 2)
    assert (hostname, int(nproc)) == (name, 1)
    assert f" {where}/" in addrs, addrs  # the guest's own address, not a host forward
    return where


def test_a_vm_on_a_libvirt_network_is_reached_at_its_own_leased_address(cloud):
    where = guest_address(cloud, "gamma")
    nic = le.domain_xml(f"gpucloud-{cloud.ids['gamma']}").find("devices/interface")
    assert nic.get("type") == "network" and nic.find("source").get("network") == le.NETWORK
    # The address is the one the network's DHCP server leased to this guest's NIC.
    assert le.network_leases().get(nic.find("mac").get("address")) == where


def test_a_vm_on_a_bridge_is_reached_at_the_address_it_took_there(cloud):
    where = guest_address(cloud, "delta")
    root = le.domain_xml(f"gpucloud-{cloud.ids['delta']}")
    nic = root.find("devices/interface")
    assert nic.get("type") == "bridge" and nic.find("source").get("bridge") == cloud.bridge
    # A bridge has no libvirt lease to read: the address is the one the host's neighbour
    # (ARP) table holds for this domain's MAC.
    assert le.neighbour_mac(where) == nic.find("mac").get("address")
    assert root.find("{http://libvirt.org/schemas/domain/qemu/1.0}commandline") is None
    # Nothing forwarded from the host: no port taken from the range for either guest.
    with cloud.api.rt.db.read() as s:
        assert s.query(PortAllocation).filter(
            PortAllocation.instance_id.in_([cloud.ids["gamma"], cloud.ids["delta"]])).count() == 0


def test_create_again_finds_the_same_running_domain(cloud):
    driver, iid = cloud.driver(), cloud.ids["alpha"]
    _, _, port = active(cloud, "alpha")
    spec = WorkloadSpec(instance_id=iid, provider_id=cloud.providers["user"], workload="vm",
                        name="alpha", gpu_count=0, gpu_model="h100", vcpu=2, memory_gib=1,
                        storage_gib=3, location="us-east-1", os_image=le.IMAGE,
                        ports=[ForwardedPort(22, port, "tcp")])
    # A retried create reads the guest's banner afresh; on a loaded host sshd may take longer
    # than one probe allows, so ask a few times.
    for _ in range(10):
        again = driver.create(spec)
        assert again.phase in ("running", "pending"), again.reason
        if again.phase == "running":
            break
        time.sleep(3)
    assert again.phase == "running" and again.ssh_port == port
    assert [n for n in le.domain_names() if n == f"gpucloud-{iid}"] == [f"gpucloud-{iid}"]
    assert set(driver.list_owned()) == {cloud.ids["alpha"], cloud.ids["beta"]}


def test_the_operator_reads_the_serial_console(cloud, tmp_path):
    """What the guest writes to its serial port reaches the operator, live. The test writes a
    line of its own there (over SSH, as root) rather than waiting for the getty's login prompt:
    under TCG on a loaded machine systemd brought the serial getty up after 20 minutes or
    never, so the prompt says more about the machine than about the console."""
    iid = cloud.ids["alpha"]
    user, where, port = active(cloud, "alpha")
    marker = f"gpucloud-console-check-{uuid.uuid4().hex[:12]}"
    le.ssh_run(cloud.keys["alpha"], where, port, user,
               f"echo {marker} | sudo tee /dev/ttyS0 >/dev/null")

    def console(last: int) -> list[str]:
        r = cloud.api.client.get(f"/admin/instances/{iid}/console", headers=cloud.api.admin,
                                 params={"last": last})
        assert r.status_code == 200, r.text
        return r.json()

    # QEMU writes the port's bytes to the file as they come; allow it a moment to flush.
    deadline = time.monotonic() + 30
    while not any(marker in line for line in console(50)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert any(marker in line for line in console(50)), console(50)
    lines = cloud.driver().logs(iid, None, None)
    assert any("Linux version" in line for line in lines), lines[:5]  # from the first byte
    assert not any("\x1b" in line for line in lines)  # terminal control stripped
    assert len(cloud.driver().logs(iid, None, 3)) == 3
    server = LiveServer(create_app(rt=cloud.api.rt)).start()
    try:
        out = CliRunner().invoke(cli_app, [
            "admin", "console", iid, "--last", "500", "--url", server.url,
            "--admin-key", ADMIN_KEY], env={"GPUCLOUD_CONFIG_DIR": str(tmp_path)})
    finally:
        server.stop()
    assert out.exit_code == 0 and marker in out.stdout, (out.stdout, out.stderr)


def test_rename_changes_only_our_name(cloud):
    user, where, port = active(cloud, "alpha")
    iid = cloud.ids["alpha"]
    r = cloud.api.client.put(f"/gpu/instances/vms/{iid}", json={"name": "renamed"},
                             headers=cloud.headers)
    assert r.status_code == 204
    assert cloud.api.instance(cloud.headers, iid, "vms")["name"] == "renamed"
    assert le.ssh_run(cloud.keys["alpha"], where, port, user, "hostname").strip() == "alpha"


def test_a_domain_that_vanishes_ends_its_instance(cloud):
    iid = cloud.ids["beta"]
    assert cloud.api.instance(cloud.headers, iid, "vms")["status"] == "ACTIVE"
    le.remove_domains([iid])  # undefined by hand
    cloud.api.advance(31)  # past the next watch
    assert cloud.api.instance(cloud.headers, iid, "vms")["status"] == "ENDED"
    assert any("Instance ended: The VM no longer exists at the provider" in e
               for e in events(cloud.api, cloud.headers, iid))
    assert not cloud.files("beta").exists()


def test_terminate_removes_domain_disk_and_port_and_refunds(cloud):
    api, ids = cloud.api, cloud.ids
    assert api.money(cloud.account_id)["reserved"] > 0
    for iid in ids.values():
        if api.instance(cloud.headers, iid, "vms")["status"] == "ACTIVE":
            r = api.client.delete(f"/gpu/instances/vms/{iid}", headers=cloud.headers)
            assert r.status_code == 204
    api.advance(1)  # the lifecycle's delete step
    spent = sum(api.instance(cloud.headers, iid, "vms")["billing"]["total_spendings"]
                for iid in ids.values())
    after = api.money(cloud.account_id)
    assert after["reserved"] == money(0) and spent > 0
    assert after["balance"] == money(BALANCE) - spent  # the unspent reserve came back
    names = le.domain_names()
    kinds = {"alpha": "user", "beta": "user", "gamma": "network", "delta": "bridge"}
    for name, iid in ids.items():
        assert api.instance(cloud.headers, iid, "vms")["status"] == "ENDED"
        assert f"gpucloud-{iid}" not in names
        assert not cloud.files(name, kinds[name]).exists()  # overlay and seed gone
    with api.rt.db.read() as s:
        assert s.query(PortAllocation).filter(
            PortAllocation.instance_id.in_(list(ids.values()))).count() == 0
    for kind in kinds.values():
        assert cloud.driver(kind).list_owned() == []


# -- no guest boots below: these run on both backends ---------------------------------------
def test_a_missing_base_image_fails_and_refunds_with_the_reason_in_events(api, tmp_path):
    le.require_libvirt()
    storage = le.storage_dir()
    base = tmp_path / "base.qcow2"
    base.write_bytes(b"")
    lo = free_port()
    r = api.client.post("/admin/providers", headers=api.admin, json={
        "name": "broken-host", "driver": "libvirt",
        "config": le.config(storage, (lo, lo), images={le.IMAGE: le.image(path=str(base))})})
    assert r.status_code == 201, r.text
    # Registered, with a word for the operator: this host passes no GPU through.
    assert any(w.startswith("No gpus listed") for w in r.json()["warnings"]), r.json()
    offer = api.offer(r.json()["id"], workload="vm", vcpu=1, memory_gib=1, storage_gib=3,
                      price=PRICE, os_options=[le.IMAGE])
    account_id, headers = api.account(balance=100)
    base.unlink()
    r = api.client.post("/gpu/instances/vms", headers=headers, json={
        "plan_id": offer, "name": "doomed", "ssh_key": le.Key().public, "os_image": le.IMAGE})
    assert r.status_code == 201, r.text
    iid = r.json()["instance_id"]
    try:
        d = settle(api, headers, [iid], timeout=60)[iid]
        assert d["status"] == "FAILED"
        money_after = api.money(account_id)
        assert money_after["balance"] == money(100) and money_after["reserved"] == money(0)
        assert any(f"The base image {base} of {le.IMAGE} is missing on the host" in e
                   for e in events(api, headers, iid)), events(api, headers, iid)
        assert f"gpucloud-{iid}" not in le.domain_names()
    finally:
        le.remove_domains([iid])
        shutil.rmtree(storage, ignore_errors=True)


@pytest.mark.parametrize("config, where", [
    ({"images": {le.IMAGE: {"path": "/nonexistent/debian.qcow2"}}}, "does not exist"),
    ({"uri": "qemu+ssh://elsewhere/system"}, "uri must be one of"),
    ({"network": "carrier-pigeon"}, "network must be"),
    ({"gpus": [{"pci": "nonsense", "model": "h100"}]}, "pci must look like"),
])
def test_registration_refuses_nonsense_configs(api, config, where):
    body = le.config("/var/lib/gpucloud-test/vms", (30000, 30010))
    body.update(config)
    r = api.client.post("/admin/providers", headers=api.admin,
                        json={"name": "bad", "driver": "libvirt", "config": body})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "config"] and where in detail["msg"]


def test_offers_the_host_cannot_serve_are_refused(api):
    le.require_libvirt()
    r = api.client.post("/admin/providers", headers=api.admin, json={
        "name": "picky", "driver": "libvirt",
        "config": le.config("/var/lib/gpucloud-test/vms", (30000, 30010),
                            gpus=[{"pci": "0000:41:00.0", "model": "H100"}])})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    assert not any(w.startswith("No gpus listed") for w in r.json()["warnings"])
    base = {"provider_id": pid, "workload": "vm", "location": "us-east-1", "country": "US",
            "gpu": {"vendor": "nvidia", "model": "h100", "vram": "80Gi", "interface": "SXM"},
            "gpu_count": 1, "vcpu": 2, "memory_gib": 1, "storage_gib": 3, "price_hour": "1",
            "capacity": 1, "os_options": [le.IMAGE]}
    cases = [({"os_options": [le.IMAGE, "Ubuntu Server 22.04"]}, "os_options",
              f"The provider has no image for Ubuntu Server 22.04 (it has: {le.IMAGE})"),
             ({"gpu": {**base["gpu"], "model": "a100"}}, "gpu",
              "The provider has no a100 GPU (it has: h100)"),
             ({"workload": "container", "countries": ["US"], "os_options": None,
               "location": None, "country": None}, "workload",
              "A libvirt provider serves vm offers only")]
    for change, fld, msg in cases:
        r = api.client.post("/admin/offers", headers=api.admin, json={**base, **change})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", fld]
        assert r.json()["detail"][0]["msg"] == "Value error, " + msg
    r = api.client.post("/admin/offers", headers=api.admin, json=base)
    assert r.status_code == 201, r.text


def test_the_reconciler_removes_vms_no_instance_owns(api):
    le.require_libvirt()
    storage = le.storage_dir()
    port = free_port()
    r = api.client.post("/admin/providers", headers=api.admin, json={
        "name": "vm-host", "driver": "libvirt", "config": le.config(storage, (port, port))})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    with api.rt.db.read() as s:
        config = s.get(Provider, pid).config
    driver = api.rt.driver_for(pid, "libvirt", config)
    orphan = str(uuid.uuid4())
    spec = WorkloadSpec(instance_id=orphan, provider_id=pid, workload="vm", name="stray",
                        gpu_count=0, gpu_model="h100", vcpu=1, memory_gib=1, storage_gib=3,
                        location="us-east-1", os_image=le.IMAGE,
                        ports=[ForwardedPort(22, port, "tcp")])
    try:
        assert driver.create(spec).phase == "pending"
        assert orphan in driver.list_owned()
        assert reconcile.run(api.rt) == 1
        assert f"gpucloud-{orphan}" not in le.domain_names()
        assert not (Path(storage) / pid / orphan).exists()
        assert driver.list_owned() == []
    finally:
        le.remove_domains([orphan])
        shutil.rmtree(storage, ignore_errors=True)


def test_console_needs_the_admin_key_and_a_vm(api):
    assert api.client.get("/admin/instances/nope/console").status_code == 403
    r = api.client.get("/admin/instances/nope/console", headers=api.admin)
    assert r.status_code == 404 and r.json() == {"detail": "Instance not found"}
