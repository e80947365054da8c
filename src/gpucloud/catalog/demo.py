"""The shipped default images and the demo catalog.

The demo catalog should look like a real market so that a first `gpucloud serve` is worth
exploring: several providers, countries and data centers, the usual GPU models with realistic
prices. All providers use the `simulated` driver.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gpucloud.catalog.models import DefaultImage, Provider
from gpucloud.catalog.schemas import OfferFields
from gpucloud.catalog.service import add_offer

DEFAULT_IMAGES: list[dict[str, Any]] = [
    {"slug": "debian-ssh", "name": "Debian 11 with SSH (root)",
     "description": "Minimal Debian with an OpenSSH server. Your key (SSH_PUBKEY) is authorized "
                    "for root; connect to the forwarded port of 22.",
     "image": "docker.io/fluencelabs/debian-ssh-root:11",
     "expose": [{"port": 22, "protocol": "tcp"}], "environment": [],
     "startup_command": None, "requires_ssh": True},
    {"slug": "pytorch-cuda", "name": "PyTorch 2.4 + CUDA 12.4",
     "description": "Official PyTorch runtime image with CUDA 12.4 and cuDNN 9.",
     "image": "docker.io/pytorch/pytorch:2.4.1-cuda12.4-cudnn9-runtime",
     "expose": [{"port": 22, "protocol": "tcp"}], "environment": [],
     "startup_command": "sleep infinity", "requires_ssh": None},
    {"slug": "jupyter-pytorch", "name": "Jupyter Lab (PyTorch, CUDA)",
     "description": "Jupyter Lab with PyTorch and CUDA, served over HTTP on port 80. "
                    "Change JUPYTER_TOKEN before deploying.",
     "image": "quay.io/jupyter/pytorch-notebook:cuda12-latest",
     "expose": [{"port": 80, "protocol": "http"}],
     "environment": [{"name": "JUPYTER_TOKEN", "value": "change-me"}],
     "startup_command": "start-notebook.py --ServerApp.port=80 --ServerApp.ip=0.0.0.0",
     "requires_ssh": False},
    {"slug": "vllm-openai", "name": "vLLM OpenAI-compatible server",
     "description": "Serves a Hugging Face model with an OpenAI-compatible API on port 80. "
                    "Set MODEL (and HF_TOKEN for gated models).",
     "image": "docker.io/vllm/vllm-openai:v0.6.3",
     "expose": [{"port": 80, "protocol": "http"}],
     "environment": [{"name": "MODEL", "value": "Qwen/Qwen2.5-7B-Instruct"},
                     {"name": "HF_TOKEN", "value": ""}],
     "startup_command": "python3 -m vllm.entrypoints.openai.api_server --model $MODEL --port 80",
     "requires_ssh": False},
    {"slug": "comfyui", "name": "ComfyUI",
     "description": "Node-based Stable Diffusion / Flux UI on port 80.",
     "image": "docker.io/yanwk/comfyui-boot:cu124-slim",
     "expose": [{"port": 80, "protocol": "http"}],
     "environment": [{"name": "CLI_ARGS", "value": "--listen 0.0.0.0 --port 80"}],
     "startup_command": None, "requires_ssh": False},
    {"slug": "ollama", "name": "Ollama",
     "description": "Run open LLMs with Ollama; API on port 11434.",
     "image": "docker.io/ollama/ollama:0.4.1",
     "expose": [{"port": 11434, "protocol": "tcp"}], "environment": [],
     "startup_command": None, "requires_ssh": False},
]


def upsert_default_images(s: Session, images: list[dict[str, Any]]) -> None:
    for position, image in enumerate(images):
        s.merge(DefaultImage(position=position, **image))
    s.flush()


def seed_default_images(s: Session) -> None:
    """Ship a sensible list, but never override what an operator configured."""
    if s.scalar(select(func.count()).select_from(DefaultImage)):
        return
    upsert_default_images(s, DEFAULT_IMAGES)


# --- demo catalog --------------------------------------------------------------------------------

GPUS = {  # key: (vendor, model, vram, interface, per-GPU hourly price)
    "b200": ("nvidia", "b200", "180Gi", "SXM", "4.49"),
    "h200": ("nvidia", "h200", "141Gi", "SXM", "2.96"),
    "h100-sxm": ("nvidia", "h100", "80Gi", "SXM", "2.25"),
    "h100-pcie": ("nvidia", "h100", "80Gi", "pcie", "1.89"),
    "a100-sxm": ("nvidia", "a100", "80Gi", "SXM", "1.39"),
    "a100-pcie": ("nvidia", "a100", "80Gi", "pcie", "1.07"),
    "l40s": ("nvidia", "l40s", "48Gi", "pcie", "0.89"),
    "l40": ("nvidia", "l40", "48Gi", "pcie", "0.79"),
    "a10": ("nvidia", "a10", "24Gi", "pcie", "0.45"),
    "rtx4090": ("nvidia", "rtx4090", "24Gi", "pcie", "0.39"),
}
UBUNTU = ["Ubuntu Server 22.04", "Ubuntu Server 24.04"]
FULL_OS = UBUNTU + ["Debian 12", "Rocky Linux 9"]

# (name, provision seconds, price factor, container countries, data centers (id, country))
PROVIDERS = [
    ("massed-compute", 5, "1.00", ["US", "CA"], [("us-central-3", "US"), ("toronto-ca-1", "CA")]),
    ("sesterce", 8, "0.97", ["FR", "DE", "NL"], [("paris-fr-2", "FR"), ("frankfurt-de-1", "DE")]),
    ("nordic-gpu", 6, "0.93", ["FI", "SE"], [("helsinki-fi-1", "FI")]),
    ("sakura-ai", 10, "1.08", ["JP"], [("tokyo-japan-2", "JP")]),
    ("thames-cloud", 7, "1.04", ["GB", "NL"], [("london-uk-1", "GB"), ("amsterdam-nl-3", "NL")]),
]

# Which GPUs each provider rents out, and in which GPU counts:
# (gpu key, counts, workloads) — "c" container, "v" vm, "b" baremetal.
FLEET = {
    "massed-compute": [("h100-sxm", (1, 2, 4, 8), "cvb"), ("a100-pcie", (1, 2, 4), "cv"),
                       ("l40s", (1, 2, 4), "cv"), ("rtx4090", (1, 2), "c"), ("b200", (8,), "b")],
    "sesterce": [("h200", (1, 2, 4, 8), "cvb"), ("h100-pcie", (1, 2), "cv"),
                 ("a100-sxm", (1, 4, 8), "cv"), ("l40", (1, 2), "cv")],
    "nordic-gpu": [("a100-pcie", (1, 2), "cv"), ("l40s", (1, 4), "cv"), ("a10", (1,), "cv"),
                   ("rtx4090", (1, 4), "cv")],
    "sakura-ai": [("h100-sxm", (1, 8), "vb"), ("h200", (8,), "cb"), ("a10", (1, 2), "c")],
    "thames-cloud": [("h100-pcie", (1, 2), "cv"), ("a100-sxm", (1, 2, 8), "vb"),
                     ("l40s", (1,), "c"), ("rtx4090", (1,), "v")],
}

WORKLOADS = {"c": "container", "v": "vm", "b": "baremetal"}


def _size(key: str, count: int) -> tuple[int, int, int]:
    """vCPU, RAM and disk that real providers pair with this GPU count."""
    big = key in ("b200", "h200", "h100-sxm", "a100-sxm")
    vcpu = (24 if big else 12) * count if count < 8 else (192 if big else 96)
    ram = (192 if big else 96) * count if count < 8 else (1536 if big else 768)
    disk = (500 if big else 200) * count
    if key in ("rtx4090", "a10"):
        vcpu, ram, disk = 8 * count, 48 * count, 150 * count
    return vcpu, ram, disk


def demo_offers() -> list[tuple[str, dict[str, Any]]]:
    """(provider name, offer fields) for the whole demo market; deterministic."""
    out: list[tuple[str, dict[str, Any]]] = []
    for index, (name, _, factor, countries, centers) in enumerate(PROVIDERS):
        for gpu_index, (key, counts, kinds) in enumerate(FLEET[name]):
            vendor, model, vram, interface, per_gpu = GPUS[key]
            for count in counts:
                vcpu, ram, disk = _size(key, count)
                for kind in kinds:
                    workload = WORKLOADS[kind]
                    # Bare metal costs a little more, multi-GPU a little less per GPU.
                    price = Decimal(per_gpu) * Decimal(factor) * count
                    price *= Decimal("1.06") if workload == "baremetal" else Decimal(1)
                    price *= Decimal("0.97") if count >= 4 else Decimal(1)
                    fields: dict[str, Any] = {
                        "workload": workload,
                        "gpu": {"vendor": vendor, "model": model, "vram": vram,
                                "interface": interface},
                        "gpu_count": count, "vcpu": vcpu, "memory_gib": ram, "storage_gib": disk,
                        "price_hour": price.quantize(Decimal("0.01")),
                        "capacity": 2 + (index * 7 + gpu_index * 5 + count * 3) % 19,
                        "nvlink": interface == "SXM" and count > 1,
                    }
                    if workload == "container":
                        fields["countries"] = countries
                    else:
                        location, country = centers[(gpu_index + count) % len(centers)]
                        fields.update(location=location, country=country,
                                      os_options=FULL_OS if workload == "vm" else UBUNTU)
                    out.append((name, fields))
    return out


def seed_demo_catalog(s: Session, now: dt.datetime) -> None:
    """Idempotent: does nothing once any provider exists (the operator's catalog wins)."""
    if s.scalar(select(func.count()).select_from(Provider)):
        return
    ids: dict[str, str] = {}
    for name, seconds, *_ in PROVIDERS:
        provider = Provider(name=name, driver="simulated", config={"provision_seconds": seconds},
                            enabled=True, created_at=now)
        s.add(provider)
        s.flush()
        ids[name] = provider.id
    for name, fields in demo_offers():
        add_offer(s, ids[name], OfferFields.model_validate(fields), now)
    seed_default_images(s)
