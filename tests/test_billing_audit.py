"""GET /admin/audit and `gpucloud admin audit`: the books re-derived from the ledger, on both
databases — clean after real traffic (deploys, hours billed, a failure, a termination), and
each kind of damage done behind the server's back reported with the offending ids."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from gpucloud.cli.main import app
from tests.conftest import ADMIN_KEY

CHECKS = ["conservation", "account_balances", "balance_after", "instance_reserves",
          "account_totals", "orphan_entries", "amounts"]


@pytest.fixture
def traffic(api):
    """Two accounts with real history: deposits, deploys, three billed hours, a provisioning
    failure (refund), a termination (refund)."""
    provider = api.provider()
    failing = api.provider(name="bad", fail_provisioning=True)
    plan = api.offer(provider, price="0.37")
    bad_plan = api.offer(failing, price="1.22")
    a, a_headers = api.account("40", name="a")
    b, b_headers = api.account("25", name="b")
    api.deposit(b, "5")
    keep = api.deploy(a_headers, plan)
    gone = api.deploy(a_headers, plan)
    api.deploy(b_headers, bad_plan)
    api.advance(10)
    api.advance(3 * 3600)
    assert api.client.delete(f"/gpu/instances/{gone}", headers=a_headers).status_code == 204
    return {"accounts": [a, b], "headers": a_headers, "keep": keep}


def _audit(api) -> dict:
    r = api.client.get("/admin/audit", headers=api.admin)
    assert r.status_code == 200, r.text
    return api.json(r)


def _failed(report: dict) -> dict:
    return {c["name"]: c for c in report["checks"] if not c["ok"]}


def test_real_traffic_audits_clean(api, traffic):
    report = _audit(api)
    assert [c["name"] for c in report["checks"]] == CHECKS
    assert report["ok"] is True and _failed(report) == {}
    assert report["deposits"] == Decimal("70")
    assert report["deposits"] == report["balances"] + report["reserves"] + report["charges"]
    # 0.37 × (activation hour + 3 boundaries) for `keep` and for `gone` (ended after them)
    assert report["charges"] == Decimal("0.37") * 8
    assert report["reserves"] == Decimal("0.74")  # `keep` holds two hours
    with api.rt.db.read() as s:
        assert report["entries"] == s.execute(text("SELECT count(*) FROM ledger_entries")).scalar()


def test_a_balance_changed_behind_the_ledger_is_reported(api, traffic):
    a = traffic["accounts"][0]
    with api.rt.db.write() as s:
        s.execute(text("UPDATE accounts SET balance = balance + 1 WHERE id = :id"), {"id": a})
    failed = _failed(_audit(api))
    assert set(failed) == {"conservation", "account_balances", "balance_after"}
    assert failed["account_balances"]["examples"] == [a]
    assert failed["balance_after"]["failures"] == 1
    assert failed["conservation"]["examples"] == ["off by -1 micro-USDC"]


def test_account_totals_changed_behind_the_ledger_are_reported(api, traffic):
    a, b = traffic["accounts"]
    shown = api.json(api.client.get("/gpu/account", headers=traffic["headers"]))
    with api.rt.db.write() as s:
        s.execute(text("UPDATE accounts SET spent = spent + 1 WHERE id = :id"), {"id": a})
        s.execute(text("UPDATE accounts SET reserved = reserved - 1 WHERE id = :id"), {"id": b})
    failed = _failed(_audit(api))
    # the instances and the ledger still agree, so only the running totals are off
    assert set(failed) == {"account_totals"}
    assert failed["account_totals"]["examples"] == sorted([a, b])
    assert failed["account_totals"]["failures"] == 2
    # GET /gpu/account shows the stored totals: what the audit is there to check
    after = api.json(api.client.get("/gpu/account", headers=traffic["headers"]))
    assert after["spent"] == shown["spent"] + Decimal("0.000001")


def test_a_reserve_and_an_orphan_entry_are_reported(api, traffic):
    with api.rt.db.write() as s:
        s.execute(text("UPDATE instances SET reserve = reserve - 5, spent = spent + 5 "
                       "WHERE id = :id"), {"id": traffic["keep"]})
        orphan = s.execute(text(
            "INSERT INTO ledger_entries (at, account_id, instance_id, kind, amount, "
            "balance_after) VALUES (CURRENT_TIMESTAMP, 'no-such-account', NULL, 'deposit', 0, "
            "0) RETURNING id")).scalar_one()
    report = _audit(api)
    failed = _failed(report)
    # five micro-USDC left the reserve without a charge entry: the totals no longer balance
    assert set(failed) == {"conservation", "instance_reserves", "orphan_entries", "amounts"}
    assert failed["conservation"]["examples"] == ["off by 5 micro-USDC"]
    assert failed["instance_reserves"]["examples"] == [traffic["keep"]]
    assert failed["orphan_entries"]["examples"] == [str(orphan)]
    assert failed["amounts"]["examples"] == [str(orphan)]  # a zero amount
    assert report["ok"] is False


def test_audit_needs_the_admin_key(api, traffic):
    r = api.client.get("/admin/audit")
    assert r.status_code == 403 and isinstance(r.json()["detail"], str)
    r = api.client.get("/admin/audit", headers={"X-ADMIN-KEY": "wrong"})
    assert r.status_code == 403


def test_cli_audit_exits_1_when_the_books_do_not_balance(api, traffic, live_server, tmp_path):
    runner = CliRunner()
    argv = ["admin", "audit", "--url", live_server.url, "--admin-key", ADMIN_KEY]
    env = {"GPUCLOUD_CONFIG_DIR": str(tmp_path)}
    ok = runner.invoke(app, argv, env=env)
    assert ok.exit_code == 0, (ok.stdout, ok.stderr)
    assert "account_balances" in ok.stdout and "FAILED" not in ok.stdout
    with api.rt.db.write() as s:
        s.execute(text("UPDATE accounts SET balance = balance + 1 WHERE id = :id"),
                  {"id": traffic["accounts"][1]})
    bad = runner.invoke(app, argv, env=env)
    assert bad.exit_code == 1
    assert "FAILED" in bad.stdout
    assert "error: the books do not balance: conservation, account_balances, balance_after" \
        in bad.stderr
