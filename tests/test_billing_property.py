"""Property test (hypothesis, stateful): random deposits, deploys, terminations, failed
provisionings and clock moves over several accounts, through the real API. After every
step: conservation, every total derivable from the ledger, no balance or reserve negative,
no (instance, hour) charged twice, every ACTIVE reserve what the rules say."""

from __future__ import annotations

from decimal import Decimal

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gpucloud.app import create_app
from gpucloud.db import Database
from gpucloud.runtime import Runtime
from tests.conftest import ADMIN_KEY, make_settings, reset_database
from tests.factories import Api
from tests.test_billing_support import check_money, check_topup_invariant

PRICES = ["0.37", "1.22", "2"]
AMOUNTS = ["0.37", "1", "1.22", "2.5", "7.32"]
MOVES = [1, 10, 61, 600, 3600, 3600, 2 * 3600, 5 * 3600]


def make_machine(backend):
    class Billing(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            cfg = make_settings(backend["url"], backend["data_dir"], billing_batch_size=3)
            db = Database(cfg)
            reset_database(db)
            db.dispose()
            self.rt = Runtime.build(cfg, migrate=False)
            self.client = TestClient(create_app(rt=self.rt)).__enter__()
            self.api = Api(self.client, self.rt, ADMIN_KEY)
            self.accounts: list[tuple[str, dict]] = []
            self.instances: list[tuple[int, str]] = []  # (account index, instance id)

        def teardown(self):
            self.client.__exit__(None, None, None)
            self.rt.close()

        @initialize()
        def catalog(self):
            good = self.api.provider(name="good")
            bad = self.api.provider(name="bad", fail_provisioning=True)
            self.plans = [(p, self.api.offer(good, price=p, capacity=50)) for p in PRICES]
            self.failing = ("1.5", self.api.offer(bad, price="1.5", capacity=50))
            for k, balance in enumerate(["4", "7.5", "15"]):
                self.accounts.append(self.api.account(balance, name=f"a{k}"))

        def balance(self, k: int) -> Decimal:
            return self.api.money(self.accounts[k][0])["balance"]

        @rule(k=st.integers(0, 2), amount=st.sampled_from(AMOUNTS))
        def deposit(self, k, amount):
            self.api.deposit(self.accounts[k][0], amount)

        def _deploy(self, k: int, price: str, plan: str):
            enough = self.balance(k) >= 3 * Decimal(price)
            r = self.client.post("/gpu/instances/", json=self.api.container_body(plan),
                                 headers=self.accounts[k][1])
            if enough:
                assert r.status_code == 201, r.text
                self.instances.append((k, r.json()["instance_id"]))
            else:
                assert r.status_code == 400
                assert r.json()["detail"] == "Insufficient balance to deploy instance"

        @rule(k=st.integers(0, 2), which=st.integers(0, len(PRICES) - 1))
        def deploy(self, k, which):
            self._deploy(k, *self.plans[which])

        @rule(k=st.integers(0, 2))
        def deploy_failing(self, k):
            self._deploy(k, *self.failing)

        @precondition(lambda self: self.instances)
        @rule(data=st.data())
        def terminate(self, data):
            k, iid = data.draw(st.sampled_from(self.instances))
            headers = self.accounts[k][1]
            status = self.api.instance(headers, iid)["instance_status"]
            r = self.client.delete(f"/gpu/instances/{iid}", headers=headers)
            assert r.status_code == (204 if status == "ACTIVE" else 400), (status, r.text)

        @rule(size=st.sampled_from([1, 3, 1000]))
        def batch_size(self, size):
            # Small batches split an account's instances across transactions; one big batch
            # puts them together (the set-based vs greedy top-up decision).
            self.rt.settings.billing_batch_size = size

        @rule(seconds=st.sampled_from(MOVES))
        def advance(self, seconds):
            self.api.advance(seconds)

        @invariant()
        def money_is_conserved(self):
            if hasattr(self, "rt") and self.accounts:
                check_money(self.rt)
                check_topup_invariant(self.rt)

    return Billing


def test_billing_state_machine(backend):
    machine = make_machine(backend)
    machine.TestCase.settings = settings(max_examples=25, stateful_step_count=15, deadline=None,
                                         suppress_health_check=list(HealthCheck))
    machine.TestCase().runTest()
