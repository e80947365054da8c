"""Real bare metal through the public API: a `redfish` provider whose BMCs are sushy-emulator
and whose servers are libvirt domains (scripts/setup-redfish.sh). A deploy really boots the
ISO gpucloud built and served, the customer logs in over SSH with their key, and a terminate
really wipes the disk (read back from outside).

The lifecycle runs through POST /admin/clock (manual clock), each step against the real BMC,
while the machine boots in wall time beside it."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from gpucloud.catalog.models import Provider
from gpucloud.cli.main import app as cli_app
from gpucloud.instances.models import Machine
from tests import libvirt_env as le
from tests import redfish_env as re_
from tests.conftest import ADMIN_KEY
from tests.factories import money
from tests.procs import free_port

PRICE = "2"


@pytest.fixture
def site(api):
    found = re_.systems()
    cfg = re_.config(free_port(), [re_.machine(1, found), re_.machine(2, found)])
    r = api.client.post("/admin/providers", headers=api.admin, json={
        "name": "rack-1", "driver": "redfish", "config": cfg})
    assert r.status_code == 201, r.text
    provider = r.json()
    offer = api.offer(provider["id"], workload="baremetal", vcpu=1, memory_gib=1,
                      storage_gib=1, price=PRICE, capacity=2, os_options=[re_.IMAGE])
    account_id, headers = api.account(balance=100)
    return {"provider": provider, "offer_id": offer, "account_id": account_id,
            "headers": headers, "config": cfg}


def deploy(api, site, name: str, key: le.Key) -> str:
    r = api.client.post("/gpu/instances/baremetal", headers=site["headers"], json={
        "plan_id": site["offer_id"], "name": name, "ssh_key": key.public, "os_image": re_.IMAGE})
    assert r.status_code == 201, r.text
    return r.json()["instance_id"]


def events(api, site, iid: str) -> list[str]:
    r = api.client.get(f"/gpu/instances/baremetal/{iid}/events", headers=site["headers"])
    assert r.status_code == 200, r.text
    return r.json()


def settle(api, site, iid: str, timeout: float = 400.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        d = api.instance(site["headers"], iid, "baremetal")
        if d["status"] in ("ACTIVE", "FAILED"):
            return d
        if time.monotonic() > deadline:
            raise AssertionError((d["status"], events(api, site, iid)[-8:]))
        api.advance(2)
        time.sleep(1)


def machines(api, provider_id: str) -> dict[str, tuple[str, str | None]]:
    with api.rt.db.read() as s:
        return {m.name: (m.state, m.instance_id) for m in
                s.query(Machine).filter(Machine.provider_id == provider_id)}


def test_two_deploys_ssh_terminate_wipe_the_disks_and_free_the_machines(api, site, tmp_path):
    pid = site["provider"]["id"]
    # The BMC password is sealed at rest and shown nowhere.
    pw = re_.password()
    listed = api.client.get("/admin/providers", headers=api.admin).text
    assert pw not in listed and "password" not in listed
    with api.rt.db.read() as s:
        stored = s.get(Provider, pid).config
    assert pw not in str(stored)
    assert all(m["bmc"]["password_enc"] for m in stored["machines"])

    keys = {"alpha": le.Key(), "beta": le.Key()}
    ids = {name: deploy(api, site, name, key) for name, key in keys.items()}  # at once
    # Two machines, two deploys: a third has no capacity (the contract's 400).
    r = api.client.post("/gpu/instances/baremetal", headers=site["headers"], json={
        "plan_id": site["offer_id"], "name": "third", "ssh_key": le.Key().public,
        "os_image": re_.IMAGE})
    assert r.status_code == 400, r.text
    details = {name: settle(api, site, iid) for name, iid in ids.items()}
    rented = machines(api, pid)
    assert {rented["bm1"], rented["bm2"]} == {("rented", ids["alpha"]), ("rented", ids["beta"])}
    for name, iid in ids.items():
        d = details[name]
        assert d["status"] == "ACTIVE", events(api, site, iid)
        i = 1 if rented["bm1"][1] == iid else 2
        assert d["ssh_connection"] == f"ssh -p {re_.SSH_BASE + i} root@127.0.0.1", d
        out = le.ssh_run(keys[name], "127.0.0.1", re_.SSH_BASE + i, "root",
                         "hostname; dd if=/dev/urandom of=/dev/vda bs=1M count=8 conv=fsync "
                         "2>&1 >/dev/null | tail -1 >&2")
        assert out.splitlines()[0] == name, out  # the instance name, from the ISO's seed
        assert any(b != 0 for b in re_.disk_bytes(i, tmp_path)[:8 << 20])
        log = events(api, site, iid)
        for step in ("Powered off", "Boot media inserted", "Booting", "SSH ready"):
            assert any(step in e for e in log), log
    # The other customer's key does not open a machine.
    a = 1 if rented["bm1"][1] == ids["alpha"] else 2
    with pytest.raises(AssertionError, match="could not log in"):
        le.ssh_run(keys["beta"], "127.0.0.1", re_.SSH_BASE + a, "root", "true", attempts=1)

    for iid in ids.values():
        r = api.client.delete(f"/gpu/instances/baremetal/{iid}", headers=site["headers"])
        assert r.status_code == 204
    assert {s for s, _ in machines(api, pid).values()} == {"dirty"}  # not rentable unwiped
    api.advance(1)  # the delete steps: power off, wipe, boot back to disk
    for i in (1, 2):
        assert re_.domstate(i) == "shut off"
        assert set(re_.disk_bytes(i, tmp_path)) == {0}  # every byte zero, read from outside
    assert machines(api, pid) == {"bm1": ("free", None), "bm2": ("free", None)}
    for iid in ids.values():
        log = events(api, site, iid)
        assert any("Wiped in" in e for e in log) and any("wiped and offered again" in e
                                                          for e in log), log
    spent = sum(api.instance(site["headers"], iid, "baremetal")["billing"]["total_spendings"]
                for iid in ids.values())
    after = api.money(site["account_id"])
    assert after["reserved"] == money(0) and after["balance"] == money(100) - spent


def test_an_unreachable_bmc_fails_the_deploy_refunds_and_says_why(api):
    found = re_.systems()
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = re_.config(free_port(), [re_.machine(3, found, url=dead)])
    r = api.client.post("/admin/providers", headers=api.admin, json={
        "name": "rack-dead", "driver": "redfish", "config": cfg})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    offer = api.offer(pid, workload="baremetal", vcpu=1, memory_gib=1, storage_gib=1,
                      price=PRICE, capacity=1, os_options=[re_.IMAGE])
    account_id, headers = api.account(balance=100)
    site = {"offer_id": offer, "headers": headers}
    iid = deploy(api, site, "doomed", le.Key())
    d = settle(api, site, iid, timeout=60)
    assert d["status"] == "FAILED"
    after = api.money(account_id)
    assert after["balance"] == money(100) and after["reserved"] == money(0)
    assert any("Machine bm3" in e and "BMC unreachable" in e for e in events(api, site, iid)), \
        events(api, site, iid)
    # It may have been touched: dirty until a wipe through its BMC succeeds, never rented.
    assert machines(api, pid)["bm3"] == ("dirty", iid)
    assert re_.domstate(3) == "shut off"


@pytest.mark.parametrize("change, where", [
    ({"media_url": "ftp://nope"}, "media_url"),
    ({"machines": []}, "machines"),
    ({"images": {re_.IMAGE: {"kernel": "/nonexistent/vmlinuz", "initrd": "/nonexistent/i"}}},
     "does not exist"),
])
def test_registration_refuses_nonsense_configs(api, change, where):
    found = re_.systems()
    cfg = re_.config(free_port(), [re_.machine(1, found)])
    cfg.update(change)
    r = api.client.post("/admin/providers", headers=api.admin,
                        json={"name": "bad", "driver": "redfish", "config": cfg})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "config"]
    assert where in r.json()["detail"][0]["msg"]


def test_a_wipe_that_never_powers_off_puts_the_machine_in_maintenance(api, live_server,
                                                                    tmp_path):
    """A deploy that times out before SSH fails; its release then boots a "wipe" image that
    never powers off (the test OS stands in for a broken one): the machine goes to maintenance
    with the reason, and nobody can rent it."""
    found = re_.systems()
    cfg = re_.config(free_port(), [re_.machine(3, found)], boot_timeout_seconds=1,
                     wipe_timeout_seconds=15)
    cfg["wipe"] = dict(cfg["images"][re_.IMAGE])
    r = api.client.post("/admin/providers", headers=api.admin, json={
        "name": "rack-broken-wipe", "driver": "redfish", "config": cfg})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    offer = api.offer(pid, workload="baremetal", vcpu=1, memory_gib=1, storage_gib=1,
                      price=PRICE, capacity=2, os_options=[re_.IMAGE])
    account_id, headers = api.account(balance=100)
    site = {"offer_id": offer, "headers": headers}
    iid = deploy(api, site, "hasty", le.Key())
    time.sleep(2)
    d = settle(api, site, iid, timeout=60)
    assert d["status"] == "FAILED"
    assert any("SSH did not answer within 1 s" in e for e in events(api, site, iid))
    api.advance(1)  # the release (if not already run): the "wipe" never powers off
    state, owner = machines(api, pid)["bm3"]
    assert (state, owner) == ("maintenance", iid)
    listed = api.client.get("/admin/machines", headers=api.admin).json()
    [row] = [m for m in listed if m["provider_id"] == pid]
    assert row["state"] == "maintenance" and "did not finish within 15 s" in row["reason"]
    assert any("Machine put in maintenance" in e for e in events(api, site, iid))
    out = CliRunner().invoke(cli_app, [
        "admin", "machines", "--url", live_server.url, "--admin-key", ADMIN_KEY],
        env={"GPUCLOUD_CONFIG_DIR": str(tmp_path)})
    assert out.exit_code == 0, (out.stdout, out.stderr)
    assert "bm3" in out.stdout and "maintenance" in out.stdout, out.stdout
    assert re_.domstate(3) == "shut off"  # forced off, not left running the bad image
    # Nobody rents it: the next deploy waits for a clean machine, then fails at its deadline.
    nxt = deploy(api, site, "next", le.Key())
    api.advance(5)
    assert api.instance(headers, nxt, "baremetal")["status"] == "INITIALIZED"
    assert machines(api, pid)["bm3"] == ("maintenance", iid)
    api.advance(1000)
    assert api.instance(headers, nxt, "baremetal")["status"] == "FAILED"
    after = api.money(account_id)
    assert after["balance"] == money(100) and after["reserved"] == money(0)


def test_a_deploy_resumes_from_the_machines_state_after_the_driver_is_lost(api):
    """The server's driver objects (and media server) are dropped mid-deploy, as a restart
    would: the next step finds the machine powered on from this instance's ISO and waits for
    SSH instead of power-cycling it again."""
    found = re_.systems()
    cfg = re_.config(free_port(), [re_.machine(3, found)])
    r = api.client.post("/admin/providers", headers=api.admin, json={
        "name": "rack-resume", "driver": "redfish", "config": cfg})
    assert r.status_code == 201, r.text
    offer = api.offer(r.json()["id"], workload="baremetal", vcpu=1, memory_gib=1,
                      storage_gib=1, price=PRICE, capacity=1, os_options=[re_.IMAGE])
    _, headers = api.account(balance=100)
    site = {"offer_id": offer, "headers": headers}
    key = le.Key()
    iid = deploy(api, site, "phoenix", key)
    api.advance(1)  # the first create step: force off, insert, boot CD, power on
    assert sum("Booting" in e for e in events(api, site, iid)) == 1
    assert re_.domstate(3) == "running"
    with api.rt._drivers_lock:  # what a restart loses: every driver object and its server
        for drv in api.rt._drivers.values():
            drv.close()
        api.rt._drivers.clear()
    d = settle(api, site, iid)
    assert d["status"] == "ACTIVE", events(api, site, iid)
    log = events(api, site, iid)
    assert sum("Booting" in e for e in log) == 1 and sum("Powered off" in e for e in log) == 1
    assert le.ssh_run(key, "127.0.0.1", re_.SSH_BASE + 3, "root", "hostname").strip() \
        == "phoenix"
    r = api.client.delete(f"/gpu/instances/baremetal/{iid}", headers=headers)
    assert r.status_code == 204
    api.advance(1)
    assert re_.domstate(3) == "shut off"


def test_a_catalog_import_seals_bmc_passwords_too(api):
    """POST /admin/catalog (and `gpucloud admin catalog import`) stores a redfish provider's
    BMC passwords sealed exactly like POST /admin/providers."""
    found = re_.systems()
    cfg = re_.config(free_port(), [re_.machine(1, found)])
    pw = re_.password()
    r = api.client.post("/admin/catalog", headers=api.admin, json={
        "providers": [{"name": "imported-bm", "driver": "redfish", "config": cfg}]})
    assert r.status_code == 200, r.text
    with api.rt.db.read() as s:
        stored = s.scalars(select(Provider).where(Provider.name == "imported-bm")).one().config
    assert pw not in str(stored)
    assert all(m["bmc"]["password_enc"] for m in stored["machines"])
    listed = api.client.get("/admin/providers", headers=api.admin).text
    assert pw not in listed and "password" not in listed
