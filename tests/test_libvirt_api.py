"""Real VMs through the public API: a `libvirt` provider on this machine's libvirtd, guests
booted under TCG, logged into over SSH with the key given at deploy.

The lifecycle runs through POST /admin/clock (manual clock): each small step runs the due work
against the real hypervisor, while the guest boots in wall time beside it."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpucloud.catalog.models import Provider
from gpucloud.cli.main import app as cli_app
from gpucloud.drivers.base import ForwardedPort, WorkloadSpec
from gpucloud.instances import reconcile
from gpucloud.instances.models import PortAllocation
from tests import libvirt_env as le
from tests.conftest import ADMIN_KEY
from tests.factories import money
from tests.procs import free_port

PRICE = "0.5"


@pytest.fixture
def host(api):
    le.require_libvirt()
    storage = le.storage_dir()
    lo = free_port()
    ports = (lo, lo + 5) if lo + 5 <= 65535 else (lo - 5, lo)
    r = api.client.post("/admin/providers", headers=api.admin, json={
        "name": "kvm-host", "driver": "libvirt", "config": le.config(storage, ports)})
    assert r.status_code == 201, r.text
    provider = r.json()
    offer = api.offer(provider["id"], workload="vm", vcpu=2, memory_gib=1, storage_gib=3,
                      price=PRICE, capacity=5, os_options=[le.IMAGE])
    account_id, headers = api.account(balance=100)
    made: list[str] = []
    yield {"provider": provider, "offer_id": offer, "account_id": account_id,
           "headers": headers, "storage": storage, "ports": ports, "made": made}
    le.remove_domains(made)
    shutil.rmtree(storage, ignore_errors=True)


def deploy(api, host, name: str, key: le.Key | None = None, **extra) -> str:
    body = {"plan_id": host["offer_id"], "name": name,
            "ssh_key": (key or le.Key()).public, "os_image": le.IMAGE}
    body.update(extra)
    r = api.client.post("/gpu/instances/vms", json=body, headers=host["headers"])
    assert r.status_code == 201, r.text
    host["made"].append(r.json()["instance_id"])
    return r.json()["instance_id"]


def settle(api, host, ids: list[str], timeout: float = le.BOOT_TIMEOUT) -> dict[str, dict]:
    """Step the server clock in small moves (each runs the lifecycle against libvirt) until
    every instance is ACTIVE or FAILED; the guests boot in wall time meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        out = {iid: api.instance(host["headers"], iid, "vms") for iid in ids}
        if all(d["status"] in ("ACTIVE", "FAILED") for d in out.values()):
            return out
        if time.monotonic() > deadline:
            raise AssertionError({iid: (d["status"], events(api, host, iid)[-5:])
                                  for iid, d in out.items()})
        api.advance(2)
        time.sleep(1)


def events(api, host, iid: str) -> list[str]:
    r = api.client.get(f"/gpu/instances/vms/{iid}/events", headers=host["headers"])
    assert r.status_code == 200, r.text
    return r.json()


def parse_ssh(command: str) -> tuple[str, str, int]:
    """`ssh -p 30022 debian@host` → (user, host, port)."""
    parts = command.split()
    assert parts[0] == "ssh", command
    port = int(parts[parts.index("-p") + 1]) if "-p" in parts else 22
    user, _, where = parts[-1].partition("@")
    return user, where, port


def test_two_vms_boot_answer_ssh_with_their_keys_then_terminate_cleanly(api, host, live_server,
                                                                       tmp_path):
    keys = {"alpha": le.Key(), "beta": le.Key()}
    ids = {name: deploy(api, host, name, key) for name, key in keys.items()}
    assert api.money(host["account_id"])["reserved"] > 0
    details = settle(api, host, list(ids.values()))
    for iid in ids.values():
        assert details[iid]["status"] == "ACTIVE", events(api, host, iid)

    seen_ports, disks = set(), set()
    for name, iid in ids.items():
        d = details[iid]
        user, where, port = parse_ssh(d["ssh_connection"])
        assert (user, where) == ("debian", "127.0.0.1") and d["domain"] == "127.0.0.1"
        assert host["ports"][0] <= port <= host["ports"][1]
        seen_ports.add(port)
        out = le.ssh_run(keys[name], where, port, user,
                         "hostname; nproc; grep MemTotal /proc/meminfo")
        hostname, nproc, meminfo = out.splitlines()
        assert hostname == name  # its own seed: the instance name as hostname
        assert int(nproc) == 2
        assert 0.85 * 1024 ** 2 < int(meminfo.split()[1]) <= 1024 ** 2
        files = Path(host["storage"]) / host["provider"]["id"] / iid
        disks.add(files / "disk.qcow2")
        assert (files / "disk.qcow2").is_file() and (files / "seed.iso").is_file()
        assert any("SSH answered" in e for e in events(api, host, iid))
    assert len(seen_ports) == 2 and len(disks) == 2  # each VM its own port and disk
    # The other VM's key does not open this one.
    alpha_user, alpha_host, alpha_port = parse_ssh(details[ids["alpha"]]["ssh_connection"])
    with pytest.raises(AssertionError, match="could not log in"):
        le.ssh_run(keys["beta"], alpha_host, alpha_port, alpha_user, "true", attempts=1)

    # The operator reads a VM's serial console, over HTTP and with the CLI.
    r = api.client.get(f"/admin/instances/{ids['alpha']}/console", headers=api.admin,
                       params={"last": 500})
    assert r.status_code == 200 and any("alpha login:" in line for line in r.json()), r.json()
    out = CliRunner().invoke(cli_app, [
        "admin", "console", ids["alpha"], "--last", "500", "--url", live_server.url,
        "--admin-key", ADMIN_KEY], env={"GPUCLOUD_CONFIG_DIR": str(tmp_path)})
    assert out.exit_code == 0 and "alpha login:" in out.stdout, (out.stdout, out.stderr)

    # Rename changes only our name.
    iid = ids["alpha"]
    r = api.client.put(f"/gpu/instances/vms/{iid}", json={"name": "renamed"},
                       headers=host["headers"])
    assert r.status_code == 204
    assert api.instance(host["headers"], iid, "vms")["name"] == "renamed"
    assert le.ssh_run(keys["alpha"], alpha_host, alpha_port, alpha_user, "hostname").strip() \
        == "alpha"

    # A domain that vanishes under an ACTIVE instance (undefined by hand) ends it.
    le.remove_domains([ids["beta"]])
    api.advance(31)  # past the next watch
    assert api.instance(host["headers"], ids["beta"], "vms")["status"] == "ENDED"
    assert any("Instance ended: The VM no longer exists at the provider" in e
               for e in events(api, host, ids["beta"])), events(api, host, ids["beta"])

    # Terminate: domain, overlay and seed gone, port free again, unspent reserve refunded.
    assert api.money(host["account_id"])["reserved"] > 0
    r = api.client.delete(f"/gpu/instances/vms/{ids['alpha']}", headers=host["headers"])
    assert r.status_code == 204
    api.advance(1)  # the lifecycle's delete step
    spent = sum(api.instance(host["headers"], i, "vms")["billing"]["total_spendings"]
                for i in ids.values())
    after = api.money(host["account_id"])
    assert after["reserved"] == money(0) and spent > 0
    assert after["balance"] == money(100) - spent
    names = le.domain_names()
    for iid in ids.values():
        assert api.instance(host["headers"], iid, "vms")["status"] == "ENDED"
        assert f"gpucloud-{iid}" not in names
        assert not (Path(host["storage"]) / host["provider"]["id"] / iid).exists()
    with api.rt.db.read() as s:
        assert s.query(PortAllocation).filter(
            PortAllocation.instance_id.in_(list(ids.values()))).count() == 0


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
    host = {"offer_id": offer, "headers": headers, "made": []}
    iid = deploy(api, host, "doomed")
    d = settle(api, host, [iid], timeout=60)[iid]
    assert d["status"] == "FAILED"
    money_after = api.money(account_id)
    assert money_after["balance"] == money(100) and money_after["reserved"] == money(0)
    assert any(f"The base image {base} of {le.IMAGE} is missing on the host" in e
               for e in events(api, host, iid)), events(api, host, iid)
    assert f"gpucloud-{iid}" not in le.domain_names()
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
    for change, field, msg in cases:
        r = api.client.post("/admin/offers", headers=api.admin, json={**base, **change})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", field]
        assert r.json()["detail"][0]["msg"] == "Value error, " + msg
    r = api.client.post("/admin/offers", headers=api.admin, json=base)
    assert r.status_code == 201, r.text


def test_the_reconciler_removes_vms_no_instance_owns(api, host):
    pid = host["provider"]["id"]
    with api.rt.db.read() as s:
        config = s.get(Provider, pid).config
    driver = api.rt.driver_for(pid, "libvirt", config)
    orphan = str(uuid.uuid4())
    spec = WorkloadSpec(instance_id=orphan, provider_id=pid, workload="vm", name="stray",
                        gpu_count=0, gpu_model="h100", vcpu=1, memory_gib=1, storage_gib=3,
                        location="us-east-1", os_image=le.IMAGE,
                        ports=[ForwardedPort(22, host["ports"][0], "tcp")])
    host["made"].append(orphan)
    assert driver.create(spec).phase == "pending"
    assert orphan in driver.list_owned()
    assert reconcile.run(api.rt) == 1
    assert f"gpucloud-{orphan}" not in le.domain_names()
    assert not (Path(host["storage"]) / pid / orphan).exists()
    assert driver.list_owned() == []


def test_console_needs_the_admin_key_and_a_vm(api):
    assert api.client.get("/admin/instances/nope/console").status_code == 403
    r = api.client.get("/admin/instances/nope/console", headers=api.admin)
    assert r.status_code == 404 and r.json() == {"detail": "Instance not found"}
