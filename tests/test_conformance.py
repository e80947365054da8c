"""Field for field with the Fluence docs: port types, interface casing, trailing slashes,
Bearer keys, timestamps, the rename rule and the OpenAPI document (issue 9)."""

from __future__ import annotations

import re

import jsonschema
import pytest
from openapi_spec_validator import validate

from tests.factories import SSH_ED25519


@pytest.fixture
def market(api):
    """A container plan and a VM option of one provider, an account with money."""
    account_id, headers = api.account(balance="100")
    pid = api.provider(name="dc", provision_seconds=5)
    gpu = {"vendor": "nvidia", "model": "a100", "vram": "80Gi", "interface": "pcie"}
    container = api.offer(pid, gpu=gpu)
    vm = api.offer(pid, workload="vm", gpu=gpu)
    return api, headers, container, vm


# --- 1. ports are strings in responses -----------------------------------------------------

def test_ports_are_strings_in_every_response(market):
    api, headers, container, _ = market
    iid = api.deploy(headers, container)  # one port sent as a string, one as an integer
    api.advance(10)
    d = api.client.get(f"/gpu/instances/{iid}", headers=headers).json()
    expose = d["container_info"]["expose"]
    assert expose == [{"port": "22", "protocol": "tcp"}, {"port": "80", "protocol": "http"}]
    assert all(isinstance(p["port"], str) for p in expose)
    forwarded = d["network"]["forwarded_ports"]
    assert {p["port"] for p in forwarded} == {"22", "80"}
    for p in forwarded:
        assert isinstance(p["port"], str) and isinstance(p["external_port"], str)
        assert p["external_port"].isdigit() and 1 <= int(p["external_port"]) <= 65535
    http = next(p for p in forwarded if p["protocol"] == "http")
    assert d["network"]["uri"].endswith(":" + http["external_port"])


def test_default_images_ports_are_strings(demo):
    _, headers = demo.account()
    images = demo.client.get("/gpu/default-images/", headers=headers).json()
    ports = [p["port"] for image in images for p in image["expose"]]
    assert ports and all(isinstance(p, str) and p.isdigit() for p in ports)


def test_requests_take_ports_as_string_or_integer(market):
    api, headers, container, _ = market
    for port in ("8080", 8080):
        body = api.container_body(container, name=f"p{type(port).__name__}")
        body["container_settings"]["expose"] = [{"port": port}]
        r = api.client.post("/gpu/instances", json=body, headers=headers)
        assert r.status_code == 201, r.text
    api.advance(10)
    listed = api.client.get("/gpu/instances", headers=headers).json()
    for item in listed:
        d = api.client.get(f"/gpu/instances/{item['id']}", headers=headers).json()
        assert d["container_info"]["expose"] == [{"port": "8080", "protocol": "tcp"}]


# --- 2. GPU interface casing per endpoint ---------------------------------------------------

def test_interface_upper_in_container_plans_lower_elsewhere(market):
    api, headers, container, vm = market
    plans = api.client.get("/gpu/plans/", headers=headers).json()
    assert [p["plan"]["gpu_model"]["interface"] for p in plans] == ["PCIE"]
    assert plans[0]["plan"]["name"].startswith("a100-80gi-pcie-")
    vms = api.client.get("/gpu/plans/vms", headers=headers).json()
    assert vms["data"][0]["gpu_model"]["interface"] == "pcie"
    offer = api.client.get(f"/admin/offers/{vm}", headers=api.admin).json()
    assert offer["gpu"]["interface"] == "PCIE"  # the one canonical value

    cid = api.deploy(headers, container)
    vid = api.deploy_vm(headers, vm)
    for path in (f"/gpu/instances/{cid}", f"/gpu/instances/vms/{vid}", "/gpu/instances/",
                 "/gpu/instances/vms"):
        body = api.client.get(path, headers=headers).json()
        for item in body if isinstance(body, list) else [body]:
            assert item["resources"]["gpu_model"]["interface"] == "pcie", path


def test_one_vm_group_whatever_case_the_operator_typed(api):
    _, headers = api.account()
    pid = api.provider(name="dc")
    for i, interface in enumerate(("pcie", "PCIe", "PCIE")):
        api.offer(pid, workload="vm", price=str(2 + i),
                  gpu={"vendor": "nvidia", "model": "a100", "vram": "80Gi",
                       "interface": interface})
    data = api.client.get("/gpu/plans/vms", headers=headers).json()["data"]
    assert len(data) == 1 and data[0]["gpu_model"]["interface"] == "pcie"
    assert data[0]["availability_by_number"][0]["options_available_total"] == 3


# --- 3. trailing slashes --------------------------------------------------------------------

GETS = ["/gpu/plans/", "/gpu/plans/vms", "/gpu/plans/baremetal", "/gpu/default-images/",
        "/gpu/instances/", "/gpu/instances/vms", "/gpu/instances/baremetal", "/gpu/account",
        "/gpu/account/transactions", "/gpu/instances/{cid}", "/gpu/instances/{cid}/logs",
        "/gpu/instances/{cid}/events", "/gpu/instances/vms/{vid}", "/admin/providers",
        "/admin/offers", "/admin/clock", "/admin/audit"]


def _other_spelling(path: str) -> str:
    return path[:-1] if path.endswith("/") else path + "/"


def test_every_get_answers_the_same_with_and_without_slash(market):
    api, headers, container, vm = market
    ids = {"cid": api.deploy(headers, container), "vid": api.deploy_vm(headers, vm)}
    api.advance(10)
    for template in GETS:
        path = template.format(**ids)
        auth = api.admin if path.startswith("/admin") else headers
        a = api.client.get(path, headers=auth)
        b = api.client.get(_other_spelling(path), headers=auth)
        assert a.status_code == 200, (path, a.text)
        assert (b.status_code, b.content) == (a.status_code, a.content), path


@pytest.mark.parametrize("kind", ["vms", "baremetal"])
def test_writes_answer_with_and_without_slash(api, kind):
    _, headers = api.account(balance="100")
    pid = api.provider(name="dc", provision_seconds=1)
    workload = "vm" if kind == "vms" else "baremetal"
    plan = api.offer(pid, workload=workload, capacity=5)
    body = {"plan_id": plan, "name": "x", "ssh_key": SSH_ED25519,
            "os_image": "Ubuntu Server 22.04"}
    ids = []
    for path in (f"/gpu/instances/{kind}", f"/gpu/instances/{kind}/"):
        r = api.client.post(path, json=body, headers=headers)
        assert r.status_code == 201, (path, r.text)
        ids.append(r.json()["instance_id"])
    api.advance(5)
    rename = api.client.put(f"/gpu/instances/{kind}/{ids[0]}/", json={"name": "y"},
                            headers=headers)
    assert rename.status_code == 204
    assert api.client.delete(f"/gpu/instances/{kind}/{ids[1]}/",
                             headers=headers).status_code == 204
    listed = {i["id"]: i for i in api.client.get(f"/gpu/instances/{kind}/",
                                                  headers=headers).json()}
    assert listed[ids[0]]["name"] == "y" and listed[ids[1]]["status"] == "ENDED"


# --- 4. Authorization: Bearer ---------------------------------------------------------------

def test_bearer_key_works_like_x_api_key(api):
    account_id, headers = api.account(balance="5")
    key = headers["X-API-KEY"]
    _, other = api.account(name="other")
    cases = [
        ({"Authorization": f"Bearer {key}"}, 200),
        ({"Authorization": f"bearer {key}"}, 200),
        ({"Authorization": f"Bearer {key}", "X-API-KEY": key}, 200),
        ({"Authorization": "Basic dXNlcjpwdw==", "X-API-KEY": key}, 200),  # a proxy's
        ({"Authorization": f"Bearer {key}", "X-API-KEY": other["X-API-KEY"]}, 403),
        ({"Authorization": "Bearer gpc_not-a-key"}, 403),
        ({"Authorization": "Bearer "}, 403),
        ({"Authorization": "Basic dXNlcjpwdw=="}, 403),
        ({}, 403),
    ]
    for hdrs, status in cases:
        for path in ("/gpu/account", "/gpu/plans/", "/gpu/instances/"):
            r = api.client.get(path, headers=hdrs)
            assert r.status_code == status, (hdrs, path, r.text)
            if status == 200 and path == "/gpu/account":
                assert r.json()["id"] == account_id
            if status == 403:
                assert isinstance(r.json()["detail"], str)


# --- 6. timestamps --------------------------------------------------------------------------

def test_timestamps_keep_microseconds(market):
    api, headers, container, _ = market
    whole = api.deploy(headers, container, name="whole")
    api.advance(0.25)
    fraction = api.deploy(headers, container, name="fraction")
    items = {i["name"]: i for i in api.client.get("/gpu/instances/", headers=headers).json()}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", items["whole"]["created_at"])
    assert items["fraction"]["created_at"].endswith(":00.250000Z")
    assert {whole, fraction} == {i["id"] for i in items.values()}
    now = api.client.get("/admin/clock", headers=api.admin).json()["now"]
    assert now.endswith(".250000Z")


# --- 7. renaming history --------------------------------------------------------------------

def test_ended_or_failed_vm_cannot_be_renamed(api):
    _, headers = api.account(balance="100")
    good = api.offer(api.provider(name="ok", provision_seconds=1), workload="vm")
    bad = api.offer(api.provider(name="broken", fail_provisioning=True, provision_seconds=1),
                    workload="vm")
    ended, failed = api.deploy_vm(headers, good), api.deploy_vm(headers, bad)
    assert api.client.put(f"/gpu/instances/vms/{ended}", json={"name": "early"},
                          headers=headers).status_code == 204  # INITIALIZED: allowed
    api.advance(5)
    assert api.client.delete(f"/gpu/instances/vms/{ended}", headers=headers).status_code == 204
    for iid, status in ((ended, "ENDED"), (failed, "FAILED")):
        assert api.instance(headers, iid, "vms")["status"] == status
        r = api.client.put(f"/gpu/instances/vms/{iid}", json={"name": "late"}, headers=headers)
        assert r.status_code == 400
        assert r.json() == {"detail": f"Instance is {status}; only an INITIALIZED or ACTIVE "
                                      "instance can be renamed"}
    assert api.instance(headers, ended, "vms")["name"] == "early"


# --- 5. the OpenAPI document ----------------------------------------------------------------

@pytest.fixture
def doc(client):
    return client.get("/gpu/api-docs/openapi.json").json()


def _operations(doc):
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield path, method, op


def test_openapi_is_valid_and_served_twice(client, doc):
    validate(doc)  # openapi-spec-validator: raises on any violation of the spec
    assert client.get("/gpu/openapi.json").json() == doc
    assert client.get("/gpu/api-docs").status_code == 200


def test_every_operation_declares_security_errors_and_a_description(doc):
    schemes = doc["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "in": "header", "name": "X-API-KEY"}
    assert schemes["Bearer"]["scheme"] == "bearer"
    assert schemes["AdminKey"]["name"] == "X-ADMIN-KEY"
    ops = list(_operations(doc))
    assert len(ops) >= 39
    for path, method, op in ops:
        where = f"{method.upper()} {path}"
        expected = [{"AdminKey": []}] if path.startswith("/admin") else \
            [{"ApiKey": []}, {"Bearer": []}]
        assert op["security"] == expected, where
        assert len(op.get("description", "")) > 30, where
        responses = op["responses"]
        assert responses["403"]["content"]["application/json"]["example"]["detail"], where
        if "{" in path:
            assert "404" in responses, where
        if "requestBody" in op or any(p["in"] == "query" for p in op.get("parameters", [])):
            assert responses["422"]["content"]["application/json"]["example"]["detail"], where
        headers = [p["name"] for p in op.get("parameters", []) if p["in"] == "header"]
        assert headers in ([], ["Idempotency-Key"]), where  # auth is in `security`
    by_id = {op["operationId"]: op for _, _, op in ops}
    examples = by_id["deployContainer"]["responses"]["400"]["content"]["application/json"]
    assert {"detail": "Insufficient balance to deploy instance"} in \
        [e["value"] for e in examples["examples"].values()]


def test_schema_names_and_port_schema(doc):
    names = list(doc["components"]["schemas"])
    assert not [n for n in names if "__" in n or n.startswith("gpucloud")]
    port = doc["components"]["schemas"]["ExposedPort"]["properties"]["port"]
    assert "type" not in port and {a["type"] for a in port["anyOf"]} == {"string", "integer"}
    fwd = doc["components"]["schemas"]["ForwardedPortOut"]["properties"]
    assert fwd["port"]["type"] == fwd["external_port"]["type"] == "string"


def _validator(doc, schema):
    return jsonschema.Draft202012Validator({**schema, "components": doc["components"]})


def test_examples_match_their_schemas(doc):
    checked = 0
    for _path, _method, op in _operations(doc):
        for response in op["responses"].values():
            media = response.get("content", {}).get("application/json", {})
            if "schema" not in media:
                continue
            samples = [media["example"]] if "example" in media else []
            samples += [e["value"] for e in media.get("examples", {}).values()]
            for sample in samples:
                _validator(doc, media["schema"]).validate(sample)
                checked += 1
        if op["operationId"] in ("listContainers", "getContainer", "listVMs", "getVM",
                                 "getAccount", "listAccountTransactions", "getContainerLogs"):
            assert "example" in op["responses"]["200"]["content"]["application/json"]
    assert checked > 80


def test_real_responses_match_the_document(market, doc):
    """The examples are real; so must every live answer be (types included)."""
    api, headers, container, vm = market
    cid, vid = api.deploy(headers, container), api.deploy_vm(headers, vm)
    api.advance(10)
    ops = {op["operationId"]: (path, op) for path, _, op in _operations(doc)}
    for op_id in ("listContainers", "getContainer", "listVMs", "getVM", "listContainerPlans",
                  "listVmPlans", "listDefaultImages", "getAccount", "listAccountTransactions"):
        path, op = ops[op_id]
        url = path.replace("/vms/{instance_id}", f"/vms/{vid}").replace("{instance_id}", cid)
        body = api.client.get(url, headers=headers).json()
        schema = op["responses"]["200"]["content"]["application/json"]["schema"]
        _validator(doc, schema).validate(body)


def test_links_follow_the_instance_id(doc):
    ops = {op["operationId"]: op for _, _, op in _operations(doc)}
    for deploy, targets in (("deployContainer", {"getContainer", "updateContainer",
                                                 "terminateContainer", "getContainerLogs",
                                                 "getContainerEvents"}),
                            ("deployVM", {"getVM", "renameVM", "terminateVM"}),
                            ("deployBaremetal", {"getBaremetal", "renameBaremetal",
                                                 "terminateBaremetal"})):
        links = ops[deploy]["responses"]["201"]["links"]
        assert {link["operationId"] for link in links.values()} == targets
        for link in links.values():
            assert link["parameters"] == {"instance_id": "$response.body#/instance_id"}
            assert link["operationId"] in ops


def test_a_containers_console_is_a_documented_400(api, doc):
    # Schemathesis found this: the operator's console of a container answered an undocumented
    # 400.
    _, headers = api.account()
    iid = api.deploy(headers, api.offer(api.provider()))
    r = api.client.get(f"/admin/instances/{iid}/console", headers=api.admin)
    assert r.status_code == 400
    documented = doc["paths"]["/admin/instances/{instance_id}/console"]["get"]["responses"]
    examples = documented["400"]["content"]["application/json"]["examples"].values()
    assert r.json() in [e["value"] for e in examples]
