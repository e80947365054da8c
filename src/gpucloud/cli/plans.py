"""`gpucloud plans`: every deployable plan in one price-sorted table."""

from __future__ import annotations

import enum
from typing import Optional

import typer

from gpucloud.cli.options import connected, parse_money
from gpucloud.cli.output import print_json, table
from gpucloud.client import Client
from gpucloud.client.plans import PlanRow, from_container_plans, from_plan_groups, select


class Kind(str, enum.Enum):
    container = "container"
    vm = "vm"
    baremetal = "baremetal"


def fetch_rows(client: Client, kinds: list[str]) -> list[PlanRow]:
    rows: list[PlanRow] = []
    for kind in kinds:
        if kind == "container":
            rows += from_container_plans(client.container_plans())
        else:
            groups = client.vm_plans() if kind == "vm" else client.baremetal_plans()
            rows += from_plan_groups(kind, groups)
    return rows


@connected
def plans(
    kind: Optional[Kind] = typer.Argument(None, help="Only this type (default: all types)"),  # noqa: UP045
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU model, e.g. h100 (substring)"),  # noqa: UP045
    count: Optional[int] = typer.Option(None, "--count", min=1, help="Exact GPU count"),  # noqa: UP045
    location: Optional[str] = typer.Option(None, "--location",  # noqa: UP045
                                           help="Country or data center (prefix), e.g. US"),
    max_price: Optional[str] = typer.Option(None, "--max-price", callback=parse_money,  # noqa: UP045
                                            help="Highest price per hour, USDC"),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table"),
    *,
    client: Client,
) -> None:
    """List plans sorted by price (the ID is what `gpucloud deploy` takes)."""
    kinds = [kind.value] if kind else ["container", "vm", "baremetal"]
    rows = select(fetch_rows(client, kinds), gpu=gpu, count=count, location=location,
                  max_price=max_price)
    if as_json:
        print_json(rows)
        return
    table(["ID", "Type", "Model", "VRAM", "Interface", "GPUs", "vCPU", "RAM GiB", "Disk GiB",
           "Location", "Provider", "Price/h", "OS options"],
          [[r.id, r.type, r.model, r.vram, r.interface, r.gpu_count, r.vcpu, r.memory_gib,
            r.storage_gib, r.locations, r.provider, r.price_hour, r.os_options] for r in rows],
          right=("GPUs", "vCPU", "RAM GiB", "Disk GiB", "Price/h"))
    if not rows:
        typer.echo("No plans match.", err=True)


@connected
def images(
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table"),
    *,
    client: Client,
) -> None:
    """Ready-made container images (for `gpucloud deploy container --image`)."""
    items = client.default_images()
    if as_json:
        print_json(items)
        return
    table(["Slug", "Name", "Image", "Ports", "SSH", "Description"],
          [[i.slug, i.name, i.image, [f"{p.port}/{p.protocol}" for p in i.expose],
            "yes" if i.requires_ssh else "no", i.description] for i in items])
