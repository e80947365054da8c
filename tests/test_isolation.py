"""Tenant isolation: another account's instance is exactly as unknown as a made-up id, on every
route, and nothing about it changes when a stranger pokes at it."""

from __future__ import annotations

from decimal import Decimal

from tests.factories import SSH_ED25519

NOT_FOUND = (404, {"detail": "Instance not found"})
UNKNOWN = "00000000-0000-0000-0000-000000000000"


def _calls(api, prefix: str, iid: str, container: bool):
    put_body = ({"name": "stolen", "container_settings": {"image": "evil/image:1"}}
                if container else {"name": "stolen"})
    calls = [("GET", f"{prefix}/{iid}", None), ("PUT", f"{prefix}/{iid}", put_body),
             ("DELETE", f"{prefix}/{iid}", None)]
    if container:
        calls += [("GET", f"{prefix}/{iid}/logs", None), ("GET", f"{prefix}/{iid}/events", None),
                  ("GET", f"{prefix}/{iid}/logs?last=1", None)]
    return calls


def test_other_accounts_instances_are_404_everywhere(api):
    a_id, a = api.account(balance="100", name="a")
    b_id, b = api.account(balance="100", name="b")
    pid = api.provider()
    c_offer, vm_offer = api.offer(pid), api.offer(pid, workload="vm")
    bm_offer = api.offer(pid, workload="baremetal")
    ids = {"/gpu/instances": api.deploy(a, c_offer, ssh_key=SSH_ED25519),
           "/gpu/instances/vms": api.deploy_vm(a, vm_offer),
           "/gpu/instances/baremetal": api.deploy_vm(a, bm_offer, kind="baremetal")}
    api.advance(10)
    before = {p: api.client.get(f"{p}/{i}", headers=a).json() for p, i in ids.items()}
    a_money = api.money(a_id)

    for prefix, iid in ids.items():
        container = prefix == "/gpu/instances"
        for method, path, body in _calls(api, prefix, iid, container):
            r = api.client.request(method, path, headers=b, json=body)
            assert (r.status_code, r.json()) == NOT_FOUND, (method, path)
            # …exactly like an id that does not exist at all
            r2 = api.client.request(method, path.replace(iid, UNKNOWN), headers=b, json=body)
            assert (r2.status_code, r2.json()) == NOT_FOUND, (method, path)

    # B sees empty lists; A's instances and money are untouched
    for prefix in ids:
        assert api.client.get(prefix + ("/" if prefix == "/gpu/instances" else ""),
                              headers=b).json() == []
    after = {p: api.client.get(f"{p}/{i}", headers=a).json() for p, i in ids.items()}
    assert after == before
    assert api.money(a_id) == a_money
    assert api.money(b_id)["balance"] == Decimal("100")


def test_no_key_is_403_not_404(api):
    _, a = api.account()
    iid = api.deploy(a, api.offer(api.provider()))
    for path in [f"/gpu/instances/{iid}", "/gpu/instances/", "/gpu/instances/vms",
                 f"/gpu/instances/vms/{iid}", f"/gpu/instances/{iid}/logs"]:
        r = api.client.get(path)
        assert r.status_code == 403, path
        r = api.client.get(path, headers={"X-API-KEY": "gpc_wrong"})
        assert r.status_code == 403, path
