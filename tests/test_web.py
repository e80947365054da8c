"""The one middleware stack: every route passes it, request ids, the access log, /metrics."""

from __future__ import annotations

import datetime as dt
import gc
import inspect
import json
import logging
import re
import sys
import uuid

import pytest
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from opentelemetry import trace
from starlette.responses import Response
from starlette.routing import Match, Mount

from gpucloud import params
from gpucloud.accounts import routes as accounts
from gpucloud.admin import routes as admin
from gpucloud.app import create_app
from gpucloud.billing import routes as billing
from gpucloud.catalog import admin_routes as catalog_admin
from gpucloud.catalog import routes as catalog
from gpucloud.instances import container_routes, vm_routes
from gpucloud.jsonresp import JSON, isoformat_z, stamped
from gpucloud.routing import PrefixRoute, RouteIndex, get_telemetry_data
from gpucloud.settings import Settings
from gpucloud.web.logs import JsonFormatter, RequestIdFilter, configure
from gpucloud.web.server import settle_heap
from tests.conftest import ADMIN_KEY
from tests.factories import Api

ROUTERS = (catalog.router, vm_routes.router, container_routes.router, accounts.public,
           billing.router, accounts.admin, billing.admin, catalog_admin.router, admin.router)
ANY_ID = "00000000-0000-4000-8000-000000000000"


class Probe:
    """A middleware added through the public API: records what it saw."""

    seen: list[tuple[str, str]] = []

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            Probe.seen.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


def test_every_route_passes_a_middleware_added_through_the_public_api(rt):
    app = create_app(rt=rt)
    app.add_middleware(Probe)
    Probe.seen = []
    calls, ids = [], set()
    for router in ROUTERS:
        for route in router.routes:
            assert isinstance(route, APIRoute)
            path = re.sub(r"\{[^}]+\}", ANY_ID, route.path)
            calls += [(method, path) for method in route.methods]
    calls += [("GET", "/metrics"), ("GET", "/gpu/api-docs/openapi.json"), ("GET", "/nowhere")]
    headers = {"X-API-KEY": "gpc_unknown", "X-ADMIN-KEY": ADMIN_KEY}
    with TestClient(app) as client:
        for method, path in calls:
            r = client.request(method, path, headers=headers, json={})
            assert r.status_code < 500 or path == "/admin/clock", (method, path, r.text)
            assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), (method, path)
            ids.add(r.headers["x-request-id"])
    assert Probe.seen == calls
    assert len(ids) == len(calls)  # a fresh id for every request
    assert len(calls) > 40  # the whole API, not a few routes


def test_request_id_is_taken_when_valid_replaced_when_not_and_on_errors(client, api):
    r = client.get("/gpu/plans/", headers={"X-Request-ID": "abc-123.x:y"})
    assert r.status_code == 403 and r.headers["x-request-id"] == "abc-123.x:y"
    for bad in ("has space", "x" * 129, "naïve"):
        r = client.get("/gpu/account", headers={"X-Request-ID": bad.encode("utf-8")})
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), bad
    _, key = api.account()
    r = client.get("/gpu/instances/nope", headers=key)
    assert r.status_code == 404 and r.headers["x-request-id"]
    r = client.get("/gpu/account/transactions?limit=0", headers=key)
    assert r.status_code == 422 and r.headers["x-request-id"]
    assert client.get("/gpu/account", headers=key).headers["x-request-id"] != \
        client.get("/gpu/account", headers=key).headers["x-request-id"]


def test_a_500_carries_the_request_id_in_its_response_and_its_log_line(rt, caplog):
    app = create_app(rt=rt)

    def boom():
        raise RuntimeError("boom")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client, \
            caplog.at_level(logging.INFO):
        caplog.handler.addFilter(RequestIdFilter())
        r = client.get("/boom", headers={"X-Request-ID": "req-500"})
    assert r.status_code == 500 and r.json() == {"detail": "Internal server error"}
    assert r.headers["x-request-id"] == "req-500"
    errors = [rec for rec in caplog.records if rec.getMessage().startswith("unhandled RuntimeError")]
    assert errors and errors[0].request_id == "req-500"
    access = [rec for rec in caplog.records if rec.name == "gpucloud.access"]
    assert access[-1].access["status"] == 500 and access[-1].request_id == "req-500"


def test_feed_lines_write_each_instant_in_utc_with_z_as_isoformat_z_does():
    """`stamped` (the logs' and events' lines) writes a list's timestamps in one orjson call;
    each line is the one `isoformat_z` gives: UTC as `Z`, naive taken as UTC, microseconds
    only when there are some, another zone turned into UTC rather than keeping its offset."""
    utc, east = dt.UTC, dt.timezone(dt.timedelta(hours=2, minutes=30))
    entries = [(dt.datetime(2026, 12, 1, 13, 59, 59, tzinfo=utc), "aware"),
               (dt.datetime(2026, 12, 1, 13, 59, 59, 472381, tzinfo=utc), "micro"),
               (dt.datetime(2026, 12, 1, 13, 59, 59), "naive"),
               (dt.datetime(2026, 12, 1, 16, 29, 59, 5, tzinfo=east), "east"),
               (dt.datetime(2026, 12, 1, 0, 0, tzinfo=dt.timezone(dt.timedelta(0))), "zero")]
    lines = stamped(entries)
    assert lines == [f"{isoformat_z(at)} {text}" for at, text in entries]
    assert lines == ["2026-12-01T13:59:59Z aware", "2026-12-01T13:59:59.472381Z micro",
                     "2026-12-01T13:59:59Z naive", "2026-12-01T13:59:59.000005Z east",
                     "2026-12-01T00:00:00Z zero"]
    assert stamped([]) == []


def test_json_lines_carry_their_own_millisecond_in_utc():
    """The formatter keeps the current second's text: records within one second, in the next
    one and back in an earlier one each get their own time."""
    formatter = JsonFormatter()
    at = dt.datetime(2026, 12, 1, 13, 59, 59, tzinfo=dt.UTC).timestamp()
    for created, expected in ((at + 0.25, "2026-12-01T13:59:59.250Z"),
                              (at + 0.9995, "2026-12-01T13:59:59.999Z"),
                              (at + 1.0, "2026-12-01T14:00:00.000Z"),
                              (at + 0.5, "2026-12-01T13:59:59.500Z"),
                              (at + 3600 * 24 + 1.042, "2026-12-02T14:00:00.042Z")):
        record = logging.LogRecord("gpucloud.access", logging.INFO, __file__, 1, "m", (), None)
        record.created = created
        assert json.loads(formatter.format(record))["ts"] == expected


def test_access_lines_written_directly_are_the_lines_logging_would_write(
        client, api, tmp_path, monkeypatch):
    """With only the JSON handler `configure` installs on the way, the middleware writes the
    access line to it directly (web/logs.AccessLog); with anything else on the way, the
    record goes through logging. Same fields, same order, either way."""
    root, access = logging.getLogger(), logging.getLogger("gpucloud.access")
    levels = root.level, access.level
    path = tmp_path / "server.log"
    with path.open("w") as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)
        configure("info", "json", True)
        ours = next(h for h in root.handlers if h.get_name() == "gpucloud")
        installed = root.handlers
        try:
            # pytest's own capture handlers sit on the root logger too: out of the way.
            monkeypatch.setattr(root, "handlers", [ours])
            made = []  # the access records logging made
            make = access.makeRecord
            monkeypatch.setattr(access, "makeRecord",
                                lambda *a, **kw: made.append(a) or make(*a, **kw))
            acct, key = api.account()
            assert client.get("/gpu/account", headers={**key, "X-Request-ID": "direct-1"}) \
                .status_code == 200
            seen: list[logging.LogRecord] = []
            collector = logging.Handler()
            collector.emit = seen.append
            root.addHandler(collector)
            assert client.get("/gpu/account", headers={**key, "X-Request-ID": "logged-1"}) \
                .status_code == 200
            root.removeHandler(collector)
            ours.flush()
        finally:
            installed.remove(ours)
            ours.close()
            root.setLevel(levels[0])
            access.setLevel(levels[1])
    lines = [json.loads(line) for line in path.read_text().splitlines()
             if '"gpucloud.access"' in line and "/gpu/account" in line]
    assert [line["request_id"] for line in lines] == ["direct-1", "logged-1"]
    assert [r.request_id for r in seen if r.name == "gpucloud.access"] == ["logged-1"]
    assert len(made) == 1  # the first line never was a record
    direct, logged = lines
    assert list(direct) == list(logged) == ["ts", "level", "logger", "msg", "request_id",
                                            "method", "route", "status", "duration_ms",
                                            "account_id"]
    for line in lines:
        assert line["msg"] == "GET /gpu/account 200" and line["account_id"] == acct
        assert line["level"] == "info" and line["duration_ms"] > 0
    # The text itself: what the formatter writes for the equivalent record.
    formatter = JsonFormatter()
    fields = {"method": "GET", "route": "/gpu/account", "status": 200, "duration_ms": 0.25,
              "account_id": acct}
    record = access.makeRecord(access.name, logging.INFO, "", 0, "%s %s %s",
                               ("GET", "/gpu/account", 200), None,
                               extra={"access": fields, "request_id": "r-1"})
    assert formatter.access_line(access.name, record.created, "r-1", fields) == \
        formatter.format(record)


def test_access_log_is_one_json_line_per_request_without_secrets(client, api, caplog):
    acct, key = api.account()
    pid = api.provider()
    iid = api.deploy(key, api.offer(pid))
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO, logger="gpucloud.access"):
        r = client.get(f"/gpu/instances/{iid}?secret=1", headers=key)
    lines = [JsonFormatter().format(rec) for rec in caplog.records
             if rec.name == "gpucloud.access"]
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["method"] == "GET" and entry["status"] == 200
    assert entry["route"] == "/gpu/instances/{instance_id}"
    assert entry["account_id"] == acct
    assert entry["request_id"] == r.headers["x-request-id"]
    assert entry["duration_ms"] > 0 and entry["level"] == "info"
    assert key["X-API-KEY"] not in lines[0] and iid not in lines[0] and "secret" not in lines[0]


def _metric(text: str, name: str, default: float | None = None, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    if default is not None:
        return default
    raise AssertionError(f"{name} {labels} not in /metrics")


def test_metrics_are_operator_only_and_describe_requests_instances_money(client, api):
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", headers={"X-ADMIN-KEY": "wrong"}).status_code == 403
    _, key = api.account(balance=100)
    pid = api.provider()
    iid = api.deploy(key, api.offer(pid))
    before = client.get("/metrics", headers=api.admin).text
    # Counters belong to the process, which runs other tests too: compare with before.
    hits = _metric(before, "gpucloud_api_key_cache_total", result="hit")
    route = {"method": "GET", "route": "/gpu/instances/{instance_id}", "status": "200"}
    gets = _metric(before, "gpucloud_http_requests_total", default=0, **route)
    charged = _metric(before, "gpucloud_billing_instances_charged_total", default=0)
    feeds = {call: _metric(before, "gpucloud_driver_call_duration_seconds_count", default=0,
                           driver="simulated", call=call) for call in ("logs", "events")}
    assert _metric(before, "gpucloud_worker_queue_lag_seconds") == 0
    api.advance(1)  # provisioning (a few seconds) is due but not yet run: lag 0, INITIALIZED
    text = client.get("/metrics", headers=api.admin).text
    assert _metric(text, "gpucloud_instances", state="INITIALIZED", workload="container") == 1
    api.advance(3600)  # active, then an hour boundary charges it
    client.get(f"/gpu/instances/{iid}", headers=key)
    client.get(f"/gpu/instances/{iid}", headers=key)
    assert client.get("/admin/audit", headers=api.admin).json()["ok"] is True
    text = client.get("/metrics", headers=api.admin).text
    assert _metric(text, "gpucloud_instances", state="ACTIVE", workload="container") == 1
    # A state that emptied reads 0 (not its last count).
    assert _metric(text, "gpucloud_instances", state="INITIALIZED", workload="container") == 0
    assert _metric(text, "gpucloud_http_requests_total", **route) == gets + 2
    assert _metric(text, "gpucloud_http_request_duration_seconds_count", **route) == gets + 2
    assert _metric(text, "gpucloud_api_key_cache_total", result="hit") >= hits + 1
    assert _metric(text, "gpucloud_driver_call_duration_seconds_count", driver="simulated",
                   call="create") >= 1
    # Each feed request is one driver call, counted under its own name (the series are kept
    # per driver and call: a mix-up would count one call under the other).
    for _ in range(2):
        assert client.get(f"/gpu/instances/{iid}/logs", headers=key).status_code == 200
    assert client.get(f"/gpu/instances/{iid}/events", headers=key).status_code == 200
    text = client.get("/metrics", headers=api.admin).text
    for call, asked in (("logs", 2), ("events", 1)):
        assert _metric(text, "gpucloud_driver_call_duration_seconds_count", driver="simulated",
                       call=call) == feeds[call] + asked
    assert _metric(text, "gpucloud_billing_instances_charged_total") >= charged + 1
    assert _metric(text, "gpucloud_billing_boundary_duration_seconds_count") >= 1
    assert _metric(text, "gpucloud_ledger_audit_ok") == 1
    assert _metric(text, "gpucloud_ledger_audit_failures", check="account_balances") == 0


def test_settle_heap_freezes_startup_objects_and_sets_the_young_threshold():
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        settle_heap(Settings(gc_gen0_threshold=12_345))
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (12_345, *before[1:])
        gc.unfreeze()
        gc.set_threshold(*before)
        settle_heap(Settings(gc_gen0_threshold=0))  # 0: Python's thresholds stay
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_prefix_route_refuses_by_literal_head_and_keeps_every_outcome():
    async def endpoint(instance_id: str):
        return instance_id

    def scope(path, method="GET", root_path=""):
        return {"type": "http", "path": path, "method": method, "root_path": root_path}

    with_param = PrefixRoute("/gpu/instances/{instance_id}", endpoint, methods=["GET"])
    assert with_param.matches(scope("/gpu/plans/"))[0] == Match.NONE
    found, child = with_param.matches(scope("/gpu/instances/abc"))
    assert found == Match.FULL and child["path_params"] == {"instance_id": "abc"}
    assert with_param.matches(scope("/gpu/instances/abc", "DELETE"))[0] == Match.PARTIAL  # 405
    # Behind a proxy's root path the path is matched the full (Starlette) way.
    assert with_param.matches(scope("/api/gpu/instances/abc", root_path="/api"))[0] == Match.FULL

    exact = PrefixRoute("/gpu/instances/vms", endpoint, methods=["GET"])
    assert exact.matches(scope("/gpu/instances/vmsx"))[0] == Match.NONE
    assert exact.matches(scope("/gpu/instances/vms"))[0] == Match.FULL
    # The refusal comes before the regular expression: one that takes anything is not asked.
    with_param.path_regex = re.compile(".*")
    assert with_param.matches(scope("/gpu/plans/"))[0] == Match.NONE


def _first_full(routes, scope):
    """What the router's loop finds: the first route that matches path and method."""
    for route in routes:
        found, child = route.matches(scope)
        if found == Match.FULL:
            return route, child
    return None, None


def test_route_index_finds_the_route_the_routers_loop_would(rt):
    app = create_app(rt=rt)
    index = app.router.routes[0]
    assert isinstance(index, RouteIndex)
    rest = app.router.routes[1:]
    paths = {"/nowhere", "/gpu/instances/a/b/c", "/gpu/instances//", "/gpu/plans//",
             "/gpu/instances/vms/", "/gpu/instances/baremetal", "/metrics"}
    for route in rest:
        template = getattr(route, "path", None)
        if template:  # each id as a uuid and as the words other routes use at its place
            for word in (ANY_ID, "vms", "baremetal", "logs", "events", "transactions"):
                paths.add(re.sub(r"\{[^}]+\}", word, template))
    answered = 0
    for path in sorted(paths):
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            scope = {"type": "http", "path": path, "method": method, "root_path": ""}
            found, child = index.matches(dict(scope))
            expected, expected_child = _first_full(rest, dict(scope))
            if found == Match.FULL:
                answered += 1
                assert child["route"] is expected, (method, path)
                assert child["path_params"] == expected_child["path_params"]
            else:  # it declines only what the loop must decide: no API route, or after one
                   # it cannot read (the console's router)
                assert found == Match.NONE
                assert not isinstance(expected, APIRoute) or rest.index(expected) > next(
                    i for i, r in enumerate(rest) if not hasattr(r, "path_regex")), (method, path)
    assert answered > 150  # the whole API, not a few routes (over HTTP: every other test)


def test_route_index_declines_what_it_cannot_see_and_follows_new_routes():
    async def endpoint(request: Request):
        return Response(request.url.path.encode())

    app = FastAPI()
    app.router.routes.insert(0, RouteIndex(app.router))
    app.add_api_route("/items/{item_id}", endpoint, methods=["GET"])
    index = app.router.routes[0]

    def scope(path, **extra):
        return {"type": "http", "path": path, "method": "GET", "root_path": "", **extra}

    assert index.matches(scope("/items/7"))[0] == Match.FULL
    # A proxy's root path, FastAPI's telemetry recording, a websocket: the loop decides
    assert index.matches(scope("/api/items/7", root_path="/api"))[0] == Match.NONE
    assert index.matches(scope("/items/7", **{"fastapi.telemetry": object()}))[0] == Match.NONE
    assert index.matches({**scope("/items/7"), "type": "websocket"})[0] == Match.NONE
    # A route put in front later is seen at once: it is the one the loop takes now
    app.router.routes.insert(1, PrefixRoute("/items/{other}", endpoint, methods=["GET"]))
    found, child = index.matches(scope("/items/7"))
    assert found == Match.FULL and child["route"] is app.router.routes[1]
    assert child["path_params"] == {"other": "7"}
    # Nothing after a route it cannot read (a mount) is answered by it
    app.router.routes.insert(1, Mount("/static", app=Response(b"")))
    assert index.matches(scope("/items/7"))[0] == Match.NONE
    with TestClient(app) as client:
        assert client.get("/items/7").content == b"/items/7"


def test_no_public_route_waits_for_a_thread_to_solve_a_dependency(rt):
    # A plain `def` dependency runs on a worker thread: a hop there and back per request for
    # what only reads a header or the caller noted by the middleware (deploys were ~20% slower
    # with the Idempotency-Key check as one).
    def calls(dependant):
        for dep in dependant.dependencies:
            yield dep.call
            yield from calls(dep)

    app = create_app(rt=rt)
    public = [r for r in app.routes if isinstance(r, APIRoute) and r.path.startswith("/gpu")]
    assert public
    for route in public:
        for call in calls(route.dependant):
            assert inspect.iscoroutinefunction(call), (route.path, call)


class _Tracing(trace.TracerProvider):
    """A configured provider (FastAPI ignores the no-op one) whose spans go nowhere."""

    def get_tracer(self, *args, **kwargs):
        return trace.NoOpTracer()


def test_request_only_routes_answer_bad_query_parameters_exactly_as_fastapi_would(rt):
    """logs, events and transactions read their query parameters themselves (params.py): for
    every input they answer what FastAPI answers for the parameters they used to declare, on a
    route of the same app, and in the same order of checks: the key, the parameters, the id."""
    app = create_app(rt=rt)

    async def last_reference(last: int | None = Query(None, ge=1)):
        return JSON({"last": str(last)})

    async def page_reference(limit: int = Query(50, ge=1, le=500),
                             cursor: str | None = Query(None, max_length=64)):
        return JSON({"limit": limit, "cursor": cursor})

    app.add_api_route("/gpu/last-reference", last_reference, methods=["GET"])
    app.add_api_route("/gpu/page-reference", page_reference, methods=["GET"])
    with TestClient(app) as client:
        api = Api(client, rt, ADMIN_KEY)
        _, key = api.account(balance=100)
        pid = api.provider()
        ids = {"": api.deploy(key, api.offer(pid)),
               "vms/": api.deploy_vm(key, api.offer(pid, "vm")),
               "baremetal/": api.deploy_vm(key, api.offer(pid, "baremetal"), kind="baremetal")}
        feeds = [f"{kind}{iid}/events" for kind, iid in ids.items()] + [f"{ids['']}/logs"]
        for value in ("0", "-3", "abc", "", "1.5", "1e3", "%D9%A3", "0x10", "1&last=0"):
            expected = client.get(f"/gpu/last-reference?last={value}")
            assert expected.status_code == 422, value
            for feed in feeds:
                got = client.get(f"/gpu/instances/{feed}?last={value}", headers=key)
                assert (got.status_code, got.content) == (422, expected.content), (feed, value)
                assert client.get(f"/gpu/instances/{feed}?last={value}",
                                  headers={"X-API-KEY": "wrong"}).status_code == 403
                unknown = feed.replace(feed.split("/")[-2], str(uuid.uuid4()))
                assert client.get(f"/gpu/instances/{unknown}?last={value}",
                                  headers=key).content == expected.content
        for value, n in (("1", 1), ("0&last=2", 2), ("+2", 2), ("99999999999999999999999", 0)):
            assert client.get(f"/gpu/last-reference?last={value}").status_code == 200
            for feed in feeds:
                got = client.get(f"/gpu/instances/{feed}?last={value}", headers=key)
                everything = client.get(f"/gpu/instances/{feed}", headers=key).json()
                assert got.status_code == 200, (feed, value, got.text)
                assert got.json() == everything[-n:], (feed, value)
        long = "x" * 65
        for query in ("limit=0", "limit=501", "limit=abc", "limit=", "limit=2.5", "limit=3&limit=0",
                      f"cursor={long}", f"limit=0&cursor={long}", f"cursor={long}&limit=abc"):
            expected = client.get(f"/gpu/page-reference?{query}")
            assert expected.status_code == 422, query
            got = client.get(f"/gpu/account/transactions?{query}", headers=key)
            assert (got.status_code, got.content) == (422, expected.content), query
            assert client.get(f"/gpu/account/transactions?{query}",
                              headers={"X-API-KEY": "wrong"}).status_code == 403
        entries = client.get("/gpu/account/transactions", headers=key).json()["items"]
        assert len(entries) == 4  # the deposit and three reserves, newest first
        page = client.get("/gpu/account/transactions?limit=0&limit=2", headers=key).json()
        assert page["items"] == entries[:2] and page["next_cursor"]
        rest = client.get("/gpu/account/transactions", headers=key,
                          params={"cursor": page["next_cursor"], "limit": "+500"}).json()
        assert rest == {"items": entries[2:], "next_cursor": None}


def test_query_values_are_kept_per_query_string_only_when_good_short_and_few(monkeypatch):
    """params.read keeps what it read from a query string (polling clients repeat theirs):
    the same bytes give the same values, a bad one is read and reported every time, a long
    one is not kept, and at most `_KEPT` are."""
    monkeypatch.setattr(params, "_read_before", {})
    monkeypatch.setattr(params, "_KEPT", 3)
    last, limit = container_routes.LAST, billing.LIMIT

    def read(query: str, *asked):
        scope = {"type": "http", "query_string": query.encode(), "headers": []}
        return params.read(Request(scope), *asked)

    assert read("last=5", last) == (5,) and read("last=5", last) == (5,)
    assert read("last=5", limit) == (50,)  # other parameters, other values
    assert read("last=6", last) == (6,) and len(params._read_before) == 3
    assert read("", last) == (None,) and len(params._read_before) == 1  # started over
    for _ in range(2):
        with pytest.raises(RequestValidationError) as bad:
            read("last=0", last)
        assert bad.value.errors()[0]["loc"] == ("query", "last")
    assert (b"last=0", (last,)) not in params._read_before
    long = "last=7&" + "x=1&" * 100
    assert read(long, last) == (7,) and (long.encode(), (last,)) not in params._read_before


def test_request_only_endpoints_skip_fastapis_handler_unless_telemetry_records(rt):
    app = create_app(rt=rt)
    lean = {(r.path, m) for r in app.routes if isinstance(r, PrefixRoute) and r.lean
            for m in r.methods}
    # The polled reads that authenticate and read their path themselves
    for path in ("/gpu/plans/", "/gpu/default-images/", "/gpu/instances/",
                 "/gpu/instances/{instance_id}", "/gpu/instances/vms/{instance_id}",
                 "/gpu/instances/baremetal", "/gpu/account",
                 "/gpu/instances/{instance_id}/logs", "/gpu/instances/{instance_id}/events",
                 "/gpu/instances/vms/{instance_id}/events",
                 "/gpu/instances/baremetal/{instance_id}/events", "/gpu/account/transactions"):
        assert (path, "GET") in lean, path
    # Anything with a declared parameter, a dependency or a body keeps FastAPI's handler
    for path, method in (("/gpu/instances/", "POST"), ("/admin/audit", "GET"),
                         ("/admin/instances/{instance_id}/console", "GET"),
                         ("/gpu/instances/{instance_id}", "PUT"), ("/admin/accounts", "GET")):
        assert (path, method) not in lean, path

    # With FastAPI's OpenTelemetry recording a request, it goes FastAPI's way: the request is
    # in the telemetry data its log processors read.
    async def traced(request: Request):
        data = get_telemetry_data()
        return Response(b"yes" if data is not None and data.request is request else b"no")

    async def returns_a_dict(request: Request):
        return {"not": "a response"}

    for telemetry, expected in (({"tracer_provider": _Tracing()}, b"yes"),
                                ({"tracing": False, "metrics": False, "logs": False}, b"no")):
        demo = FastAPI(telemetry=telemetry)
        demo.router.routes.append(PrefixRoute("/traced", traced, methods=["GET"]))
        demo.router.routes.append(PrefixRoute("/dict", returns_a_dict, methods=["GET"]))
        with TestClient(demo, raise_server_exceptions=False) as client:
            assert client.get("/traced").content == expected
            # Without telemetry the endpoint is called directly and must answer a Response
            assert client.get("/dict").status_code == (200 if expected == b"yes" else 500)
