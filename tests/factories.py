"""Factories: build accounts, providers, offers and instances through the real API."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import simplejson

SSH_ED25519 = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl "
               "user@host")


def money(value: Any) -> Decimal:
    return Decimal(str(value))


class Api:
    """Thin helpers over the HTTP API; every call goes through the app like a client's would."""

    def __init__(self, client, rt, admin_key: str):
        self.client = client
        self.rt = rt
        self.admin = {"X-ADMIN-KEY": admin_key}

    # -- generic -------------------------------------------------------------------------
    def json(self, response) -> Any:
        """Parse with Decimal so money compares exactly."""
        return simplejson.loads(response.content, use_decimal=True)

    # -- accounts ------------------------------------------------------------------------
    def account(self, balance: Any = 1000, name: str = "acct") -> tuple[str, dict]:
        r = self.client.post("/admin/accounts", json={"name": name, "balance": str(balance)},
                             headers=self.admin)
        assert r.status_code == 201, r.text
        body = r.json()
        return body["id"], {"X-API-KEY": body["api_key"]}

    def deposit(self, account_id: str, amount: Any) -> dict:
        r = self.client.post(f"/admin/accounts/{account_id}/deposits",
                             json={"amount": str(amount)}, headers=self.admin)
        assert r.status_code == 200, r.text
        return self.json(r)

    def money(self, account_id: str) -> dict:
        r = self.client.get(f"/admin/accounts/{account_id}", headers=self.admin)
        assert r.status_code == 200, r.text
        return self.json(r)

    # -- catalog -------------------------------------------------------------------------
    def provider(self, name: str = "sim", driver: str = "simulated", **config) -> str:
        r = self.client.post("/admin/providers", json={"name": name, "driver": driver,
                                                       "config": config}, headers=self.admin)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def offer(self, provider_id: str, workload: str = "container", price: Any = "1.5",
              capacity: int = 10, **overrides) -> str:
        body: dict[str, Any] = {
            "provider_id": provider_id, "workload": workload,
            "gpu": {"vendor": "nvidia", "model": "h100", "vram": "80Gi", "interface": "SXM"},
            "gpu_count": 1, "vcpu": 16, "memory_gib": 128, "storage_gib": 200,
            "price_hour": str(price), "capacity": capacity,
        }
        if workload == "container":
            body["countries"] = ["US"]
        else:
            body.update(location="us-east-1", country="US",
                        os_options=["Ubuntu Server 22.04", "Ubuntu Server 24.04"])
        body.update(overrides)
        r = self.client.post("/admin/offers", json=body, headers=self.admin)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    # -- instances -----------------------------------------------------------------------
    def container_body(self, plan_id: str, name: str = "box", **overrides) -> dict:
        body: dict[str, Any] = {
            "plan_id": plan_id, "name": name,
            "container_settings": {"image": "docker.io/library/ubuntu:22.04",
                                   "expose": [{"port": "22", "protocol": "tcp"},
                                              {"port": 80, "protocol": "http"}]},
        }
        body.update(overrides)
        return body

    def deploy(self, headers: dict, plan_id: str, **overrides) -> str:
        r = self.client.post("/gpu/instances/", json=self.container_body(plan_id, **overrides),
                             headers=headers)
        assert r.status_code in (200, 201), r.text
        return r.json()["instance_id"]

    def deploy_vm(self, headers: dict, plan_id: str, kind: str = "vms", **overrides) -> str:
        body = {"plan_id": plan_id, "name": "vm", "ssh_key": SSH_ED25519,
                "os_image": "Ubuntu Server 22.04"}
        body.update(overrides)
        r = self.client.post(f"/gpu/instances/{kind}", json=body, headers=headers)
        assert r.status_code in (200, 201), r.text
        return r.json()["instance_id"]

    def instance(self, headers: dict, instance_id: str, kind: str = "") -> dict:
        path = f"/gpu/instances/{kind + '/' if kind else ''}{instance_id}"
        r = self.client.get(path, headers=headers)
        assert r.status_code == 200, r.text
        return self.json(r)

    # -- clock ---------------------------------------------------------------------------
    def advance(self, seconds: float) -> str:
        r = self.client.post("/admin/clock", json={"advance_seconds": seconds}, headers=self.admin)
        assert r.status_code == 200, r.text
        return r.json()["now"]

    def now(self) -> str:
        return self.client.get("/admin/clock", headers=self.admin).json()["now"]
