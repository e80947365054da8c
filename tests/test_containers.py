"""Container instances end to end: deploy, provisioning, details, update, logs/events,
terminate, and the money that moves with each step."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal

from sqlalchemy import select

from gpucloud.catalog.models import OfferZone
from gpucloud.instances.models import Instance
from tests.factories import SSH_ED25519


def _at(line: str) -> dt.datetime:
    """The time a log or event line starts with: ISO 8601 in UTC with Z, microseconds when
    the time has them."""
    stamp = line.split(" ", 1)[0]
    assert stamp.endswith("Z"), line
    return dt.datetime.fromisoformat(stamp[:-1] + "+00:00")


def _setup(api, balance="100", price="1.5", capacity=10, **provider_config):
    account_id, headers = api.account(balance=balance)
    pid = api.provider(**provider_config)
    offer = api.offer(pid, price=price, capacity=capacity)
    return account_id, headers, offer


def test_deploy_then_active_with_network(api):
    account_id, headers, offer = _setup(api)
    r = api.client.post("/gpu/instances/", headers=headers,
                        json=api.container_body(offer, ssh_key=SSH_ED25519))
    assert r.status_code == 201 and set(r.json()) == {"instance_id"}
    iid = r.json()["instance_id"]

    d = api.instance(headers, iid)
    assert d["instance_status"] == "INITIALIZED" and d["container_status"] == "NOT_STARTED"
    assert d["domain"] is None and d["network"] is None and d["location"] == "US"
    assert d["created_at"].endswith("Z")
    assert d["billing"] == {"hourly_usage": 0, "total_spendings": 0,
                            "reserved_amount": Decimal("4.5"), "next_billing_period": None}
    assert d["resources"]["gpu_model"]["model"] == "h100"
    assert d["container_info"]["environment"] == [{"name": "SSH_PUBKEY", "value": SSH_ED25519}]
    assert api.money(account_id)["balance"] == Decimal("95.5")

    api.advance(10)
    d = api.instance(headers, iid)
    assert d["instance_status"] == "ACTIVE" and d["container_status"] == "STARTED"
    net = d["network"]
    assert d["domain"] and net["domain"] == d["domain"] and d["domain"].startswith(iid[:8])
    ports = {(p["port"], p["protocol"]): p["external_port"] for p in net["forwarded_ports"]}
    assert set(ports) == {("22", "tcp"), ("80", "http")}
    assert all(30000 <= int(p) <= 32767 for p in ports.values())
    assert net["uri"] == f"http://{d['domain']}:{ports[('80', 'http')]}"
    # Activation charges the current hour; the reserve keeps two.
    assert d["billing"] == {"hourly_usage": Decimal("1.5"), "total_spendings": Decimal("1.5"),
                            "reserved_amount": Decimal("3"),
                            "next_billing_period": "2026-01-05T11:00:00Z"}

    listed = api.json(api.client.get("/gpu/instances/", headers=headers))
    assert [i["id"] for i in listed] == [iid] and listed[0]["instance_status"] == "ACTIVE"
    assert set(listed[0]) == {"id", "name", "instance_status", "resources", "domain", "location",
                              "created_at", "updated_at"}
    # the collection root works without the slash too
    assert api.client.get("/gpu/instances", headers=headers).json() == api.json(
        api.client.get("/gpu/instances/", headers=headers))


def test_deploy_without_trailing_slash_and_list_newest_first(api):
    _, headers, offer = _setup(api)
    first = api.deploy(headers, offer, name="first")
    api.advance(1)
    r = api.client.post("/gpu/instances", headers=headers,
                        json=api.container_body(offer, name="second"))
    assert r.status_code == 201
    names = [i["name"] for i in api.client.get("/gpu/instances/", headers=headers).json()]
    assert names == ["second", "first"] and first


def test_no_port_80_http_means_no_uri(api):
    _, headers, offer = _setup(api)
    body = api.container_body(offer)
    body["container_settings"]["expose"] = [{"port": 8080}]
    iid = api.client.post("/gpu/instances/", headers=headers, json=body).json()["instance_id"]
    api.advance(10)
    net = api.instance(headers, iid)["network"]
    assert net["uri"] is None
    assert [(p["port"], p["protocol"]) for p in net["forwarded_ports"]] == [("8080", "tcp")]


def test_terminate_refunds_reserve_and_frees_capacity(api):
    account_id, headers, offer = _setup(api, capacity=1)
    iid = api.deploy(headers, offer)
    # not ACTIVE yet → 400
    r = api.client.delete(f"/gpu/instances/{iid}", headers=headers)
    assert r.status_code == 400
    assert r.json()["detail"] == "Only an ACTIVE instance can be terminated"
    api.advance(10)
    assert api.client.delete(f"/gpu/instances/{iid}", headers=headers).status_code == 204
    d = api.instance(headers, iid)
    assert d["instance_status"] == "ENDED" and d["network"] is None and d["domain"] is None
    assert d["billing"] == {"hourly_usage": 0, "total_spendings": Decimal("1.5"),
                            "reserved_amount": 0, "next_billing_period": None}
    assert api.money(account_id) == {"id": account_id, "name": "acct",
                                     "balance": Decimal("98.5"), "reserved": 0,
                                     "spent": Decimal("1.5")}
    # a second terminate is a 400, and the capacity came back: the plan deploys again
    assert api.client.delete(f"/gpu/instances/{iid}", headers=headers).status_code == 400
    api.deploy(headers, offer, name="again")
    api.advance(5)
    events = api.client.get(f"/gpu/instances/{iid}/events", headers=headers).json()
    assert any("Instance ended: Terminated by user" in e for e in events)
    assert any("Killed container" in e for e in events)
    assert any("Workload removed at the provider" in e for e in events)


def test_failed_provisioning_refunds_everything(api):
    account_id, headers, offer = _setup(api, capacity=1, fail_provisioning=True)
    iid = api.deploy(headers, offer)
    api.advance(10)
    d = api.instance(headers, iid)
    assert d["instance_status"] == "FAILED" and d["network"] is None
    assert d["billing"]["reserved_amount"] == 0 and d["billing"]["total_spendings"] == 0
    assert api.money(account_id)["balance"] == Decimal("100")
    events = api.client.get(f"/gpu/instances/{iid}/events", headers=headers).json()
    assert any("Provisioning failed" in e for e in events)
    assert any("Failed to pull image" in e for e in events)
    # capacity returned: the only unit can be taken again
    api.deploy(headers, offer, name="again")


def test_provisioning_deadline_fails_the_instance(api):
    account_id, headers, offer = _setup(api, provision_seconds=3600)
    iid = api.deploy(headers, offer)
    api.advance(899)
    assert api.instance(headers, iid)["instance_status"] == "INITIALIZED"
    api.advance(2)
    d = api.instance(headers, iid)
    assert d["instance_status"] == "FAILED"
    assert api.money(account_id)["balance"] == Decimal("100")
    events = api.client.get(f"/gpu/instances/{iid}/events", headers=headers).json()
    assert any("deadline" in e for e in events)


def test_lost_workload_ends_instance(api):
    account_id, headers, offer = _setup(api, lose_after_seconds=60)
    iid = api.deploy(headers, offer)
    api.advance(10)
    assert api.instance(headers, iid)["instance_status"] == "ACTIVE"
    api.advance(120)
    d = api.instance(headers, iid)
    assert d["instance_status"] == "ENDED" and d["billing"]["reserved_amount"] == 0
    # one hour charged at activation, the rest refunded
    assert api.money(account_id)["balance"] == Decimal("98.5")
    events = api.client.get(f"/gpu/instances/{iid}/events", headers=headers).json()
    assert any("workload lost" in e for e in events)


def test_update_flow(api):
    _, headers, offer = _setup(api)
    iid = api.deploy(headers, offer)
    body = {"name": "renamed", "container_settings": {
        "image": "ghcr.io/acme/server:2.0", "startup_command": "serve --fast",
        "environment": [{"name": "MODE", "value": "fast"}],
        "expose": [{"port": 9999}],  # ignored
        "credentials": {"host": "ghcr.io", "username": "me", "password": "hunter2"}}}
    r = api.client.put(f"/gpu/instances/{iid}", headers=headers, json=body)
    assert r.status_code == 400 and r.json()["detail"] == "Only an ACTIVE instance can be updated"
    api.advance(10)
    assert api.client.put(f"/gpu/instances/{iid}", headers=headers, json=body).status_code == 204
    # pending: the details still show the configuration in effect
    d = api.instance(headers, iid)
    assert d["name"] == "box" and d["container_info"]["image"] == "docker.io/library/ubuntu:22.04"
    r = api.client.put(f"/gpu/instances/{iid}", headers=headers, json=body)
    assert r.status_code == 400 and "still being applied" in r.json()["detail"]
    api.advance(1)
    d = api.instance(headers, iid)
    assert d["name"] == "renamed"
    assert d["container_info"] == {
        "image": "ghcr.io/acme/server:2.0", "startup_command": "serve --fast",
        "environment": [{"name": "MODE", "value": "fast"}],
        "expose": [{"port": "22", "protocol": "tcp"}, {"port": "80", "protocol": "http"}]}
    assert d["instance_status"] == "ACTIVE" and len(d["network"]["forwarded_ports"]) == 2
    assert "hunter2" not in str(d)
    events = api.client.get(f"/gpu/instances/{iid}/events", headers=headers).json()
    assert any("Update requested" in e for e in events)
    assert any("Update applied" in e for e in events)
    assert any('Pulling image "ghcr.io/acme/server:2.0"' in e for e in events)
    assert all("hunter2" not in e for e in events)
    logs = api.client.get(f"/gpu/instances/{iid}/logs", headers=headers).json()
    assert any("+ serve --fast" in line for line in logs)
    # a second update after the first completed is fine
    assert api.client.put(f"/gpu/instances/{iid}", headers=headers, json=body).status_code == 204


def test_logs_and_events_with_last(api):
    _, headers, offer = _setup(api)
    iid = api.deploy(headers, offer, container_settings={
        "image": "docker.io/library/ubuntu:22.04", "expose": [{"port": 22}],
        "startup_command": "sleep infinity"})
    assert api.client.get(f"/gpu/instances/{iid}/logs", headers=headers).json() == []
    api.advance(10)
    logs = api.client.get(f"/gpu/instances/{iid}/logs", headers=headers).json()
    assert any("sshd listening on 0.0.0.0 port 22" in line for line in logs)
    assert any("+ sleep infinity" in line for line in logs)
    assert all(_at(line) for line in logs)
    api.advance(1800)
    later = api.client.get(f"/gpu/instances/{iid}/logs", headers=headers).json()
    beats = [line for line in later if "heartbeat" in line]
    assert len(beats) == 3 and len(later) == len(logs) + 3
    assert api.client.get(f"/gpu/instances/{iid}/logs?last=2", headers=headers).json() \
        == later[-2:]
    events = api.client.get(f"/gpu/instances/{iid}/events", headers=headers).json()
    assert "Instance scheduled on provider sim" in events[0]
    assert any("Scheduling workload on node gpu-node-" in e for e in events)
    assert any("Started container box" in e for e in events)
    assert events == sorted(events, key=_at)
    assert api.client.get(f"/gpu/instances/{iid}/events?last=1", headers=headers).json() \
        == events[-1:]
    for bad in ("0", "-1", "abc"):
        for kind in ("logs", "events"):
            r = api.client.get(f"/gpu/instances/{iid}/{kind}?last={bad}", headers=headers)
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "last"]


def test_the_log_tail_of_a_long_running_instance_is_the_end_of_its_log(api):
    # Up for days, updated, then more heartbeats: the tail holds heartbeats on both sides of
    # the update's lines, and every `last` is the end of the whole log.
    _, headers, offer = _setup(api, balance="1000")
    iid = api.deploy(headers, offer, container_settings={
        "image": "docker.io/library/ubuntu:22.04", "expose": [{"port": 22}],
        "startup_command": "sleep infinity"})
    api.advance(10)
    api.advance(2 * 86400)
    body = {"name": "box", "container_settings": {
        "image": "docker.io/library/ubuntu:24.04", "expose": [{"port": 22}],
        "startup_command": "sleep infinity"}}
    assert api.client.put(f"/gpu/instances/{iid}", headers=headers, json=body).status_code == 204
    api.advance(3700)
    whole = api.client.get(f"/gpu/instances/{iid}/logs", headers=headers).json()
    beats = [line for line in whole if "heartbeat" in line]
    assert len(beats) == 2 * 144 + 6 and "Starting container from docker.io/library/ubuntu:24.04" \
        in " ".join(whole[-12:])
    for last in (1, 5, 8, 12, 40, 500):
        tail = api.client.get(f"/gpu/instances/{iid}/logs?last={last}", headers=headers).json()
        assert tail == whole[-last:], last


def test_last_unit_taken_once_under_concurrency(api):
    _, headers, offer = _setup(api, capacity=1, balance="1000")
    results: list[int] = []
    barrier = threading.Barrier(4)

    def deploy(n: int) -> None:
        barrier.wait()
        r = api.client.post("/gpu/instances/", headers=headers,
                            json=api.container_body(offer, name=f"c{n}"))
        results.append(r.status_code)

    threads = [threading.Thread(target=deploy, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [201, 400, 400, 400]
    assert len(api.client.get("/gpu/instances/", headers=headers).json()) == 1


def test_a_deploy_writes_its_zone_location_and_first_line_together(api, rt):
    """The zone take, the row and its first lifecycle line are one statement on PostgreSQL
    and three on SQLite: either way a container lands in the zone it asked for (or the one
    with the most room), its location is that zone's country and the first line names it; a
    VM keeps its offer's location; a refused deploy writes none of it."""
    _, headers = api.account(balance="100")
    pid = api.provider("zones")
    offer = api.offer(pid, countries=["US", "DE", "FI"], capacity=1)
    vm_offer = api.offer(pid, workload="vm")

    def zones() -> dict[str, int]:
        with rt.db.read() as s:
            return dict(s.execute(select(OfferZone.country, OfferZone.in_use)
                                  .where(OfferZone.offer_id == offer)).all())

    fi = api.deploy(headers, offer, constraints={"location": "FI"})
    first = api.deploy(headers, offer)  # equal room left: alphabetical, DE
    assert zones() == {"DE": 1, "FI": 1, "US": 0}
    r = api.client.post("/gpu/instances/", headers=headers,
                        json=api.container_body(offer, constraints={"location": "FI"}))
    assert r.status_code == 400
    assert r.json()["detail"] == ("Location FI is not available for this plan. "
                                  "Available locations: US")
    vm = api.deploy_vm(headers, vm_offer)
    for iid, location, kind in ((fi, "FI", ""), (first, "DE", ""), (vm, "us-east-1", "vms")):
        path = f"/gpu/instances/{kind + '/' if kind else ''}{iid}"
        assert api.instance(headers, iid, kind)["location"] == location
        events = api.client.get(f"{path}/events", headers=headers).json()
        assert events[0].endswith(f" Instance scheduled on provider zones ({location})")
        with rt.db.read() as s:
            zone_id = s.get(Instance, iid).zone_id
            assert zone_id is not None and s.get(OfferZone, zone_id).offer_id in (offer, vm_offer)
    assert len(api.client.get("/gpu/instances/", headers=headers).json()) == 2
    assert zones() == {"DE": 1, "FI": 1, "US": 0}


def test_a_simulated_providers_feeds_are_read_on_the_request_thread_unless_it_is_slow(api, rt):
    """The simulated provider's logs and events are SELECTs on our own database: a feed reads
    them right after our rows, on the request thread, and the driver-call pool never sees
    them. Set to be slow (`call_latency_seconds`) or to hang, the same provider's reads go
    through the pool with its deadline, and the answers are the same lines."""
    _, headers = api.account(balance="100")
    quick = api.offer(api.provider("quick"))
    slow_pid = api.provider("slow", call_latency_seconds=0.01)
    slow = api.offer(slow_pid)
    assert rt.driver_for(slow_pid, "simulated", {"call_latency_seconds": 0.01}).reads_inline \
        is False
    assert rt.driver_for(slow_pid, "simulated", {"hang_calls": True}).reads_inline is False
    a, b = api.deploy(headers, quick), api.deploy(headers, slow)
    api.advance(700)
    feeds = {}
    for iid in (a, b):
        for what in ("logs", "events"):
            r = api.client.get(f"/gpu/instances/{iid}/{what}?last=3", headers=headers)
            assert r.status_code == 200 and len(r.json()) == 3, r.text
            feeds[iid, what] = [line.split(" ", 1)[1] for line in r.json()]
    assert feeds[a, "logs"][-1].startswith("heartbeat: up 10m")
    assert feeds[a, "events"][-1] == feeds[b, "events"][-1] == "Started container box"
    with rt.db.read() as s:
        quick_pid, slow_pid_seen = (s.get(Instance, iid).provider_id for iid in (a, b))
    assert slow_pid_seen == slow_pid
    # The pool keeps, per provider whose reads it ran, how much of their time was CPU.
    pooled = rt.calls._busy_share
    assert slow_pid in pooled and quick_pid not in pooled
