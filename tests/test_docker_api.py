"""Real containers through the public API: a docker provider on the test Podman engine, the
lifecycle driven by POST /admin/clock (manual clock), traffic to the published ports."""

from __future__ import annotations

import time

import docker
import pytest
from sqlalchemy import select

from gpucloud.instances.models import Instance, PortAllocation
from tests import podman_env as pe
from tests.factories import SSH_ED25519, money

PORTS = (31300, 31339)
PRICE = "0.5"


@pytest.fixture
def local(api, engine):
    pid = api.provider(name="local", driver="docker", engine_url=pe.ENGINE_URL,
                       port_range=f"{PORTS[0]}-{PORTS[1]}", stop_timeout_seconds=1)
    offer = api.offer(pid, vcpu=1, memory_gib=1, storage_gib=1, price=PRICE, capacity=5)
    account_id, headers = api.account(balance=100)
    yield {"provider_id": pid, "offer_id": offer, "account_id": account_id, "headers": headers}
    pe.remove_provider_containers(engine, pid)


def deploy(api, local, name="web", env=None, command=pe.SERVE, image=pe.IMAGE, **extra) -> str:
    settings = {"image": image,
                "expose": [{"port": 80, "protocol": "http"}, {"port": 7000, "protocol": "tcp"}],
                "environment": [{"name": "GREETING", "value": env or name}],
                "startup_command": command}
    return api.deploy(local["headers"], local["offer_id"], name=name,
                      container_settings=settings, **extra)


def settle(api, local, iid: str, until=("ACTIVE", "FAILED"), rounds: int = 40) -> dict:
    """Small clock steps: each runs the due lifecycle work against the real engine."""
    for _ in range(rounds):
        details = api.instance(local["headers"], iid)
        if details["instance_status"] in until:
            return details
        api.advance(1)
        time.sleep(0.1)  # an image pull runs in the engine on wall time
    raise AssertionError(f"instance {iid} stuck in {details['instance_status']}")


def lines(api, local, iid: str, what: str, **params) -> list[str]:
    r = api.client.get(f"/gpu/instances/{iid}/{what}", headers=local["headers"], params=params)
    assert r.status_code == 200, r.text
    return r.json()


def host_ports(details: dict) -> dict[int, int]:
    return {int(p["port"]): int(p["external_port"]) for p in details["network"]["forwarded_ports"]}


def test_deploy_update_terminate_a_real_container(api, local, engine):
    iid = deploy(api, local, ssh_key=SSH_ED25519)
    details = settle(api, local, iid)
    assert details["instance_status"] == "ACTIVE", lines(api, local, iid, "events")
    assert details["container_status"] == "STARTED"
    ports = host_ports(details)
    assert set(ports) == {80, 7000} and all(PORTS[0] <= p <= PORTS[1] for p in ports.values())
    assert details["domain"] == "127.0.0.1" == details["network"]["domain"]
    assert details["network"]["uri"] == f"http://127.0.0.1:{ports[80]}"

    # Real answers from inside the container.
    assert pe.http_get(ports[80]).strip() == "hello from web"
    assert pe.tcp_echo(ports[7000], b"are you there\n") == b"are you there\n"
    assert "serving web" in pe.wait_for(lambda: lines(api, local, iid, "logs"), what="logs")
    assert len(lines(api, local, iid, "logs", last=1)) == 1
    # The engine writes its event log asynchronously: wait for the start event to land.
    def started_events():
        events = lines(api, local, iid, "events")
        return events if any(e.endswith("started") for e in events) else None

    events = pe.wait_for(started_events, timeout=15, what="engine events")
    assert any("scheduled" in e for e in events), events
    assert any("created from image " + pe.IMAGE in e for e in events), events

    # The container has the plan's limits and the env (with the SSH key injected).
    (container,) = pe.for_instance(engine, iid)
    assert container.attrs["HostConfig"]["NanoCpus"] == 1_000_000_000
    assert container.attrs["HostConfig"]["Memory"] == 1024 ** 3
    env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
    assert env["GREETING"] == "web" and env["SSH_PUBKEY"] == SSH_ED25519

    # Update: new env and command; the new process proves it; the ports stay.
    new_cmd = pe.SERVE.replace("serving", "updated and serving")
    r = api.client.put(f"/gpu/instances/{iid}", headers=local["headers"], json={
        "name": "web", "container_settings": {
            "image": pe.IMAGE, "environment": [{"name": "GREETING", "value": "v2"}],
            "startup_command": new_cmd}})
    assert r.status_code == 204, r.text
    api.advance(1)
    details = api.instance(local["headers"], iid)
    assert details["container_info"]["environment"] == [{"name": "GREETING", "value": "v2"}]
    assert details["container_info"]["startup_command"] == new_cmd
    assert host_ports(details) == ports
    assert pe.http_get(ports[80]).strip() == "hello from v2"
    pe.wait_for(lambda: "updated and serving v2" in lines(api, local, iid, "logs"),
                what="the new process's output")

    # Terminate: container gone, ports free for the next instance.
    assert api.client.delete(f"/gpu/instances/{iid}", headers=local["headers"]).status_code == 204
    api.advance(1)
    assert api.instance(local["headers"], iid)["instance_status"] == "ENDED"
    assert pe.for_instance(engine, iid) == []
    with api.rt.db.read() as s:
        assert s.scalars(select(PortAllocation).where(PortAllocation.instance_id == iid)).all() \
            == []
    nxt = settle(api, local, deploy(api, local, name="next"))
    assert sorted(host_ports(nxt).values()) == sorted(ports.values())
    assert pe.http_get(host_ports(nxt)[80]).strip() == "hello from next"


def test_an_image_that_cannot_be_pulled_fails_and_refunds(api, local, engine):
    before = api.money(local["account_id"])
    iid = deploy(api, local, name="nope", image=pe.MISSING_IMAGE)
    details = settle(api, local, iid)
    assert details["instance_status"] == "FAILED"
    after = api.money(local["account_id"])
    assert after["balance"] == before["balance"] and after["reserved"] == money(0)
    events = lines(api, local, iid, "events")
    assert any("could not be pulled" in e and pe.MISSING_IMAGE in e for e in events), events
    assert pe.for_instance(engine, iid) == []


def test_an_image_not_on_the_host_is_pulled_while_no_lease_is_held(api, local, engine):
    """The engine does not have the image: the create starts its pull and returns at once;
    the progress shows in the events while the row is free (no lease held across the pull);
    once the image is there the next step makes the container and the instance is ACTIVE."""
    image = pe.image_to_pull(engine)
    iid = deploy(api, local, name="pulled", image=image)
    api.advance(1)  # the first create: the pull starts in the engine, the call answers pending

    def row() -> Instance:
        with api.rt.db.read() as s:
            return s.get(Instance, iid)

    inst = row()
    assert inst.status == "INITIALIZED" and inst.lock_token is None and inst.op == "create"
    assert any(f"Pulling image {image}" in e for e in lines(api, local, iid, "events"))

    def pulled() -> bool:
        try:
            return engine.images.get(image) is not None
        except docker.errors.ImageNotFound:
            return False

    # The pull goes on in the engine while nobody holds the instance: the clock stands still,
    # so no step runs, and the image arrives all the same.
    pe.wait_for(pulled, timeout=60, every=0.2, what=f"the engine to pull {image}")
    assert row().lock_token is None and row().status == "INITIALIZED"

    details = settle(api, local, iid)
    assert details["instance_status"] == "ACTIVE", lines(api, local, iid, "events")
    assert pe.http_get(host_ports(details)[80]).strip() == "hello from pulled"
    events = lines(api, local, iid, "events")
    pulling = [e for e in events if f"Pulling image {image}" in e]
    assert pulling and len(set(pulling)) == len(pulling), events  # recorded when it changed
    assert any(f"Image {image} pulled in" in e for e in events), events
    running = next(i for i, e in enumerate(events) if "Instance is running" in e)
    assert events.index(pulling[0]) < running
    (container,) = pe.for_instance(engine, iid)
    assert container.attrs["Config"]["Image"] == image
    pe.remove_provider_containers(engine, local["provider_id"])
    pe.remove_image_later(engine, image)


def test_a_crash_shows_as_not_started_with_its_output(api, local, engine):
    iid = deploy(api, local, name="crashy", command="sh -c 'echo going down; exit 1'")
    assert settle(api, local, iid)["instance_status"] == "ACTIVE"
    # The watch notices within a watch interval.
    pe.wait_for(lambda: pe.for_instance(engine, iid)[0].status != "running", what="exit")
    api.advance(api.rt.settings.watch_interval_seconds + 1)
    details = api.instance(local["headers"], iid)
    assert details["instance_status"] == "ACTIVE"
    assert details["container_status"] == "NOT_STARTED"
    assert "going down" in lines(api, local, iid, "logs")
    # The engine writes its event log asynchronously: give the die event a moment to land.
    pe.wait_for(lambda: any("exited with code 1" in e for e in lines(api, local, iid, "events")),
                timeout=15, what="the engine's die event")


def test_create_after_a_crash_reuses_the_container_and_strays_are_reconciled(api, local, engine):
    from gpucloud.instances import allocations, reconcile, service
    from gpucloud.instances.models import Instance

    iid = deploy(api, local, name="retry")
    # A worker made the container and died before recording it: the driver call ran, the
    # database never heard of it.
    with api.rt.db.read() as s:
        inst = s.get(Instance, iid)
        spec = service.workload_spec(api.rt, inst)
    with api.rt.db.read() as s:
        from gpucloud.catalog.models import Provider

        provider = s.get(Provider, local["provider_id"])
    driver = api.rt.driver_for(provider.id, provider.driver, provider.config)
    driver.create(allocations.for_spec(api.rt, driver, spec))
    assert len(pe.for_instance(engine, iid)) == 1
    details = settle(api, local, iid)
    assert details["instance_status"] == "ACTIVE"
    assert len(pe.for_instance(engine, iid)) == 1
    assert pe.http_get(host_ports(details)[80]).strip() == "hello from retry"

    stray_id = "11111111-2222-3333-4444-555555555555"
    engine.containers.create(pe.IMAGE, command=["sleep", "300"], labels={
        "gpucloud.managed": "true", "gpucloud.provider": local["provider_id"],
        "gpucloud.instance": stray_id})
    assert reconcile.run(api.rt) == 1
    assert pe.for_instance(engine, stray_id) == []
    assert len(pe.for_instance(engine, iid)) == 1  # the live one is untouched


def test_local_provider_registers_once_and_runs_a_plan(api, engine):
    from gpucloud.catalog.local_provider import register_local_provider

    api.rt.settings.local_provider = True
    note = register_local_provider(api.rt)
    assert note and "local" in note.lower() and "unix://" in note
    assert register_local_provider(api.rt) == note  # idempotent: same provider, same plans
    providers = api.client.get("/admin/providers", headers=api.admin).json()
    (prov,) = [p for p in providers if p["name"] == "local"]
    assert prov["driver"] == "docker" and prov["offers"] == 2
    _, headers = api.account(balance=10)
    plans = api.client.get("/gpu/plans/", headers=headers).json()
    names = sorted(p["plan"]["name"] for p in plans)
    assert names == ["cpu-0gi-none-0gpu-1cpu-1gi-10gi", "cpu-0gi-none-0gpu-2cpu-4gi-20gi"]
    small = next(p for p in plans if p["plan"]["supply"]["vcpu"]["count"] == 1)
    local = {"headers": headers, "offer_id": small["plan"]["id"]}
    try:
        iid = deploy(api, local, name="newcomer")
        details = settle(api, local, iid)
        assert details["instance_status"] == "ACTIVE", lines(api, local, iid, "events")
        assert pe.http_get(host_ports(details)[80]).strip() == "hello from newcomer"
    finally:
        pe.remove_provider_containers(engine, prov["id"])

    api.rt.settings.local_provider = False
    assert register_local_provider(api.rt) is None


@pytest.fixture(params=["sqlite", "postgres"])
def server_env(request, tmp_path):
    from tests.conftest import ADMIN_KEY, PG_DB, fresh_pg_database

    env = {"GPUCLOUD_CLOCK": "manual", "GPUCLOUD_ADMIN_KEY": ADMIN_KEY, "GPUCLOUD_DEMO": "0",
           "GPUCLOUD_WORKERS": "1", "GPUCLOUD_DATA_DIR": str(tmp_path),
           "GPUCLOUD_LEASE_SECONDS": "2", "GPUCLOUD_WORKER_INTERVAL_SECONDS": "0.05"}
    if request.param == "postgres":
        env["GPUCLOUD_DATABASE_URL"] = fresh_pg_database(f"{PG_DB}_docker_proc").replace(
            "postgresql+psycopg://", "postgresql://")
    return env


def test_server_killed_mid_create_converges_to_one_container(tmp_path, server_env, engine):
    """A real `gpucloud serve` SIGKILLed as soon as the container exists (before or while the
    result is recorded): after a restart exactly one container runs, the instance is ACTIVE,
    and a stray labelled container is removed by the reconciler."""
    import httpx

    from tests.conftest import ADMIN_KEY
    from tests.procs import ServerProcess

    admin = {"X-ADMIN-KEY": ADMIN_KEY}
    server = ServerProcess(tmp_path, server_env).start()
    pid = None
    try:
        c = httpx.Client(base_url=server.url, timeout=30)
        acct = c.post("/admin/accounts", json={"name": "a", "balance": "100"},
                      headers=admin).json()
        key = {"X-API-KEY": acct["api_key"]}
        pid = c.post("/admin/providers", headers=admin, json={
            "name": "local", "driver": "docker", "config": {
                "engine_url": pe.ENGINE_URL, "port_range": "31340-31359",
                "stop_timeout_seconds": 1}}).json()["id"]
        offer = c.post("/admin/offers", headers=admin, json={
            "provider_id": pid, "workload": "container",
            "gpu": {"vendor": "nvidia", "model": "h100", "vram": "80Gi", "interface": "SXM"},
            "gpu_count": 1, "vcpu": 1, "memory_gib": 1, "storage_gib": 1, "price_hour": "0.5",
            "countries": ["US"], "capacity": 3}).json()
        r = c.post("/gpu/instances/", headers=key, json={
            "plan_id": offer["id"], "name": "phoenix", "container_settings": {
                "image": pe.IMAGE, "expose": [{"port": 80, "protocol": "http"}],
                "environment": [{"name": "GREETING", "value": "phoenix"}],
                "startup_command": pe.SERVE}})
        assert r.status_code == 201, r.text
        iid = r.json()["instance_id"]
        pe.wait_for(lambda: pe.for_instance(engine, iid), timeout=30, every=0.005,
                    what="the container to appear")
    finally:
        server.kill()
    stray = "99999999-8888-7777-6666-555555555555"
    engine.containers.create(pe.IMAGE, command=["sleep", "300"], labels={
        "gpucloud.managed": "true", "gpucloud.provider": pid, "gpucloud.instance": stray})

    server = ServerProcess(tmp_path, server_env).start()
    try:
        c = httpx.Client(base_url=server.url, timeout=30)
        details = pe.wait_for(
            lambda: (d := c.get(f"/gpu/instances/{iid}", headers=key).json())
            ["instance_status"] == "ACTIVE" and d, timeout=30, what="ACTIVE after restart")
        (container,) = pe.for_instance(engine, iid)
        assert container.status == "running"
        port = details["network"]["forwarded_ports"][0]["external_port"]
        assert pe.http_get(int(port)).strip() == "hello from phoenix"
        pe.wait_for(lambda: pe.for_instance(engine, stray) == [], timeout=30,
                    what="the reconciler to remove the stray")
    finally:
        server.stop()
        pe.remove_provider_containers(engine, pid)


def test_a_vanished_container_is_recreated_on_the_same_ports(api, local, engine):
    iid = deploy(api, local, name="lazarus")
    details = settle(api, local, iid)
    ports = host_ports(details)
    (first,) = pe.for_instance(engine, iid)
    first.remove(force=True)  # someone cleaned up the host by hand
    api.advance(api.rt.settings.watch_interval_seconds + 1)
    (again,) = pe.for_instance(engine, iid)
    assert again.id != first.id and again.status == "running"
    details = api.instance(local["headers"], iid)
    assert details["instance_status"] == "ACTIVE" and host_ports(details) == ports
    assert pe.http_get(ports[80]).strip() == "hello from lazarus"


def test_an_engine_that_never_answers_fails_at_the_deadline_and_refunds(api):
    pid = api.provider(name="far", driver="docker",
                       engine_url="unix:///run/gpucloud-no-such-engine/docker.sock")
    offer = api.offer(pid, vcpu=1, memory_gib=1, storage_gib=1, price=PRICE)
    account_id, headers = api.account(balance=100)
    before = api.money(account_id)
    far = {"headers": headers, "offer_id": offer}
    iid = deploy(api, far, name="far")
    api.advance(60)
    assert api.instance(headers, iid)["instance_status"] == "INITIALIZED"  # still retrying
    api.advance(api.rt.settings.provision_deadline_seconds)
    assert api.instance(headers, iid)["instance_status"] == "FAILED"
    assert api.money(account_id)["balance"] == before["balance"]
    events = lines(api, far, iid, "events")
    assert any("deadline" in e for e in events), events


def test_gpucloud_serve_offers_the_local_engine(tmp_path, engine):
    """A newcomer's first start: the embedded default finds the Podman socket and says so."""
    import httpx

    from tests.procs import ServerProcess

    server = ServerProcess(tmp_path, {"GPUCLOUD_LOCAL_PROVIDER": "1"}).start()
    try:
        assert server.printed(r"Local provider: (Podman|Docker) at unix://\S+"), server.output()
        (key,) = server.printed(r"API key: (gpc_\S+)")
        plans = httpx.get(server.url + "/gpu/plans/", headers={"X-API-KEY": key}).json()
        assert "cpu-0gi-none-0gpu-1cpu-1gi-10gi" in [p["plan"]["name"] for p in plans]
    finally:
        server.stop()
