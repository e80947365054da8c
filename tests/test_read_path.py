"""The fast read path answers with what the database holds now, never with a stale copy.

Lists of instances and pages of the ledger are assembled from per-row JSON rendered once and
kept in memory (jsonresp.RenderedRows), keyed by the row as the database returns it. These
tests change rows through the API, and behind the server's back through another connection
(as another server process on the same database would), and read them back through the API
at once. On SQLite and PostgreSQL (the conftest runs both).
"""

from __future__ import annotations

import datetime as dt

import anyio
import orjson
import pytest
from sqlalchemy import (
    Float,
    Integer,
    LargeBinary,
    create_engine,
    literal_column,
    select,
    text,
)

from gpucloud.billing import service as billing_service
from gpucloud.db import Database
from gpucloud.errors import NotFound
from gpucloud.instances import events, service
from gpucloud.instances.models import Instance
from gpucloud.jsonresp import isoformat_z
from gpucloud.runtime import config_key, read_threads
from tests.conftest import make_settings


def _names(api, headers, path: str) -> dict[str, tuple[str, str]]:
    r = api.client.get(path, headers=headers)
    assert r.status_code == 200, r.text
    key = "instance_status" if path == "/gpu/instances/" else "status"
    return {i["id"]: (i["name"], i[key]) for i in r.json()}


def _other_process(rt):
    """A connection of its own, like another server process on the same database."""
    return create_engine(rt.db.url.replace("postgresql://", "postgresql+psycopg://"))


def test_instance_lists_follow_renames_terminations_and_changes_from_elsewhere(api, rt):
    _, key = api.account(balance=500)
    pid = api.provider()
    vm_plan = api.offer(pid, "vm")
    container_plan = api.offer(pid, "container")
    vm = api.deploy_vm(key, vm_plan, name="before")
    box = api.deploy(key, container_plan, name="box")
    assert _names(api, key, "/gpu/instances/vms")[vm] == ("before", "INITIALIZED")
    assert _names(api, key, "/gpu/instances/")[box] == ("box", "INITIALIZED")

    api.advance(120)  # both become ACTIVE (the background steps run on the manual clock)
    assert _names(api, key, "/gpu/instances/vms")[vm] == ("before", "ACTIVE")
    assert _names(api, key, "/gpu/instances/")[box] == ("box", "ACTIVE")

    r = api.client.put(f"/gpu/instances/vms/{vm}", json={"name": "after"}, headers=key)
    assert r.status_code == 204, r.text
    assert _names(api, key, "/gpu/instances/vms")[vm] == ("after", "ACTIVE")

    assert api.client.delete(f"/gpu/instances/{box}", headers=key).status_code == 204
    listed = _names(api, key, "/gpu/instances/")[box]
    assert listed[1] != "ACTIVE", listed

    # Another process renames the VM without touching updated_at: the list shows it at once.
    other = _other_process(rt)
    with other.begin() as conn:
        conn.execute(text("UPDATE instances SET name = 'elsewhere' WHERE id = :id"), {"id": vm})
    other.dispose()
    assert _names(api, key, "/gpu/instances/vms")[vm] == ("elsewhere", "ACTIVE")
    details = api.client.get(f"/gpu/instances/vms/{vm}", headers=key).json()
    assert details["name"] == "elsewhere"


def test_details_follow_every_column_they_show_even_changed_from_elsewhere(api, rt):
    """Details are rendered once per distinct row (views.details_body): a change to any
    column they show, by the API or behind its back, is in the next answer."""
    _, key = api.account(balance=500)
    pid = api.provider()
    box = api.deploy(key, api.offer(pid, "container"), name="box")
    vm = api.deploy_vm(key, api.offer(pid, "vm"))
    path = f"/gpu/instances/{box}"
    before = api.client.get(path, headers=key)
    assert before.json()["instance_status"] == "INITIALIZED"
    assert before.json()["network"] is None
    assert api.client.get(path, headers=key).content == before.content  # the kept bytes

    api.advance(120)
    active = api.client.get(path, headers=key).json()
    assert active["instance_status"] == "ACTIVE" and active["container_status"] == "STARTED"
    assert active["network"]["domain"]
    api.advance(3600)  # an hour boundary charges it
    charged = api.client.get(path, headers=key).json()
    assert charged["billing"]["total_spendings"] > active["billing"]["total_spendings"]

    # Another process changes a JSON column and a money column, and a VM's key.
    sqlite = rt.db.is_sqlite
    other = _other_process(rt)
    with other.begin() as conn:
        conn.execute(text("UPDATE instances SET network = "
                          + (":n" if sqlite else "CAST(:n AS JSON)")
                          + ", spent = spent + 1000000 WHERE id = :id"),
                     {"id": box, "n": '{"forwarded_ports": [], "uri": "https://elsewhere"}'})
        conn.execute(text("UPDATE instances SET ssh_key = 'ssh-ed25519 AAAA elsewhere' "
                          "WHERE id = :id"), {"id": vm})
    other.dispose()
    changed = api.client.get(path, headers=key).json()
    assert changed["network"]["uri"] == "https://elsewhere"
    assert changed["billing"]["total_spendings"] == charged["billing"]["total_spendings"] + 1
    vm_details = api.client.get(f"/gpu/instances/vms/{vm}", headers=key).json()
    assert vm_details["ssh_key"] == "ssh-ed25519 AAAA elsewhere"


def test_two_accounts_with_identical_rows_do_not_share_items(api):
    lists = []
    for name in ("one", "two"):
        _, key = api.account(balance=100, name=name)
        plan = api.offer(api.provider(f"sim-{name}"), "vm")
        vm = api.deploy_vm(key, plan, name="same")
        lists.append((key, vm))
    for key, vm in lists:
        assert list(_names(api, key, "/gpu/instances/vms")) == [vm]


def test_ledger_pages_show_new_entries_and_their_balances_at_once(api):
    account_id, key = api.account(balance=10)
    first = api.client.get("/gpu/account/transactions", headers=key).json()
    assert [e["kind"] for e in first["items"]] == ["deposit"]
    api.deposit(account_id, "2.5")
    page = api.client.get("/gpu/account/transactions", headers=key).json()
    assert [e["kind"] for e in page["items"]] == ["deposit", "deposit"]
    assert page["items"][0]["amount"] == 2.5 and page["items"][0]["balance_after"] == 12.5
    assert page["items"][1] == first["items"][0]
    two = api.client.get("/gpu/account/transactions?limit=1", headers=key).json()
    assert [e["id"] for e in two["items"]] == [page["items"][0]["id"]]
    rest = api.client.get(f"/gpu/account/transactions?limit=1&cursor={two['next_cursor']}",
                          headers=key).json()
    assert rest == {"items": [page["items"][1]], "next_cursor": None}


def test_row_keys_come_in_the_statements_order_and_convert_to_its_rows(rt, api):
    """`Reader.keys` (what the lists and ledger pages render from): on SQLite each row's JSON
    text, all of them read in one step; the same rows, in the same order, as `execute`."""
    acct, _ = api.account(balance=5)
    for amount in ("1", "2", "3"):
        api.deposit(acct, amount)
    stmt, params = billing_service.page_query(acct, 10, None)  # newest first: ids descending
    reader = rt.db.reader
    rows = reader.execute(stmt, params)
    keys = reader.keys(stmt, params)
    assert [reader.convert(stmt, k) for k in keys] == list(rows)
    assert [r.id for r in rows] == sorted((r.id for r in rows), reverse=True) and len(rows) == 4
    assert all(isinstance(k, str) for k in keys) == rt.db.is_sqlite
    if rt.db.is_sqlite:
        # Columns JSON would not give back unchanged (a float, bytes) are read row by row.
        odd = select(literal_column("0.1", Float).label("x"), literal_column("1", Integer),
                     literal_column("x'00ff'", LargeBinary).label("b"))
        assert reader.keys(odd) == reader.execute(odd, raw=True) == [(0.1, 1, b"\x00\xff")]
    assert reader.keys(stmt, params | {"account_id": "00000000-0000-4000-8000-000000000000"}) \
        == []


def test_reads_keep_working_when_every_raw_connection_is_busy(rt, api):
    """Past its limit the reader borrows a pooled connection: same rows. (On PostgreSQL the
    API's reads go through `rt.read` on pipelined connections; the Reader's raw connections
    serve the other reads, and `Reader.execute` is asked directly.)"""
    acct, key = api.account(balance=5)
    reader = rt.db.reader
    stmt, params = billing_service.page_query(acct, 10, None)
    expected = reader.execute(stmt, params)
    held = [reader._checkout() for _ in range(reader.limit)]
    try:
        assert reader._checkout() is None
        assert reader.execute(stmt, params) == expected and len(expected) == 1
        r = api.client.get("/gpu/account", headers=key)
        assert r.status_code == 200 and r.json()["balance"] == 5
        assert api.client.get("/gpu/account/transactions", headers=key).json()["items"]
    finally:
        for h in held:
            if h is not None:
                reader._free.append(h)


def test_a_broken_raw_connection_is_dropped_and_the_read_retried(rt, api):
    acct, key = api.account(balance=7)
    reader = rt.db.reader
    stmt, params = billing_service.page_query(acct, 10, None)
    expected = reader.execute(stmt, params)
    dead = reader._free[-1]
    dead[0].dbapi_connection.close()  # as a database restart would leave it
    assert reader.execute(stmt, params) == expected and len(expected) == 1
    assert dead not in reader._free
    r = api.client.get("/gpu/account", headers=key)
    assert r.status_code == 200 and r.json()["balance"] == 7


def test_the_api_reads_are_sent_from_the_event_loop_and_survive_a_lost_connection(
        rt, api, backend):
    """`rt.read`: lists, details, the account, the ledger page and the feeds of a simulated
    provider are sent from the event loop, to PostgreSQL on pipelined connections
    (gpucloud.pgpipe) and on SQLite to read processes of ours (gpucloud.sqlitepipe): they
    start no read thread and no driver-call thread. A connection the database dropped (as a
    restart leaves it), or a read process killed, is replaced and the read answered."""
    acct, headers = api.account(balance=100)
    plan = api.offer(api.provider("loop-reads"))
    vm_plan = api.offer(api.provider("loop-reads-vm"), workload="vm")
    iid = api.deploy(headers, plan, name="c1")
    vm = api.deploy_vm(headers, vm_plan)
    api.advance(30)
    paths = ["/gpu/instances/", f"/gpu/instances/{iid}", "/gpu/instances/vms",
             f"/gpu/instances/vms/{vm}", "/gpu/account", "/gpu/account/transactions",
             f"/gpu/instances/{iid}/logs?last=3", f"/gpu/instances/{iid}/events",
             f"/gpu/instances/vms/{vm}/events"]
    rt.requests.shutdown()  # a fresh set, to see whether these start it
    rt.requests = type(rt.requests)(rt.requests.size)
    for path in paths:
        assert api.client.get(path, headers=headers).status_code == 200, path
    assert rt.reads_on_loop and not rt.requests._threads
    assert rt.calls._busy_share == {}  # the pool kept no figure: it ran no driver read
    # The lines the driver's own calls give, from the row the feed read itself.
    with rt.db.read() as s:
        inst = s.get(Instance, iid)
        driver = rt.driver_for(inst.provider_id, "simulated", {})
        state = inst.driver_state
    logs = api.client.get(f"/gpu/instances/{iid}/logs?last=3", headers=headers).json()
    assert logs == driver.logs(iid, state, 3) and len(logs) == 3
    events = api.client.get(f"/gpu/instances/{iid}/events", headers=headers).json()
    theirs = {f"{isoformat_z(e.at)} {e.message}" for e in driver.events(iid, state)}
    assert theirs and theirs < set(events)
    assert "Instance scheduled on provider loop-reads" in events[0]
    pipes = rt.db.reader.pipes._open
    assert pipes and all(p.broken is None for p in pipes)
    if rt.db.is_sqlite:
        gone = [p.proc.pid for p in pipes]
        for p in pipes:
            p.proc.kill()
            p.proc.wait(10)
    else:
        gone = [p.pgconn.backend_pid for p in pipes]
        engine = create_engine(backend["url"])
        try:
            with engine.connect() as c:
                for pid in gone:
                    assert c.execute(text("SELECT pg_terminate_backend(:p)"),
                                     {"p": pid}).scalar()
        finally:
            engine.dispose()
    for path in paths:
        r = api.client.get(path, headers=headers)
        assert r.status_code == 200, (path, r.text)
    page = api.client.get("/gpu/account/transactions", headers=headers).json()
    assert page["items"][-1]["kind"] == "deposit"
    assert api.client.get(f"/gpu/instances/{iid}/logs?last=3", headers=headers).json() == logs
    assert api.client.get(f"/gpu/instances/{iid}", headers=headers).json()["name"] == "c1"
    now = rt.db.reader.pipes._open
    ids = {p.proc.pid for p in now} if rt.db.is_sqlite else {p.pgconn.backend_pid for p in now}
    assert now and not ids & set(gone)


def test_database_close_releases_the_raw_connections(rt, backend):
    db = Database(make_settings(backend["url"], backend["data_dir"]))
    with db.query() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert db.reader._count == 1
    db.dispose()
    assert db.reader._count == 0 and not db.reader._free


def test_read_threads_one_on_sqlite_four_on_postgresql_unless_set(rt, backend):
    expected = 1 if rt.db.is_sqlite else min(4, rt.settings.blocking_threads(False))
    assert rt.requests.size == expected  # the threads the reads are offloaded to
    settings = make_settings(backend["url"], backend["data_dir"], read_threads=3)
    assert read_threads(settings, rt.db.is_sqlite) == 3


def test_blocking_threads_one_on_sqlite_eight_on_postgresql_unless_set(api, rt, backend):
    # What the app's lifespan gave anyio's limiter, the one the blocking routes take.
    tokens = api.client.portal.call(
        lambda: anyio.to_thread.current_default_thread_limiter().total_tokens)
    assert tokens == (1 if rt.db.is_sqlite else 8) == rt.settings.blocking_threads(
        rt.db.is_sqlite)
    settings = make_settings(backend["url"], backend["data_dir"], threadpool_size=3)
    assert settings.blocking_threads(True) == settings.blocking_threads(False) == 3


def test_the_api_writes_run_on_threads_of_their_own(api, rt):
    """Deploys, updates, renames and terminations run their transaction on the write threads
    (`rt.offload_write`, as many as the blocking routes get), not on anyio's threadpool and
    not on the read threads; reads alone never start them."""
    size = rt.settings.blocking_threads(rt.db.is_sqlite)
    assert rt.writes.size == size and rt.writes.name == "gpucloud-write"
    acct, headers = api.account(balance=100)
    plan = api.offer(api.provider("writes"))
    vm_plan = api.offer(api.provider("writes-vm"), workload="vm")
    assert api.client.get("/gpu/instances/", headers=headers).status_code == 200
    assert rt.writes._threads == []  # started by the first write, not by reads
    iid = api.deploy(headers, plan)
    assert [t.name for t in rt.writes._threads] == [f"gpucloud-write_{i}" for i in range(size)]
    vm = api.deploy_vm(headers, vm_plan)
    body = {"name": "box2", "container_settings": api.container_body(plan)["container_settings"]}
    r = api.client.put(f"/gpu/instances/{iid}", headers=headers, json=body)
    # What a write refuses comes back through the thread as the route's answer.
    assert r.status_code == 400 and r.json()["detail"] == "Only an ACTIVE instance can be updated"
    api.advance(10)
    assert api.client.put(f"/gpu/instances/{iid}", headers=headers, json=body).status_code == 204
    assert api.client.put(f"/gpu/instances/vms/{vm}", headers=headers,
                          json={"name": "renamed"}).status_code == 204
    assert api.instance(headers, vm, "vms")["name"] == "renamed"
    for path in (f"/gpu/instances/{iid}", f"/gpu/instances/vms/{vm}"):
        assert api.client.delete(path, headers=headers).status_code == 204
    assert api.instance(headers, iid)["instance_status"] == "ENDED"
    assert api.client.delete(f"/gpu/instances/{iid}x", headers=headers).status_code == 404


def test_a_feeds_target_and_our_lines_in_one_read_are_what_two_reads_give(rt, api):
    """Events read the instance (with its provider) and our own lines in one statement: the
    same row and lines, in order, as `driver_target` and `events.for_instance`; another
    account's id (whose lines exist) and another type's are unknown."""
    acct, headers = api.account(balance=100)
    other, _ = api.account(balance=100)
    plan = api.offer(api.provider("one-read"))
    iid = api.deploy(headers, plan, name="feed")
    with rt.db.write() as s:  # two more lines, in id order, the later one dated earlier
        events.record(s, iid, dt.datetime(2030, 1, 2, tzinfo=dt.UTC), "second")
        events.record(s, iid, dt.datetime(2030, 1, 1, tzinfo=dt.UTC), "third")
    with rt.db.query() as conn:
        target, ours = service.driver_target_and_events(conn, acct, iid, "container")
        assert tuple(target[:5]) == tuple(service.driver_target(conn, acct, iid, "container"))
        assert ours == events.for_instance(conn, iid) and len(ours) >= 3
        assert [m for _, m in ours[-2:]] == ["second", "third"]
        assert all(isinstance(at, dt.datetime) and at.tzinfo for at, _ in ours)
        for account_id, workload in ((other, "container"), (acct, "vm")):
            with pytest.raises(NotFound):
                service.driver_target_and_events(conn, account_id, iid, workload)


def test_timestamps_come_back_aware_in_utc_on_every_read_path(rt, api):
    """A stored instant reads back as the same aware UTC value through the ORM, a raw read
    converted (`convert_all`, as the feeds do) and a read sent from the loop; with and without
    microseconds. On SQLite also text stored by another program with its `+00:00` offset (the
    processor appends the offset itself; text that has one is parsed as it is)."""
    acct, headers = api.account(balance=100)
    iid = api.deploy(headers, api.offer(api.provider("stamps")), name="stamps")
    stamps = [dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
              dt.datetime(2030, 1, 2, 3, 4, 5, 600007, tzinfo=dt.UTC)]
    with rt.db.write() as s:
        for at in stamps:
            events.record(s, iid, at, "stamp")
    stmt, params = service.feed_target_query(acct, iid, "container", True)
    reader = rt.db.reader
    raw = reader.execute(stmt, params, True)
    rows = reader.convert_all(stmt, raw)
    assert rows == [reader.convert(stmt, r) for r in raw] == list(reader.execute(stmt, params))
    ours = [r.at for r in rows if r.message == "stamp"]
    assert ours == stamps and all(at.tzinfo is dt.UTC for at in ours)
    # The instance's row leaves these columns NULL and the event rows the instance's: a NULL
    # stays None whatever the column's type (JSON among them).
    assert rows[0].at is None and rows[-1].config is None and rows[-1].driver_state is None
    assert anyio.run(rt.read, stmt, params, False, lambda got: reader.convert_all(stmt, got)) \
        == rows
    if rt.db.is_sqlite:
        with rt.db.write() as s:
            s.execute(text("UPDATE instance_events SET at = '2030-01-02 03:04:05.600007+00:00' "
                           "WHERE message = 'stamp'"))
        assert {r.at for r in reader.convert_all(stmt, reader.execute(stmt, params, True))
                if r.message == "stamp"} == {stamps[1]}


def test_one_driver_object_per_provider_config_whatever_its_key_order(rt):
    """`driver_for` keys its drivers by the config's canonical JSON: the same config in
    another key order is the same driver, a changed value a new one, and a value orjson does
    not write (an integer past 64 bits) still gives a key."""
    first = rt.driver_for("p-1", "simulated", {"provision_seconds": 5, "hang_calls": False})
    assert rt.driver_for("p-1", "simulated", {"hang_calls": False, "provision_seconds": 5}) \
        is first
    assert rt.driver_for("p-1", "simulated", {"provision_seconds": 6, "hang_calls": False}) \
        is not first
    assert rt.driver_for("p-2", "simulated", {"provision_seconds": 5, "hang_calls": False}) \
        is not first
    huge = {"provision_seconds": 5, "note": 2 ** 70}
    with pytest.raises(TypeError):
        orjson.dumps(huge)
    assert config_key(huge) == config_key(dict(reversed(huge.items())))
