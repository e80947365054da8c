"""The docker driver against a real engine (Podman serving the Docker API; see
scripts/setup-podman.sh). Two layers:

- the driver called directly, as the lifecycle worker calls it (real engine; host ports and
  GPUs allocated by the control plane's allocator first, rows with a unique constraint);
- the whole path through the public API (tests/test_docker_api.py).
"""

from __future__ import annotations

import os
import time

import docker
import pytest
from sqlalchemy import select

from gpucloud.drivers.base import DriverContext, DriverTransientError, PortSpec, WorkloadSpec
from gpucloud.drivers.docker import DockerDriver
from gpucloud.drivers.docker import driver as docker_driver
from gpucloud.drivers.docker.engine import EngineError
from gpucloud.instances import allocations as alloc
from gpucloud.instances.models import Instance, PortAllocation
from tests import podman_env as pe

PORTS = (31200, 31239)


@pytest.fixture
def world(api, engine):
    """A docker provider on the test engine, an offer, an account; containers cleaned up."""
    pid = api.provider(name="local", driver="docker", engine_url=pe.ENGINE_URL,
                       port_range=f"{PORTS[0]}-{PORTS[1]}", stop_timeout_seconds=1)
    offer = api.offer(pid, vcpu=1, memory_gib=1, storage_gib=1, gpu_count=1)
    account_id, _ = api.account(balance=100)
    yield {"provider_id": pid, "offer_id": offer, "account_id": account_id}
    pe.remove_provider_containers(engine, pid)


def new_instance(rt, world, name: str = "box") -> str:
    """An instance row as a deploy leaves it (the driver's port rows reference it)."""
    from gpucloud.catalog.models import OfferZone

    now = rt.clock.now()
    with rt.db.write() as s:
        zone = s.scalar(select(OfferZone).where(OfferZone.offer_id == world["offer_id"]))
        inst = Instance(account_id=world["account_id"], offer_id=world["offer_id"],
                        zone_id=zone.id, provider_id=world["provider_id"], workload="container",
                        name=name, location="US", resources={}, price_hour=1_500_000,
                        created_at=now, updated_at=now)
        s.add(inst)
        s.flush()
        return inst.id


def driver(rt, world, **config) -> DockerDriver:
    cfg = DockerDriver.validate_config({"engine_url": pe.ENGINE_URL,
                                        "port_range": list(PORTS), "stop_timeout_seconds": 1,
                                        **config})
    return DockerDriver(world["provider_id"], cfg, DriverContext(clock=rt.clock))


def spec(instance_id: str, provider_id: str, **overrides) -> WorkloadSpec:
    values = {"instance_id": instance_id, "provider_id": provider_id, "workload": "container",
                  "name": "box", "gpu_count": 1, "gpu_model": "h100", "vcpu": 1, "memory_gib": 1,
                  "storage_gib": 1, "location": "US", "image": pe.IMAGE,
                  "expose": [PortSpec(80, "http"), PortSpec(7000, "tcp")],
                  "environment": [("GREETING", "first")], "startup_command": pe.SERVE,
                  "ssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9ok"
                          "Wi0dh2l9GKJl user@host"}
    values.update(overrides)
    return WorkloadSpec(**values)


def spec_for(rt, drv, instance_id: str, **overrides) -> WorkloadSpec:
    """The spec as the lifecycle hands it over: ports and GPUs allocated first."""
    return alloc.for_spec(rt, drv, spec(instance_id, drv.provider_id, **overrides))


def ports_of(status) -> dict[int, int]:
    return {f.port: f.external_port for f in status.forwarded_ports}


def allocations(rt, instance_id: str) -> list[tuple[int, int, str]]:
    with rt.db.read() as s:
        rows = s.scalars(select(PortAllocation).where(PortAllocation.instance_id == instance_id))
        return sorted((r.port, r.internal_port, r.protocol) for r in rows)


# -- config ----------------------------------------------------------------------------------

def test_config_is_validated_at_registration(api):
    good = DockerDriver.validate_config({"engine_url": "tcp://10.0.0.5:2376",
                                         "port_range": "40000-40100", "gpu_mode": "nvidia",
                                         "gpus": ["0", "1"]})
    assert good["port_range"] == [40000, 40100]
    assert good["restart_policy"] == "no" and good["gpu_mode"] == "nvidia"
    for bad in ({}, {"engine_url": "ftp://x"}, {"engine_url": "unix://relative.sock"},
                {"engine_url": "tcp://host"}, {"engine_url": pe.ENGINE_URL, "port_range": "9-5"},
                {"engine_url": pe.ENGINE_URL, "gpu_mode": "cdi"},
                {"engine_url": pe.ENGINE_URL, "gpu_mode": "amd"},
                {"engine_url": pe.ENGINE_URL, "tls": {"verify": True}},
                {"engine_url": pe.ENGINE_URL, "bogus": 1}):
        with pytest.raises(ValueError):
            DockerDriver.validate_config(bad)
    r = api.client.post("/admin/providers", headers=api.admin, json={
        "name": "bad", "driver": "docker", "config": {"engine_url": "tcp://h:1",
                                                      "port_range": [500, 400]}})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][-1] == "config"
    assert "port_range" in r.json()["detail"][0]["msg"]


def event_lines(drv, iid, state, wanted) -> list[str]:
    """The driver's event lines once one matching `wanted` is there: the engine writes its
    event log asynchronously, so a line can lag the state change it describes."""
    def ready():
        lines = [e.message for e in drv.events(iid, state)]
        return lines if any(wanted(m) for m in lines) else None

    return pe.wait_for(ready, timeout=15, what="engine event")


# -- create / observe ------------------------------------------------------------------------

def test_create_runs_a_real_container_idempotently(rt, world, engine):
    drv = driver(rt, world)
    iid = new_instance(rt, world)
    status = drv.create(spec_for(rt, drv, iid))
    assert status.phase == "running", status.reason
    assert status.domain == "127.0.0.1"
    ports = ports_of(status)
    assert set(ports) == {80, 7000}
    assert all(PORTS[0] <= p <= PORTS[1] for p in ports.values())
    assert status.uri == f"http://127.0.0.1:{ports[80]}"
    assert allocations(rt, iid) == sorted([(ports[80], 80, "http"), (ports[7000], 7000, "tcp")])

    # The real answers, through the published host ports.
    assert pe.http_get(ports[80]).strip() == "hello from first"
    assert pe.tcp_echo(ports[7000], b"echo me\n") == b"echo me\n"

    # The plan's limits, the env (SSH_PUBKEY injected), an init process, our labels.
    (container,) = pe.for_instance(engine, iid)
    host = container.attrs["HostConfig"]
    assert host["NanoCpus"] == 1_000_000_000
    assert host["Memory"] == 1024 ** 3
    assert host["PidsLimit"] == 4096
    assert host["Init"] is True
    env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
    assert env["GREETING"] == "first" and env["SSH_PUBKEY"].startswith("ssh-ed25519 ")
    assert container.labels["gpucloud.managed"] == "true"
    assert container.labels["gpucloud.instance"] == iid

    # A retry (crash after create) finds the same container and the same ports.
    again = drv.create(spec_for(rt, drv, iid))
    assert again.phase == "running" and ports_of(again) == ports
    assert [c.id for c in pe.for_instance(engine, iid)] == [container.id]
    assert drv.status(iid, again.state).container_started is True

    logs = pe.wait_for(lambda: drv.logs(iid, status.state, None), what="logs")
    assert "serving first" in logs
    assert drv.logs(iid, status.state, last=1) == logs[-1:]
    lines = event_lines(drv, iid, status.state, lambda m: m.endswith("started"))
    assert any("present on the host" in m for m in lines), lines
    assert any("created from image" in m for m in lines), lines
    assert drv.list_owned() == [iid]


def test_two_instances_never_share_ports_and_delete_frees_them(rt, world, engine):
    drv = driver(rt, world)
    a, b = new_instance(rt, world, "a"), new_instance(rt, world, "b")
    sa = drv.create(spec_for(rt, drv, a))
    sb = drv.create(spec_for(rt, drv, b))
    assert sa.phase == sb.phase == "running"
    assert not set(ports_of(sa).values()) & set(ports_of(sb).values())

    drv.delete(a, sa.state)
    assert pe.for_instance(engine, a) == []
    with rt.db.write() as s:  # what ending the instance does in the control plane
        alloc.release(s, a)
    assert allocations(rt, a) == []
    assert drv.status(a, sa.state).phase == "gone"
    drv.delete(a, sa.state)  # safe to repeat
    assert drv.list_owned() == [b]
    freed = sorted(ports_of(sa).values())
    assert all(pe.wait_for(lambda p=p: pe.port_free(p), what=f"port {p} free") for p in freed)

    c = new_instance(rt, world, "c")
    sc = drv.create(spec_for(rt, drv, c))
    assert sorted(ports_of(sc).values()) == freed  # lowest free ports first: a's come back


def settled(create, what: str = "the create to settle", timeout: float = 60.0):
    """Call `create` as the lifecycle does while it answers `pending` (a pull under way)."""
    seen: list = []

    def attempt():
        st = create()
        seen.append(st)
        return st if st.phase != "pending" else None

    final = pe.wait_for(attempt, timeout=timeout, every=0.2, what=what)
    return final, seen[:-1]


def test_missing_image_fails_with_the_pull_error(rt, world, engine):
    drv = driver(rt, world)
    iid = new_instance(rt, world)
    first = drv.create(spec_for(rt, drv, iid, image=pe.MISSING_IMAGE))
    assert first.phase == "pending" and pe.MISSING_IMAGE in first.progress  # never waits
    status, _ = settled(lambda: drv.create(spec_for(rt, drv, iid, image=pe.MISSING_IMAGE)))
    assert status.phase == "failed"
    assert "could not be pulled" in status.reason and pe.MISSING_IMAGE in status.reason
    assert pe.for_instance(engine, iid) == []
    drv.delete(iid, status.state)  # nothing to remove: still fine


def test_a_container_that_cannot_start_fails(rt, world, engine):
    drv = driver(rt, world)
    iid = new_instance(rt, world)
    status = drv.create(spec_for(rt, drv, iid, startup_command="/no/such/program"))
    # Which way the start check looked, should this ever fail again (a rare flake under load).
    assert status.phase == "failed", (status, drv.containers._pid_view)
    assert "could not start" in status.reason and "/no/such/program" in status.reason


def test_crash_is_not_started_and_visible(rt, world, engine):
    drv = driver(rt, world)
    iid = new_instance(rt, world)
    status = drv.create(spec_for(rt, drv, iid,
                             startup_command="sh -c 'echo about to crash; exit 1'"))
    assert status.phase == "running", status.reason
    after = pe.wait_for(lambda: (s := drv.status(iid, status.state)).container_started is False
                        and s, what="crash")
    assert after.phase == "running" and after.reason == "Container exited with code 1"
    assert "about to crash" in drv.logs(iid, after.state, None)
    event_lines(drv, iid, after.state, lambda m: "exited with code 1" in m)


def test_logs_of_a_container_that_prints_without_end_are_bounded(rt, world, engine):
    # 30,000 lines (~1.5 MB), then one line of 3 MB: the whole log is the last LOG_LINES
    # lines and at most LOG_BYTES of them; a tail is the end of the log.
    drv = driver(rt, world)
    iid = new_instance(rt, world)
    script = ("i=0; while [ $i -lt 30000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx;"
              " i=$((i+1)); done; echo the-end; sleep 600")
    status = drv.create(spec_for(rt, drv, iid, startup_command=f"sh -c '{script}'"))
    assert status.phase == "running", status.reason
    whole = pe.wait_for(lambda: (lines := drv.logs(iid, status.state, None))
                        and lines[-1] == "the-end" and lines, what="the 30,000 lines")
    assert len(whole) == docker_driver.LOG_LINES
    assert whole[0] == f"line-{30001 - docker_driver.LOG_LINES}-" + "x" * 32
    assert drv.logs(iid, status.state, 3) == whole[-3:]

    iid = new_instance(rt, world, name="long")
    script = "printf %03000000d 7; echo; echo the-end; sleep 600"
    status = drv.create(spec_for(rt, drv, iid, startup_command=f"sh -c '{script}'"))
    assert status.phase == "running", status.reason
    for last in (None, 1, 2):
        lines = pe.wait_for(lambda n=last: (got := drv.logs(iid, status.state, n))
                            and got[-1] == "the-end" and got, what="the long line's end")
        assert sum(len(line) + 1 for line in lines) <= docker_driver.LOG_BYTES


def test_a_torn_log_line_is_read_again_after_a_pause(rt, world, engine, monkeypatch):
    # Podman refuses a read that meets a line its monitor is still writing; on a loaded host
    # three immediate tries met the same torn line (a full test run). The engine's refusal is
    # the far side here: the first LOG_TRIES - 1 reads get it, the last one reads the log.
    drv = driver(rt, world)
    iid = new_instance(rt, world)
    status = drv.create(spec_for(rt, drv, iid, startup_command="sh -c 'echo hello; sleep 600'"))
    assert status.phase == "running", status.reason
    pe.wait_for(lambda: drv.logs(iid, status.state, None) == ["hello"], what="the line")
    real, calls, torn_reads = docker.models.containers.Container.logs, [], [
        docker_driver.LOG_TRIES - 1]

    def torn(self, *args, **kwargs):
        calls.append(time.monotonic())
        if len(calls) <= torn_reads[0]:
            raise docker.errors.APIError("500 Server Error", explanation=(
                "failed to obtain logs for Container: '2026-12-02T01:26:' is not a valid "
                "container log line"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(docker.models.containers.Container, "logs", torn)
    assert drv.logs(iid, status.state, None) == ["hello"]
    assert len(calls) == docker_driver.LOG_TRIES
    waited = calls[-1] - calls[0]
    assert waited >= docker_driver.LOG_PAUSE * (2 ** (docker_driver.LOG_TRIES - 1) - 1) * 0.9
    calls.clear()
    torn_reads[0] = 10**6  # every read torn: after the last try the refusal shows
    with pytest.raises(EngineError, match="not a valid container log line"):
        drv.logs(iid, status.state, None)
    assert len(calls) == docker_driver.LOG_TRIES


def test_the_engine_keeps_at_most_log_max_mib_of_output(rt, world, engine):
    # ~5 MB printed under a 1 MiB limit: the engine's log file stays within it.
    drv = driver(rt, world, log_max_mib=1)
    iid = new_instance(rt, world)
    script = ("i=0; while [ $i -lt 100000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx;"
              " i=$((i+1)); done; echo the-end; sleep 600")
    status = drv.create(spec_for(rt, drv, iid, startup_command=f"sh -c '{script}'"))
    assert status.phase == "running", status.reason
    pe.wait_for(lambda: drv.logs(iid, status.state, 1) == ["the-end"], timeout=60,
                what="the 100,000 lines")
    (container,) = pe.for_instance(engine, iid)
    assert 0 < os.path.getsize(container.attrs["LogPath"]) <= 2**20 + 4096

    # A container printing without end: the engine truncates its log over and over, and a
    # read that meets a truncation is refused by Podman (3% of polls, measured); every poll
    # of the logs is still answered. (What the tail holds mid-flood is the engine's: a line,
    # a piece of one, or nothing right after a truncation.)
    iid = new_instance(rt, world, name="flood")
    script = "i=0; while true; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done"
    status = drv.create(spec_for(rt, drv, iid, startup_command=f"sh -c '{script}'"))
    assert status.phase == "running", status.reason
    tails = [drv.logs(iid, status.state, 1) for _ in range(300)]
    assert all(len(tail) <= 1 for tail in tails)
    assert sum(1 for tail in tails if tail and tail[0].startswith("line-")) > 150


def test_update_replaces_the_container_and_keeps_ports(rt, world, engine):
    drv = driver(rt, world)
    iid = new_instance(rt, world)
    first = drv.create(spec_for(rt, drv, iid))
    ports = ports_of(first)
    assert pe.http_get(ports[80]).strip() == "hello from first"

    # A bad image: the old container keeps serving, and the reason says why.
    bad, waits = settled(lambda: drv.update(spec_for(rt, drv, iid, image=pe.MISSING_IMAGE), 2),
                         "the update's pull to fail")
    assert waits and all(w.progress for w in waits)  # pulled in the background first
    assert bad.phase == "running" and bad.applied_generation == 1
    assert "could not be pulled" in bad.reason and pe.MISSING_IMAGE in bad.reason
    assert pe.http_get(ports[80]).strip() == "hello from first"

    # A command that cannot run: the replacement is dropped and the old container restarted.
    broken = drv.update(spec_for(rt, drv, iid, startup_command="/no/such/server"), 2)
    assert broken.phase == "running" and broken.applied_generation == 1
    assert "could not start" in broken.reason
    assert pe.http_get(ports[80]).strip() == "hello from first"
    assert len(pe.for_instance(engine, iid)) == 1

    new_cmd = pe.SERVE.replace("serving", "now serving")
    good = drv.update(spec_for(rt, drv, iid, environment=[("GREETING", "second")],
                           startup_command=new_cmd), 3)
    assert good.phase == "running" and good.applied_generation == 3, good.reason
    assert ports_of(good) == ports
    assert pe.http_get(ports[80]).strip() == "hello from second"
    (container,) = pe.for_instance(engine, iid)
    assert container.name == f"gpucloud-{iid}"
    assert "GREETING=second" in container.attrs["Config"]["Env"]
    logs = pe.wait_for(lambda: "now serving second" in drv.logs(iid, good.state, None),
                       what="new process output")
    assert logs
    # Repeating the same update is a no-op.
    same = drv.update(spec_for(rt, drv, iid, environment=[("GREETING", "second")],
                           startup_command=new_cmd), 3)
    assert [c.id for c in pe.for_instance(engine, iid)] == [container.id]
    assert same.applied_generation == 3


def test_strays_are_listed_and_engine_down_is_transient(rt, world, engine):
    drv = driver(rt, world)
    iid = new_instance(rt, world)
    drv.create(spec_for(rt, drv, iid, expose=[PortSpec(7000, "tcp")]))
    # A container some crashed process made for an instance the database never kept.
    stray = engine.containers.create(pe.IMAGE, command=["sleep", "60"], labels={
        "gpucloud.managed": "true", "gpucloud.provider": world["provider_id"],
        "gpucloud.instance": "00000000-0000-0000-0000-000000000000"})
    assert drv.list_owned() == sorted([iid, "00000000-0000-0000-0000-000000000000"])
    drv.delete("00000000-0000-0000-0000-000000000000", None)
    assert drv.list_owned() == [iid]
    with pytest.raises(docker.errors.NotFound):
        stray.reload()

    down = DockerDriver(world["provider_id"], DockerDriver.validate_config(
        {"engine_url": "unix:///tmp/gpucloud-no-engine.sock"}), DriverContext(clock=rt.clock))
    with pytest.raises(DriverTransientError):
        down.create(spec_for(rt, down, new_instance(rt, world, "d")))
    with pytest.raises(DriverTransientError):
        down.status(iid, None)


def test_gpus_the_engine_cannot_provide_fail_the_create_honestly(rt, world, engine):
    # This Podman has no CDI spec for the device: the engine refuses, the instance must FAIL
    # with that reason instead of running without its GPU.
    drv = driver(rt, world, gpu_mode="cdi", gpus=["nvidia.com/gpu=0"])
    iid = new_instance(rt, world)
    status = drv.create(spec_for(rt, drv, iid))
    assert status.phase == "failed"
    assert "could not be created" in status.reason and "nvidia.com/gpu=0" in status.reason
    assert pe.for_instance(engine, iid) == []
    # More GPUs than the inventory holds: the allocator refuses before the engine is asked.
    with pytest.raises(alloc.GpusExhausted, match="Not enough free GPUs"):
        spec_for(rt, drv, new_instance(rt, world, "two"), gpu_count=2)


def test_an_image_is_pulled_in_the_background_and_a_restart_finds_it(rt, world, engine):
    """create starts the pull and answers `pending` at once, with progress and when to ask
    again; a driver object of a restarted process (no memory of the pull) finds the pull's
    result, the image, and makes exactly one container."""
    image = pe.image_to_pull(engine)
    drv = driver(rt, world)
    iid = new_instance(rt, world)
    first = drv.create(spec_for(rt, drv, iid, image=image))
    assert first.phase == "pending", first.reason
    assert first.progress.startswith(f"Pulling image {image}")
    assert first.check_again_at is not None and first.check_again_at > rt.clock.now()
    assert pe.for_instance(engine, iid) == []  # nothing made before the image is there

    restarted = driver(rt, world)
    status, waits = settled(lambda: restarted.create(spec_for(rt, restarted, iid, image=image)))
    assert status.phase == "running", status.reason
    assert all(w.phase == "pending" and w.progress for w in waits)
    (container,) = pe.for_instance(engine, iid)
    assert container.attrs["Config"]["Image"] == image
    assert engine.images.get(image) is not None
    # The first process's object asked again: the same container, not a second one.
    again = drv.create(spec_for(rt, drv, iid, image=image))
    assert again.phase == "running"
    assert [c.id for c in pe.for_instance(engine, iid)] == [container.id]

    # The driver that saw its pull through says so in the events.
    other = new_instance(rt, world, "other")
    image2 = pe.image_to_pull(engine)
    st, _ = settled(lambda: drv.create(spec_for(rt, drv, other, image=image2)))
    assert st.phase == "running", st.reason
    notes = [n["message"] for n in st.state["notes"]]
    assert any(m.startswith(f"Image {image2} pulled in") for m in notes), notes
    for ref in (image, image2):
        pe.remove_image_later(engine, ref)
