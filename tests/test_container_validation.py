"""Every field rule of SPEC §3 is a 422 pointing at the field; business rules are 400s; and a
rejected deploy leaves nothing behind (no instance, no ledger entry, balance untouched)."""

from __future__ import annotations

import base64
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.factories import SSH_ED25519

CS = ["body", "container_settings"]


@pytest.fixture
def ctx(api):
    account_id, headers = api.account(balance="100")
    offer = api.offer(api.provider())
    return api, account_id, headers, offer


def _post(ctx, **changes):
    api, _, headers, offer = ctx
    body = api.container_body(offer)
    for key, value in changes.items():
        if key in ("image", "expose", "environment", "startup_command", "credentials"):
            body["container_settings"][key] = value
        else:
            body[key] = value
    return api.client.post("/gpu/instances/", headers=headers, json=body)


def _one_error(r, loc, msg=None, typ=None):
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    match = [e for e in errors if e["loc"] == loc]
    assert match, errors
    if msg is not None:
        assert match[0]["msg"] == msg
    if typ is not None:
        assert match[0]["type"] == typ
    return match[0]


def _assert_nothing_written(ctx):
    api, account_id, headers, _ = ctx
    assert api.client.get("/gpu/instances/", headers=headers).json() == []
    assert api.money(account_id)["balance"] == Decimal("100")
    r = api.client.get("/gpu/account/transactions", headers=headers)
    if r.status_code == 200:
        body = r.json()
        entries = body if isinstance(body, list) else body.get("data", body.get("items", []))
        assert [e["kind"] for e in entries] == ["deposit"]


@pytest.mark.parametrize("port", [0, 65536, "0", "65536", "abc", "", -1, "8o", True, 1.5])
def test_port_out_of_range_or_not_a_number(ctx, port):
    r = _post(ctx, expose=[{"port": port, "protocol": "tcp"}])
    err = _one_error(r, CS + ["expose", 0, "port"],
                     "Value error, Port must be between 1 and 65535", "value_error")
    assert err["input"] == port
    _assert_nothing_written(ctx)


@pytest.mark.parametrize("port", [1, "1", 65535, "65535"])
def test_port_bounds_accepted(ctx, port):
    assert _post(ctx, expose=[{"port": port}]).status_code == 201


def test_protocol_must_be_known(ctx):
    _one_error(_post(ctx, expose=[{"port": 22, "protocol": "sctp"}]),
               CS + ["expose", 0, "protocol"], typ="literal_error")


def test_http_only_on_port_80(ctx):
    _one_error(_post(ctx, expose=[{"port": 8080, "protocol": "http"}]),
               CS + ["expose", 0, "protocol"],
               "Value error, Protocol http is only allowed on port 80")


def test_protocol_defaults_to_tcp(ctx):
    api, _, headers, _ = ctx
    r = _post(ctx, expose=[{"port": "8080"}])
    assert r.status_code == 201
    d = api.instance(headers, r.json()["instance_id"])
    assert d["container_info"]["expose"] == [{"port": "8080", "protocol": "tcp"}]


def test_expose_required_and_sized(ctx):
    api, _, headers, offer = ctx
    body = api.container_body(offer)
    del body["container_settings"]["expose"]
    _one_error(api.client.post("/gpu/instances/", headers=headers, json=body),
               CS + ["expose"], typ="missing")
    _one_error(_post(ctx, expose=[]), CS + ["expose"], typ="too_short")
    _one_error(_post(ctx, expose=[{"port": p} for p in range(1, 12)]), CS + ["expose"],
               typ="too_long")
    assert _post(ctx, expose=[{"port": p} for p in range(1, 11)]).status_code == 201


def test_expose_duplicates_rejected(ctx):
    err = _one_error(_post(ctx, expose=[{"port": 22}, {"port": "22", "protocol": "tcp"}]),
                     CS + ["expose"])
    assert "Duplicate exposed port 22/tcp" in err["msg"]
    # same port, other protocol is fine
    assert _post(ctx, expose=[{"port": 53}, {"port": 53, "protocol": "udp"}]).status_code == 201


@pytest.mark.parametrize("name", ["", "a" * 26, "-abc", "abc-", "Abc", "a_b", "a b", "héllo"])
def test_bad_names(ctx, name):
    _one_error(_post(ctx, name=name), ["body", "name"])
    _assert_nothing_written(ctx)


@pytest.mark.parametrize("name", ["a", "a" * 25, "my-gpu-1", "0x"])
def test_good_names(ctx, name):
    assert _post(ctx, name=name).status_code == 201


def test_name_and_plan_required(ctx):
    api, _, headers, offer = ctx
    r = api.client.post("/gpu/instances/", headers=headers,
                        json={"container_settings": {"image": "ubuntu", "expose": [{"port": 1}]}})
    _one_error(r, ["body", "plan_id"], typ="missing")
    _one_error(r, ["body", "name"], typ="missing")
    _one_error(_post(ctx, plan_id=123), ["body", "plan_id"], typ="string_type")


@pytest.mark.parametrize("image", ["Ubuntu:22.04", "docker.io/Library/ubuntu", "a//b", "a:b:c",
                                   "-a", "ubuntu:", "ubuntu@sha256:abc", "a" * 256, "",
                                   "ubuntu:tag with space"])
def test_bad_images(ctx, image):
    _one_error(_post(ctx, image=image), CS + ["image"])


@pytest.mark.parametrize("image", ["ubuntu", "ubuntu:22.04", "docker.io/library/ubuntu:22.04",
                                   "ghcr.io/org/team/app:v1.2.3-rc_1",
                                   "localhost:5000/app", "registry.example.com:443/a/b",
                                   "nvcr.io/nvidia/pytorch:24.01-py3",
                                   "app@sha256:" + "a" * 64, "a/b:c@sha256:" + "0" * 64])
def test_good_images(ctx, image):
    assert _post(ctx, image=image).status_code == 201, image


def test_uppercase_image_message(ctx):
    _one_error(_post(ctx, image="Ubuntu"), CS + ["image"],
               "Value error, Image reference must be lowercase")


def test_environment_rules(ctx):
    _one_error(_post(ctx, environment=[{"name": "lower", "value": "x"}]),
               CS + ["environment", 0, "name"], typ="string_pattern_mismatch")
    _one_error(_post(ctx, environment=[{"name": "1ABC", "value": "x"}]),
               CS + ["environment", 0, "name"], typ="string_pattern_mismatch")
    err = _one_error(_post(ctx, environment=[{"name": "A", "value": "1"},
                                             {"name": "A", "value": "2"}]), CS + ["environment"])
    assert "Duplicate environment variable A" in err["msg"]
    many = [{"name": f"V{i}", "value": "x"} for i in range(65)]
    _one_error(_post(ctx, environment=many), CS + ["environment"], typ="too_long")
    assert _post(ctx, environment=many[:64]).status_code == 201
    _one_error(_post(ctx, environment=[{"name": "A"}]), CS + ["environment", 0, "value"],
               typ="missing")


def test_startup_command_length(ctx):
    _one_error(_post(ctx, startup_command="x" * 2049), CS + ["startup_command"],
               typ="string_too_long")
    assert _post(ctx, startup_command="x" * 2048).status_code == 201


def test_credentials_rules(ctx):
    good = {"host": "docker.io", "username": "me", "password": "secret"}
    _one_error(_post(ctx, credentials={**good, "host": "quay.io"}), CS + ["credentials", "host"],
               typ="literal_error")
    _one_error(_post(ctx, credentials={**good, "username": ""}),
               CS + ["credentials", "username"], typ="string_too_short")
    _one_error(_post(ctx, credentials={**good, "password": ""}),
               CS + ["credentials", "password"], typ="string_too_short")
    api, _, headers, _ = ctx
    r = _post(ctx, credentials={**good, "host": "ghcr.io"})
    assert r.status_code == 201
    d = api.client.get(f"/gpu/instances/{r.json()['instance_id']}", headers=headers)
    assert "secret" not in d.text and "credentials" not in d.text


@pytest.mark.parametrize("location", ["us", "USA", "U", "1A"])
def test_location_format(ctx, location):
    _one_error(_post(ctx, constraints={"location": location}), ["body", "constraints", "location"])


def test_location_not_offered_is_400(ctx):
    r = _post(ctx, constraints={"location": "DE"})
    assert r.status_code == 400 and "DE" in r.json()["detail"]
    _assert_nothing_written(ctx)
    assert _post(ctx, constraints={"location": "US"}).status_code == 201


def _ssh(kind: str) -> str:
    if kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate().public_key()
    elif kind.startswith("rsa"):
        key = rsa.generate_private_key(65537, int(kind[3:])).public_key()
    else:
        curve = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}[kind]
        key = ec.generate_private_key(curve).public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode() + " me@laptop"


@pytest.mark.parametrize("kind", ["ed25519", "rsa2048", "rsa4096", "p256", "p384", "p521"])
def test_ssh_key_types_accepted(ctx, kind):
    api, _, headers, _ = ctx
    key = _ssh(kind)
    r = _post(ctx, ssh_key=key)
    assert r.status_code == 201, r.text
    env = api.instance(headers, r.json()["instance_id"])["container_info"]["environment"]
    assert env == [{"name": "SSH_PUBKEY", "value": key}]


def _swap_type(key: str, new_type: str) -> str:
    return new_type + " " + key.split()[1]


@pytest.mark.parametrize("bad", [
    "not a key", "ssh-ed25519", "ssh-ed25519 !!!notbase64!!!", "ssh-dss AAAAB3NzaC1kc3MAAACB",
    "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x05short").decode(),
])
def test_ssh_key_garbage_rejected(ctx, bad):
    _one_error(_post(ctx, ssh_key=bad), ["body", "ssh_key"])
    _assert_nothing_written(ctx)


def test_ssh_key_type_mismatch_and_short_rsa(ctx):
    err = _one_error(_post(ctx, ssh_key=_swap_type(SSH_ED25519, "ssh-rsa")), ["body", "ssh_key"])
    assert "does not match" in err["msg"]
    err = _one_error(_post(ctx, ssh_key=_ssh("rsa1024")), ["body", "ssh_key"])
    assert err["msg"] == "Value error, RSA SSH keys must be at least 2048 bits"


def test_ssh_pubkey_env_reserved_when_key_given(ctx):
    env = [{"name": "OTHER", "value": "1"}, {"name": "SSH_PUBKEY", "value": "mine"}]
    _one_error(_post(ctx, ssh_key=SSH_ED25519, environment=env),
               CS + ["environment", 1, "name"],
               "Value error, SSH_PUBKEY is reserved: it is set from ssh_key")
    _assert_nothing_written(ctx)
    # without ssh_key the variable is the user's own
    assert _post(ctx, environment=env).status_code == 201


def test_unknown_plan_is_400(ctx):
    r = _post(ctx, plan_id="00000000-0000-0000-0000-000000000000")
    assert r.status_code == 400 and r.json() == {"detail": "Plan no longer available"}
    _assert_nothing_written(ctx)


def test_vm_plan_on_container_path_is_400(ctx):
    api, _, headers, _ = ctx
    vm_offer = api.offer(api.provider(name="vmprov"), workload="vm")
    r = _post(ctx, plan_id=vm_offer)
    assert r.status_code == 400 and r.json()["detail"] == "Plan no longer available"


def test_insufficient_balance_leaves_nothing(api):
    account_id, headers = api.account(balance="4.49")
    offer = api.offer(api.provider(), price="1.5", capacity=1)
    r = api.client.post("/gpu/instances/", headers=headers, json=api.container_body(offer))
    assert r.status_code == 400
    assert r.json() == {"detail": "Insufficient balance to deploy instance"}
    assert api.money(account_id)["balance"] == Decimal("4.49")
    assert api.client.get("/gpu/instances/", headers=headers).json() == []
    # the capacity taken inside the rolled-back transaction is still free
    api.deposit(account_id, "0.01")
    assert api.client.post("/gpu/instances/", headers=headers,
                           json=api.container_body(offer)).status_code == 201
    assert api.money(account_id)["balance"] == 0


def test_disabled_offer_is_400(ctx):
    api, _, headers, offer = ctx
    r = api.client.patch(f"/admin/offers/{offer}", json={"enabled": False}, headers=api.admin)
    assert r.status_code == 200
    assert _post(ctx).json() == {"detail": "Plan no longer available"}


def test_missing_api_key_is_403(ctx):
    api, _, _, offer = ctx
    r = api.client.post("/gpu/instances/", json=api.container_body(offer))
    assert r.status_code == 403 and isinstance(r.json()["detail"], str)


def test_update_follows_the_same_rules(ctx):
    api, _, headers, offer = ctx
    iid = api.deploy(headers, offer)
    api.advance(10)
    good = {"name": "box", "container_settings": {"image": "ubuntu:24.04"}}

    def put(**changes):
        body = {"name": good["name"], "container_settings": dict(good["container_settings"])}
        for key, value in changes.items():
            if key in ("image", "environment", "startup_command", "credentials"):
                body["container_settings"][key] = value
            else:
                body[key] = value
        return api.client.put(f"/gpu/instances/{iid}", headers=headers, json=body)

    _one_error(put(image="Ubuntu"), CS + ["image"],
               "Value error, Image reference must be lowercase")
    _one_error(put(name="-x"), ["body", "name"])
    _one_error(put(startup_command="x" * 2049), CS + ["startup_command"])
    _one_error(put(credentials={"host": "quay.io", "username": "a", "password": "b"}),
               CS + ["credentials", "host"])
    _one_error(put(ssh_key="ssh-ed25519 nope"), ["body", "ssh_key"])
    _one_error(put(ssh_key=SSH_ED25519, environment=[{"name": "SSH_PUBKEY", "value": "x"}]),
               CS + ["environment", 0, "name"])
    r = api.client.put(f"/gpu/instances/{iid}", headers=headers, json={"name": "box"})
    _one_error(r, ["body", "container_settings"], typ="missing")
    # none of the rejected updates left anything pending
    assert put().status_code == 204
    r = api.client.put("/gpu/instances/00000000-0000-0000-0000-000000000000", headers=headers,
                       json=good)
    assert (r.status_code, r.json()) == (404, {"detail": "Instance not found"})
