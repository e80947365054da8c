"""gpucloud.client against a live server (uvicorn on a free port, SQLite and PostgreSQL): typed
models with exact Decimal money, typed errors carrying the server's detail, sync and async."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
from decimal import Decimal

import httpx
import pytest

from gpucloud.client import (
    AsyncClient,
    AuthError,
    BadRequestError,
    Client,
    MissingCredentials,
    NotFoundError,
    TransportError,
    ValidationError,
    models,
    ssh_command,
)
from gpucloud.client.plans import from_container_plans, from_plan_groups, select
from tests.conftest import ADMIN_KEY
from tests.factories import SSH_ED25519

H100 = {"vendor": "nvidia", "model": "h100", "vram": "80Gi", "interface": "SXM"}
A100 = {"vendor": "nvidia", "model": "a100", "vram": "80Gi", "interface": "pcie"}


# -- shared with test_cli.py ---------------------------------------------------------------------
@pytest.fixture
def market(api) -> dict:
    """A small catalog: two container plans, a VM option, a bare-metal option."""
    pid = api.provider("sim", provision_seconds=5)
    return {
        "provider": pid,
        "cheap": api.offer(pid, price="0.75", gpu=A100, countries=["US", "DE"]),
        "h100": api.offer(pid, price="2.96", gpu=H100),
        "vm": api.offer(pid, workload="vm", price="1.07", gpu=A100, location="us-central-3"),
        "bm": api.offer(pid, workload="baremetal", price="9.5", gpu=H100, gpu_count=8,
                        location="eu-west-1", country="DE"),
    }


@pytest.fixture
def user(api) -> dict:
    account_id, headers = api.account(100, name="alice")
    return {"id": account_id, "key": headers["X-API-KEY"], "headers": headers}


@contextlib.contextmanager
def ticking(url: str, step: float = 5, every: float = 0.05):
    """Move the manual clock forward from another thread while the code under test polls —
    what wall time would do on a real server."""
    stop = threading.Event()
    failures: list[str] = []

    def run() -> None:
        with httpx.Client(base_url=url, headers={"X-ADMIN-KEY": ADMIN_KEY}, timeout=30) as http:
            while not stop.is_set():
                r = http.post("/admin/clock", json={"advance_seconds": step})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                stop.wait(every)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
    assert not failures, failures[:3]


def container_request(plan_id: str, name: str = "box", **settings) -> models.ContainerDeploy:
    cs = {"image": "docker.io/library/ubuntu:22.04",
          "expose": [models.Port(port="22"), models.Port(port=80, protocol="http")], **settings}
    return models.ContainerDeploy(plan_id=plan_id, name=name, ssh_key=SSH_ED25519,
                                  container_settings=models.ContainerSettings(**cs))


@pytest.fixture
def gc(live_server, user):
    with Client(live_server.url, api_key=user["key"], admin_key=ADMIN_KEY) as client:
        yield client


# -- catalog -------------------------------------------------------------------------------------
def test_plans_are_typed_with_exact_prices(gc, market):
    plans = gc.container_plans()
    by_id = {p.plan.id: p for p in plans}
    assert set(by_id) == {market["cheap"], market["h100"]}
    cheap = by_id[market["cheap"]]
    assert cheap.plan.pricing.hour == Decimal("0.75")
    assert isinstance(cheap.plan.pricing.hour, Decimal)
    assert sorted(cheap.attributes.location) == ["DE", "US"]
    assert cheap.plan.gpu_model.model == "a100"

    vms = gc.vm_plans()
    [option] = [o for g in vms.data for a in g.availability_by_number for o in a.options]
    assert option.id == market["vm"] and option.location == "us-central-3"
    assert option.pricing.hour == Decimal("1.07") and "Ubuntu Server 22.04" in option.os_options
    bm = gc.baremetal_plans()
    assert bm.data[0].availability_by_number[0].gpu_count == 8

    rows = (from_container_plans(plans) + from_plan_groups("vm", vms)
            + from_plan_groups("baremetal", bm))
    assert [r.id for r in select(rows)] == [market["cheap"], market["vm"], market["h100"],
                                            market["bm"]]
    assert [r.id for r in select(rows, gpu="H100", max_price=Decimal(5))] == [market["h100"]]
    assert [r.id for r in select(rows, location="DE")] == [market["cheap"]]
    assert [r.id for r in select(rows, location="eu-west")] == [market["bm"]]
    assert [r.id for r in select(rows, count=8)] == [market["bm"]]


def test_default_images(gc, demo):
    images = gc.default_images()
    assert images and all(isinstance(i, models.DefaultImage) for i in images)
    assert any(i.requires_ssh for i in images)
    assert all(isinstance(p.port, str) and p.port.isdigit() for i in images for p in i.expose)


# -- containers ----------------------------------------------------------------------------------
def test_container_lifecycle(gc, api, live_server, market, user):
    created = gc.deploy_container(container_request(market["cheap"], name="web",
                                                    environment=[models.EnvVar(name="A",
                                                                               value="1")]))
    assert gc.container(created.instance_id).instance_status == "INITIALIZED"
    assert gc.account().reserved == Decimal("2.25")  # 3 upfront hours of 0.75

    with ticking(live_server.url):
        inst = gc.wait(created.instance_id, "container", interval=0.05, timeout=90)
    assert inst.status == "ACTIVE"
    d = inst.details
    assert isinstance(d, models.ContainerDetails)
    assert d.billing.hourly_usage == Decimal("0.75")
    assert {(p.port, p.protocol) for p in d.network.forwarded_ports} == {("22", "tcp"),
                                                                       ("80", "http")}
    assert all(isinstance(p.external_port, str) for p in d.network.forwarded_ports)
    assert [(p.port, p.protocol) for p in d.container_info.expose] == [("22", "tcp"),
                                                                       ("80", "http")]
    ssh = ssh_command(inst)
    assert ssh is not None and ssh.startswith("ssh -p ") and ssh.endswith(f"root@{d.domain}")
    assert gc.locate(created.instance_id).kind == "container"
    assert [i.id for i in gc.containers()] == [created.instance_id]
    assert any("start" in e.lower() for e in gc.container_events(created.instance_id))
    assert len(gc.container_logs(created.instance_id, last=1)) == 1

    gc.update_container(created.instance_id, models.ContainerUpdate(
        name="web2", container_settings=models.ContainerSettings(
            image="docker.io/library/ubuntu:24.04",
            environment=[models.EnvVar(name="B", value="2")])))
    with ticking(live_server.url):
        deadline = dt.datetime.now() + dt.timedelta(seconds=20)
        while gc.container(created.instance_id).container_info.image != \
                "docker.io/library/ubuntu:24.04":
            assert dt.datetime.now() < deadline, "update never applied"
    d = gc.container(created.instance_id)
    assert d.name == "web2"
    assert {e.name: e.value for e in d.container_info.environment}.get("B") == "2"

    gc.terminate_container(created.instance_id)
    assert gc.container(created.instance_id).instance_status == "ENDED"
    acct = gc.account()
    assert acct.reserved == Decimal(0) and acct.spent == Decimal("0.75")
    assert acct.balance == Decimal("99.25")
    page = gc.transactions(limit=10)
    assert page.items and all(isinstance(t.amount, Decimal) for t in page.items)
    assert {t.kind for t in page.items} >= {"deposit", "reserve", "charge", "refund"}


def test_vm_and_baremetal(gc, live_server, market):
    vm = gc.deploy_vm(models.VmDeploy(plan_id=market["vm"], name="vm1", ssh_key=SSH_ED25519,
                                      os_image="Ubuntu Server 22.04"))
    bm = gc.deploy_vm({"plan_id": market["bm"], "name": "bm1", "ssh_key": SSH_ED25519,
                       "os_image": "Ubuntu Server 24.04"}, kind="baremetal")
    with ticking(live_server.url):
        inst = gc.wait(vm.instance_id, "vm", interval=0.05, timeout=90)
    assert inst.status == "ACTIVE" and inst.details.ssh_connection.startswith("ssh ")
    assert ssh_command(inst) == inst.details.ssh_connection
    located = gc.locate(bm.instance_id)
    assert located.kind == "baremetal" and located.details.os_image == "Ubuntu Server 24.04"
    with pytest.raises(NotFoundError):
        gc.vm(bm.instance_id, "vm")  # only reachable under its own type
    gc.rename_vm(vm.instance_id, "renamed")
    assert gc.vm(vm.instance_id).name == "renamed"
    kinds = {k for k, _ in gc.all_instances()}
    assert kinds == {"vm", "baremetal"}
    gc.terminate_vm(vm.instance_id)
    assert gc.vm(vm.instance_id).status == "ENDED"


# -- errors --------------------------------------------------------------------------------------
def test_errors_are_typed_and_carry_detail(gc, live_server, market, api):
    bad_port = container_request(market["cheap"])
    bad_port.container_settings.expose = [models.Port(port="70000")]
    with pytest.raises(ValidationError) as exc:
        gc.deploy_container(bad_port)
    assert exc.value.status_code == 422
    assert exc.value.errors[0]["loc"] == ["body", "container_settings", "expose", 0, "port"]
    assert str(exc.value) == ("body.container_settings.expose.0.port: "
                              "Value error, Port must be between 1 and 65535")

    with pytest.raises(BadRequestError) as exc:
        gc.deploy_vm(models.VmDeploy(plan_id=market["vm"], name="v", ssh_key=SSH_ED25519,
                                     os_image="Windows"))
    assert exc.value.detail.startswith("Provided OS image Windows is not supported")

    _, poor = api.account(1, name="poor")
    with (Client(live_server.url, api_key=poor["X-API-KEY"]) as broke,
          pytest.raises(BadRequestError) as exc):
        broke.deploy_container(container_request(market["cheap"]))
    assert exc.value.detail == "Insufficient balance to deploy instance"

    with pytest.raises(NotFoundError):
        gc.locate("00000000-0000-0000-0000-000000000000")
    with Client(live_server.url, api_key="gpc_wrong") as bad, pytest.raises(AuthError) as exc:
        bad.account()
    assert exc.value.status_code == 403 and isinstance(exc.value.detail, str)
    with Client(live_server.url) as nokey, pytest.raises(MissingCredentials):
        nokey.account()
    with Client("http://127.0.0.1:9", api_key="x") as down, pytest.raises(TransportError):
        down.account()


# -- operator ------------------------------------------------------------------------------------
def test_admin_endpoints(gc, live_server, market):
    created = gc.create_account("bob", balance="12.345678")
    assert created.balance == Decimal("12.345678") and created.api_key
    assert gc.deposit(created.id, Decimal("0.000001")).balance == Decimal("12.345679")
    assert gc.get_account(created.id).name == "bob"
    key = gc.create_api_key(created.id)
    with Client(live_server.url, api_key=key.api_key) as bob:
        assert bob.account().id == created.id
        gc.revoke_api_key(key.id)
        with pytest.raises(AuthError):
            bob.account()

    assert market["provider"] in {p.id for p in gc.providers()}
    gc.set_provider_enabled(market["provider"], False)
    assert gc.container_plans() == []
    gc.set_provider_enabled(market["provider"], True)
    offer = gc.update_offer(market["h100"], price_hour="3.5")
    assert offer.price_hour == Decimal("3.5")
    gc.update_offer(market["h100"], enabled=False)
    assert {p.plan.id for p in gc.container_plans()} == {market["cheap"]}
    other = gc.create_provider("other", "simulated", {"provision_seconds": 1})
    new = gc.create_offer({"provider_id": other.id, "workload": "container", "gpu": H100,
                           "gpu_count": 2, "vcpu": 32, "memory_gib": 256, "storage_gib": 400,
                           "price_hour": Decimal("5.1"), "capacity": 1, "countries": ["FR"]})
    assert new.id in {o.id for o in gc.offers()}

    before = gc.clock().now
    assert gc.advance_clock(90).now - before == dt.timedelta(seconds=90)


def test_async_client(live_server, market, user):
    async def flow() -> None:
        async with AsyncClient(live_server.url, api_key=user["key"],
                               admin_key=ADMIN_KEY) as ac:
            plans = await ac.container_plans()
            assert {p.plan.id for p in plans} == {market["cheap"], market["h100"]}
            created = await ac.deploy_container(container_request(market["h100"]))
            for _ in range(200):
                await ac.advance_clock(5)
                inst = await ac.locate(created.instance_id)
                if inst.status == "ACTIVE":
                    break
            assert inst.status == "ACTIVE"
            assert (await ac.account()).reserved == Decimal("5.92")
            with pytest.raises(ValidationError) as exc:
                await ac.update_container(created.instance_id,
                                          {"name": "-bad-", "container_settings": {"image": "x"}})
            assert exc.value.errors[0]["loc"][:2] == ["body", "name"]
            await ac.terminate_container(created.instance_id)
            assert (await ac.container(created.instance_id)).instance_status == "ENDED"

    asyncio.run(flow())
