"""SPEC §6 through the real API: deploy, activation, boundaries, top-ups, exhaustion,
refunds — each rule on the manual clock, on both backends, with the ledger checked after."""

from __future__ import annotations

from decimal import Decimal

from tests.test_billing_support import check_money, check_topup_invariant

D = Decimal


def setup(api, price="1.5", balance="100", **provider_config):
    provider = api.provider(name=f"sim-{price}", **provider_config)
    plan = api.offer(provider, price=price, capacity=10)
    account_id, headers = api.account(balance)
    return plan, account_id, headers


def billing(api, headers, iid):
    return api.instance(headers, iid)["billing"]


def checked(api):
    check_money(api.rt)
    check_topup_invariant(api.rt)


def test_deploy_moves_three_hours_to_the_reserve(api):
    plan, acct, headers = setup(api, price="1.5", balance="10")
    iid = api.deploy(headers, plan)
    assert api.money(acct)["balance"] == D("5.5")
    assert api.money(acct)["reserved"] == D("4.5")
    b = billing(api, headers, iid)
    assert b["reserved_amount"] == D("4.5") and b["total_spendings"] == 0
    assert b["hourly_usage"] == 0 and b["next_billing_period"] is None
    checked(api)


def test_deploy_without_three_hours_is_400_and_changes_nothing(api):
    plan, acct, headers = setup(api, price="1.5", balance="4.499999")
    r = api.client.post("/gpu/instances/", json=api.container_body(plan), headers=headers)
    assert r.status_code == 400 and r.json() == {"detail": "Insufficient balance to deploy instance"}
    assert api.money(acct) == {"id": acct, "name": "acct", "balance": D("4.499999"),
                               "reserved": 0, "spent": 0}
    assert api.client.get("/gpu/instances/", headers=headers).json() == []
    checked(api)


def test_activation_charges_the_current_hour(api):
    plan, acct, headers = setup(api, price="1.5")
    api.advance(20 * 60)  # 10:20
    iid = api.deploy(headers, plan)
    api.advance(10)
    b = billing(api, headers, iid)
    assert b == {"hourly_usage": D("1.5"), "total_spendings": D("1.5"),
                 "reserved_amount": D("3"), "next_billing_period": "2026-01-05T11:00:00Z"}
    assert api.money(acct)["balance"] == D("95.5")
    checked(api)


def test_boundary_charges_and_tops_up(api):
    plan, acct, headers = setup(api, price="1.5")
    iid = api.deploy(headers, plan)
    api.advance(10)
    api.advance(3600)  # past 11:00
    b = billing(api, headers, iid)
    assert b["total_spendings"] == D("3") and b["reserved_amount"] == D("3")
    assert b["next_billing_period"] == "2026-01-05T12:00:00Z"
    assert api.money(acct)["balance"] == D("94")
    checked(api)


def test_several_boundaries_in_one_clock_move(api):
    plan, acct, headers = setup(api, price="2")
    iid = api.deploy(headers, plan)
    api.advance(10 * 3600)
    b = billing(api, headers, iid)
    assert b["total_spendings"] == D("22")  # activation hour + 10 boundaries
    assert b["next_billing_period"] == "2026-01-05T21:00:00Z"
    assert api.money(acct)["balance"] == D("100") - D("22") - D("4")
    checked(api)


def test_topup_fails_then_succeeds_after_deposit(api):
    plan, acct, headers = setup(api, price="1", balance="3.5")
    iid = api.deploy(headers, plan)
    api.advance(10)
    api.advance(3600)
    assert billing(api, headers, iid)["reserved_amount"] == D("1")  # top-up of 1 > 0.5
    checked(api)
    api.deposit(acct, "0.5")
    assert billing(api, headers, iid)["reserved_amount"] == D("2")
    assert api.money(acct)["balance"] == 0
    checked(api)


def test_exhaustion_ends_the_instance(api):
    plan, acct, headers = setup(api, price="1", balance="3")
    iid = api.deploy(headers, plan)
    api.advance(10)
    api.advance(3 * 3600)
    detail = api.instance(headers, iid)
    assert detail["instance_status"] == "ENDED"
    assert detail["billing"] == {"hourly_usage": 0, "total_spendings": D("3"),
                                 "reserved_amount": 0, "next_billing_period": None}
    assert api.money(acct) == {"id": acct, "name": "acct", "balance": 0, "reserved": 0,
                               "spent": D("3")}
    # the workload was really removed at the provider
    events = api.client.get(f"/gpu/instances/{iid}/events", headers=headers).json()
    assert any("funds exhausted" in e for e in events)
    assert any("Workload removed" in e for e in events), events
    checked(api)


def test_termination_refunds_the_unspent_reserve(api):
    plan, acct, headers = setup(api, price="1.22")
    iid = api.deploy(headers, plan)
    api.advance(10)
    api.advance(2 * 3600)
    assert api.client.delete(f"/gpu/instances/{iid}", headers=headers).status_code == 204
    api.advance(1)
    assert api.money(acct) == {"id": acct, "name": "acct", "balance": D("100") - D("3.66"),
                               "reserved": 0, "spent": D("3.66")}
    assert billing(api, headers, iid)["reserved_amount"] == 0
    checked(api)


def test_failed_provisioning_refunds_everything(api):
    plan, acct, headers = setup(api, price="0.37", fail_provisioning=True)
    iid = api.deploy(headers, plan)
    api.advance(3600)
    assert api.instance(headers, iid)["instance_status"] == "FAILED"
    assert api.money(acct) == {"id": acct, "name": "acct", "balance": D("100"),
                               "reserved": 0, "spent": 0}
    checked(api)


def test_prices_without_drift_over_many_hours(api):
    for price in ("0.37", "1.22"):
        plan, acct, headers = setup(api, price=price, balance="500")
        iid = api.deploy(headers, plan)
        api.advance(10)
        api.advance(200 * 3600)
        b = billing(api, headers, iid)
        assert b["total_spendings"] == 201 * D(price)
        assert b["reserved_amount"] == 2 * D(price)
        assert api.money(acct)["balance"] == D("500") - 203 * D(price)
        api.client.delete(f"/gpu/instances/{iid}", headers=headers)
        checked(api)


def test_transactions_newest_first_with_cursor(api):
    plan, _acct, headers = setup(api, price="1.5", balance="100")
    iid = api.deploy(headers, plan)
    api.advance(10)
    api.advance(3600)
    r = api.client.get("/gpu/account/transactions", headers=headers)
    assert r.status_code == 200
    items = api.json(r)["items"]
    assert [(i["kind"], i["amount"], i["balance_after"]) for i in items] == [
        ("topup", D("1.5"), D("94")), ("charge", D("1.5"), D("95.5")),
        ("charge", D("1.5"), D("95.5")), ("reserve", D("4.5"), D("95.5")),
        ("deposit", D("100"), D("100"))]
    assert items[0]["instance_id"] == iid and items[-1]["instance_id"] is None
    assert items[0]["at"] == "2026-01-05T11:00:00Z"
    assert set(items[0]) == {"id", "at", "kind", "amount", "instance_id", "balance_after"}
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = api.json(api.client.get("/gpu/account/transactions", params=params,
                                       headers=headers))
        assert len(page["items"]) <= 2
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [i["id"] for i in items]
    # another account sees only its own
    _, other = api.account("1", name="other")
    mine = api.json(api.client.get("/gpu/account/transactions", headers=other))["items"]
    assert [i["kind"] for i in mine] == ["deposit"]


def test_transactions_bad_input(api):
    _, headers = api.account("1")
    for params in ({"limit": 0}, {"limit": 501}, {"limit": "x"}, {"cursor": "!!"},
                   {"cursor": "bGU6MA"}, {"cursor": "Zm9v"}):
        r = api.client.get("/gpu/account/transactions", params=params, headers=headers)
        assert r.status_code == 422, (params, r.text)
        assert isinstance(r.json()["detail"], list) and r.json()["detail"][0]["loc"][0] == "query"
    assert api.client.get("/gpu/account/transactions").status_code == 403
    # the same path with a trailing slash is the same endpoint (issue 9)
    assert api.client.get("/gpu/account/transactions/").status_code == 403
    assert api.client.get("/gpu/account/transactions/", headers=headers).status_code == 200


def test_balance_for_one_of_two_topups_goes_to_the_oldest(api):
    plan, acct, headers = setup(api, price="2", balance="15")
    first = api.deploy(headers, plan)
    api.advance(1)
    second = api.deploy(headers, plan)
    api.advance(10)
    api.advance(3600)  # both short by 2, the account holds 3: only one can be topped up
    assert billing(api, headers, first)["reserved_amount"] == D("4")
    assert billing(api, headers, second)["reserved_amount"] == D("2")
    assert api.money(acct)["balance"] == D("1")
    checked(api)
