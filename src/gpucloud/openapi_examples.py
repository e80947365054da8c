"""Examples for the OpenAPI document, taken from real responses of a demo server (the
simulated provider, the manual clock moved 30 s after the deploys). Kept as data so that the
route modules stay thin; `gpucloud.openapi` attaches them to the operations."""

from __future__ import annotations

from typing import Any

from gpucloud.instances.schemas import SSH_KEY_EXAMPLE

CONTAINER_LIST: Any = [
    {
        "id": "8ea56416-2d3d-4072-8e7a-053396bbb810",
        "name": "my-gpu-container",
        "resources": {
            "supply": {
                "vcpu": {"count": 8},
                "memory": {"count": 48, "units": "Gi"},
                "storage": {"count": 150, "units": "Gi"},
                "gpu_count": 1,
            },
            "gpu_model": {
                "vendor": "nvidia",
                "model": "rtx4090",
                "vram": "24Gi",
                "interface": "pcie",
            },
        },
        "domain": "8ea56416.fi.sim.gpucloud.local",
        "location": "FI",
        "created_at": "2026-11-30T07:45:15.472381Z",
        "updated_at": "2026-11-30T07:45:21.472381Z",
        "instance_status": "ACTIVE",
    }
]

CONTAINER: Any = {
    "id": "8ea56416-2d3d-4072-8e7a-053396bbb810",
    "name": "my-gpu-container",
    "resources": {
        "supply": {
            "vcpu": {"count": 8},
            "memory": {"count": 48, "units": "Gi"},
            "storage": {"count": 150, "units": "Gi"},
            "gpu_count": 1,
        },
        "gpu_model": {"vendor": "nvidia", "model": "rtx4090", "vram": "24Gi", "interface": "pcie"},
    },
    "domain": "8ea56416.fi.sim.gpucloud.local",
    "location": "FI",
    "created_at": "2026-11-30T07:45:15.472381Z",
    "updated_at": "2026-11-30T07:45:21.472381Z",
    "instance_status": "ACTIVE",
    "container_status": "STARTED",
    "container_info": {
        "image": "docker.io/fluencelabs/debian-ssh-root:11",
        "expose": [{"port": "22", "protocol": "tcp"}, {"port": "80", "protocol": "http"}],
        "environment": [
            {"name": "MODEL_PATH", "value": "/models/llama"},
            {"name": "SSH_PUBKEY", "value": SSH_KEY_EXAMPLE},
        ],
        "startup_command": None,
    },
    "billing": {
        "hourly_usage": 0.36,
        "total_spendings": 0.36,
        "reserved_amount": 0.72,
        "next_billing_period": "2026-11-30T08:00:00Z",
    },
    "network": {
        "domain": "8ea56416.fi.sim.gpucloud.local",
        "forwarded_ports": [
            {"port": "22", "external_port": "30000", "protocol": "tcp"},
            {"port": "80", "external_port": "30001", "protocol": "http"},
        ],
        "uri": "http://8ea56416.fi.sim.gpucloud.local:30001",
    },
}

LOGS: Any = [
    "2026-11-30T07:45:21.472381Z Installed SSH public key from SSH_PUBKEY into "
    "/root/.ssh/authorized_keys",
    "2026-11-30T07:45:21.472381Z sshd listening on 0.0.0.0 port 22",
    "2026-11-30T07:45:21.472381Z HTTP server listening on 0.0.0.0:80",
]

EVENTS: Any = [
    "2026-11-30T07:45:15.472381Z Instance scheduled on provider nordic-gpu (FI)",
    "2026-11-30T07:45:15.472381Z Scheduling workload on node gpu-node-16",
    '2026-11-30T07:45:16.072381Z Pulling image "docker.io/fluencelabs/debian-ssh-root:11"',
    "2026-11-30T07:45:19.672381Z Successfully pulled image "
    '"docker.io/fluencelabs/debian-ssh-root:11" in 3.6s',
    "2026-11-30T07:45:20.572381Z Created container my-gpu-container",
    "2026-11-30T07:45:21.472381Z Instance is running and reachable at "
    "8ea56416.fi.sim.gpucloud.local",
    "2026-11-30T07:45:21.472381Z Started container my-gpu-container",
]

VM_LIST: Any = [
    {
        "id": "6f949102-38ca-4cfc-aac7-d22ac273b555",
        "name": "my-vm",
        "resources": {
            "supply": {
                "vcpu": {"count": 12},
                "memory": {"count": 96, "units": "Gi"},
                "storage": {"count": 200, "units": "Gi"},
                "gpu_count": 1,
            },
            "gpu_model": {"vendor": "nvidia", "model": "a100", "vram": "80Gi", "interface": "pcie"},
        },
        "domain": "6f949102.helsinki-fi-1.sim.gpucloud.local",
        "location": "helsinki-fi-1",
        "created_at": "2026-11-30T07:45:15.472381Z",
        "updated_at": "2026-11-30T07:45:21.472381Z",
        "status": "ACTIVE",
    }
]

VM: Any = {
    "id": "6f949102-38ca-4cfc-aac7-d22ac273b555",
    "name": "my-vm",
    "resources": {
        "supply": {
            "vcpu": {"count": 12},
            "memory": {"count": 96, "units": "Gi"},
            "storage": {"count": 200, "units": "Gi"},
            "gpu_count": 1,
        },
        "gpu_model": {"vendor": "nvidia", "model": "a100", "vram": "80Gi", "interface": "pcie"},
    },
    "domain": "6f949102.helsinki-fi-1.sim.gpucloud.local",
    "location": "helsinki-fi-1",
    "created_at": "2026-11-30T07:45:15.472381Z",
    "updated_at": "2026-11-30T07:45:21.472381Z",
    "status": "ACTIVE",
    "availability": "vm",
    "os_image": "Ubuntu Server 22.04",
    "ssh_connection": "ssh ubuntu@6f949102.helsinki-fi-1.sim.gpucloud.local",
    "billing": {
        "hourly_usage": 1,
        "total_spendings": 1,
        "reserved_amount": 2,
        "next_billing_period": "2026-11-30T08:00:00Z",
    },
    "network": {
        "domain": "6f949102.helsinki-fi-1.sim.gpucloud.local",
        "forwarded_ports": [],
        "uri": None,
    },
    "ssh_key": SSH_KEY_EXAMPLE,
}

ACCOUNT: Any = {
    "id": "d13d2f79-5272-42fc-8f26-7415fec0846c",
    "name": "alice",
    "balance": 95.92,
    "reserved": 2.72,
    "spent": 1.36,
}

TRANSACTIONS: Any = {
    "items": [
        {
            "id": 5,
            "at": "2026-11-30T07:45:21.472381Z",
            "kind": "charge",
            "amount": 1,
            "instance_id": "6f949102-38ca-4cfc-aac7-d22ac273b555",
            "balance_after": 95.92,
        },
        {
            "id": 4,
            "at": "2026-11-30T07:45:21.472381Z",
            "kind": "charge",
            "amount": 0.36,
            "instance_id": "8ea56416-2d3d-4072-8e7a-053396bbb810",
            "balance_after": 95.92,
        },
    ],
    "next_cursor": "bGU6Mw",
}

ACCOUNT_CREATED: Any = {
    "id": "d13d2f79-5272-42fc-8f26-7415fec0846c",
    "name": "alice",
    "balance": 100,
    "api_key": "gpc_sSwSMI0vUZ2vtiBOlql8xqxH16izYURxfPKlrrM4ftI",
}

ADMIN_ACCOUNT: Any = {
    "id": "d13d2f79-5272-42fc-8f26-7415fec0846c",
    "name": "alice",
    "balance": 95.92,
    "reserved": 2.72,
    "spent": 1.36,
}

PROVIDER: Any = {
    "id": "230eafbc-fe12-4db2-85c2-82d3cc3ca47e",
    "name": "massed-compute",
    "driver": "simulated",
    "config": {"provision_seconds": 5},
    "enabled": True,
    "created_at": "2026-11-30T07:45:15Z",
    "offers": 27,
    "capacity": 432,
    "in_use": 0,
}

OFFER: Any = {
    "id": "0ab264f9-9f7d-407d-88e1-07663548f514",
    "name": "b200-180gi-sxm-8gpu-192cpu-1536gi-4000gi",
    "provider_id": "230eafbc-fe12-4db2-85c2-82d3cc3ca47e",
    "provider": "massed-compute",
    "workload": "baremetal",
    "gpu": {"vendor": "nvidia", "model": "b200", "vram": "180Gi", "interface": "SXM"},
    "gpu_count": 8,
    "vcpu": 192,
    "memory_gib": 1536,
    "storage_gib": 4000,
    "price_hour": 36.93,
    "location": "us-central-3",
    "countries": ["US"],
    "nvlink": True,
    "os_options": ["Ubuntu Server 22.04", "Ubuntu Server 24.04"],
    "enabled": True,
    "capacity": 8,
    "in_use": 0,
    "zones": [{"id": 39, "country": "US", "capacity": 8, "in_use": 0}],
    "created_at": "2026-11-30T07:45:15Z",
}

AUDIT: Any = {
    "ok": True,
    "deposits": 100,
    "balances": 95.92,
    "reserves": 2.72,
    "charges": 1.36,
    "entries": 5,
    "checks": [
        {
            "name": "conservation",
            "description": "Deposits = account balances + instance reserves + charges.",
            "ok": True,
            "failures": 0,
            "examples": [],
        },
        {
            "name": "account_balances",
            "description": "Every account balance equals its deposits and refunds minus its "
            "reserves and top-ups.",
            "ok": True,
            "failures": 0,
            "examples": [],
        },
    ],
}
