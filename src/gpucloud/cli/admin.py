"""`gpucloud admin …`: the operator side (accounts, keys, providers, offers, catalog, clock).
Every command here needs the admin key (--admin-key or GPUCLOUD_ADMIN_KEY)."""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from gpucloud.cli.options import connected, parse_money
from gpucloud.cli.output import fail, fields, info, print_json, table
from gpucloud.client import Client, models

app = typer.Typer(help="Operator commands (admin key required).", no_args_is_help=True)
accounts = typer.Typer(help="Accounts and their money.", no_args_is_help=True)
keys = typer.Typer(help="API keys.", no_args_is_help=True)
providers = typer.Typer(help="Providers (where offers run).", no_args_is_help=True)
offers = typer.Typer(help="Offers (what plans are made of).", no_args_is_help=True)
catalog = typer.Typer(help="Bulk catalog import.", no_args_is_help=True)
clock = typer.Typer(help="The server clock (manual clock only for moves).", no_args_is_help=True)
machines = typer.Typer(help="Bare-metal machines: list, wipe again, return to service, "
                       "check inventory.", no_args_is_help=True)
for sub, name in ((accounts, "accounts"), (keys, "keys"), (providers, "providers"),
                  (offers, "offers"), (catalog, "catalog"), (clock, "clock"),
                  (machines, "machines")):
    app.add_typer(sub, name=name)

JSON_OPT = typer.Option(False, "--json", help="JSON output")


def _account_view(acct: models.Account, as_json: bool) -> None:
    if as_json:
        print_json(acct)
    else:
        fields([("id", acct.id), ("name", acct.name), ("balance", acct.balance),
                ("reserved", acct.reserved), ("spent", acct.spent)])


# -- accounts ------------------------------------------------------------------------------------
@accounts.command("create")
@connected
def accounts_create(
    name: str = typer.Argument(...),
    balance: Optional[str] = typer.Option(None, "--balance", callback=parse_money,  # noqa: UP045
                                          help="Opening balance, USDC"),
    as_json: bool = JSON_OPT,
    *,
    client: Client,
) -> None:
    """Create an account; prints its API key (shown only once)."""
    created = client.create_account(name, balance)
    if as_json:
        print_json(created)
        return
    fields([("id", created.id), ("name", created.name), ("balance", created.balance),
            ("api_key", created.api_key)])
    info("The API key is shown only now; keep it.")


@accounts.command("show")
@connected
def accounts_show(account_id: str = typer.Argument(..., metavar="ID"), as_json: bool = JSON_OPT,
                  *, client: Client) -> None:
    """Show an account's balance, reserve and spending."""
    _account_view(client.get_account(account_id), as_json)


@accounts.command("deposit")
@connected
def accounts_deposit(
    account_id: str = typer.Argument(..., metavar="ID"),
    amount: str = typer.Argument(..., callback=parse_money, metavar="AMOUNT"),
    as_json: bool = JSON_OPT,
    *,
    client: Client,
) -> None:
    """Add funds (USDC) to an account."""
    _account_view(client.deposit(account_id, amount), as_json)


# -- keys ----------------------------------------------------------------------------------------
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_expiry(client: Client, value: str) -> dt.datetime:
    """An ISO 8601 time, or a duration (`30d`, `12h`) counted from the *server's* clock, which
    may be a manual one far from the wall clock."""
    match = _DURATION.match(value.strip())
    if match:
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
        return client.clock().now + dt.timedelta(seconds=seconds)
    try:
        when = dt.datetime.fromisoformat(value)  # 3.11 reads a trailing Z
    except ValueError:
        raise typer.BadParameter(f"{value!r}: expected an ISO 8601 time or a duration like 30d",
                                 param_hint="--expires") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@keys.command("create")
@connected
def keys_create(
    account_id: str = typer.Argument(..., metavar="ACCOUNT_ID"),
    expires: Optional[str] = typer.Option(None, "--expires",  # noqa: UP045
                                          help="ISO 8601 time or a duration (30d, 12h)"),
    as_json: bool = JSON_OPT,
    *,
    client: Client,
) -> None:
    """Create another API key for an account; prints the key (shown only once)."""
    expires_at = parse_expiry(client, expires) if expires else None
    created = client.create_api_key(account_id, expires_at)
    if as_json:
        print_json(created)
        return
    fields([("id", created.id), ("api_key", created.api_key), ("expires", created.expires_at)])


@keys.command("revoke")
@connected
def keys_revoke(key_id: str = typer.Argument(..., metavar="KEY_ID"), *, client: Client) -> None:
    """Revoke an API key at once."""
    client.revoke_api_key(key_id)
    info(f"Revoked {key_id}.")


# -- providers -----------------------------------------------------------------------------------
def load_document(value: str, what: str) -> Any:
    """Inline JSON, or a JSON/YAML file."""
    path = Path(value).expanduser()
    try:
        if not value.lstrip().startswith("{") and path.is_file():
            return yaml.safe_load(path.read_text())
        return json.loads(value)
    except (ValueError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"{what}: {exc}") from None


@providers.command("add")
@connected
def providers_add(
    name: str = typer.Argument(...),
    driver: str = typer.Option(..., "--driver", help="Driver name, e.g. simulated"),
    config: Optional[str] = typer.Option(None, "--config",  # noqa: UP045
                                         help="Driver config: JSON, or a JSON/YAML file"),
    as_json: bool = JSON_OPT,
    *,
    client: Client,
) -> None:
    """Register a provider."""
    cfg = load_document(config, "--config") if config else {}
    if not isinstance(cfg, dict):
        raise typer.BadParameter("--config must be a JSON object")
    created = client.create_provider(name, driver, cfg)
    if as_json:
        print_json(created)
    else:
        typer.echo(created.id)


@providers.command("ls")
@connected
def providers_ls(as_json: bool = JSON_OPT, *, client: Client) -> None:
    """List providers."""
    items = client.providers()
    if as_json:
        print_json(items)
        return
    table(["ID", "Name", "Driver", "Enabled", "Offers", "In use", "Config"],
          [[p.id, p.name, p.driver, "yes" if p.enabled else "no", p.offers,
            f"{p.in_use or 0}/{p.capacity or 0}", json.dumps(p.config)] for p in items])


def _toggle_provider(enabled: bool):
    @connected
    def toggle(provider_id: str = typer.Argument(..., metavar="ID"), *, client: Client) -> None:
        client.set_provider_enabled(provider_id, enabled)
        info(f"Provider {provider_id} {'enabled' if enabled else 'disabled'}.")

    toggle.__doc__ = ("Enable a provider (its offers are listed again)." if enabled else
                      "Disable a provider (its offers leave the plans).")
    return toggle


providers.command("enable")(_toggle_provider(True))
providers.command("disable")(_toggle_provider(False))


# -- offers --------------------------------------------------------------------------------------
@offers.command("add")
@connected
def offers_add(
    provider_id: str = typer.Option(..., "--provider", help="Provider ID"),
    workload: str = typer.Option(..., "--workload", help="container | vm | baremetal"),
    gpu_model: str = typer.Option(..., "--gpu", help="GPU model, e.g. h100"),
    vram: str = typer.Option(..., "--vram", help="e.g. 80Gi"),
    interface: str = typer.Option("SXM", "--interface", help="SXM, pcie …"),
    vendor: str = typer.Option("nvidia", "--vendor"),
    gpu_count: int = typer.Option(1, "--gpu-count"),
    vcpu: int = typer.Option(..., "--vcpu"),
    memory: int = typer.Option(..., "--memory", help="GiB"),
    storage: int = typer.Option(..., "--storage", help="GiB"),
    price: str = typer.Option(..., "--price", callback=parse_money, help="USDC per hour"),
    capacity: int = typer.Option(1, "--capacity", help="Instances that can run at once"),
    location: Optional[str] = typer.Option(None, "--location",  # noqa: UP045
                                           help="Data-center id (VM/bare metal)"),
    country: list[str] = typer.Option([], "--country", help="Country code; repeatable for "
                                      "containers"),
    os_option: list[str] = typer.Option([], "--os", help="OS image offered; repeatable"),
    nvlink: bool = typer.Option(False, "--nvlink"),
    as_json: bool = JSON_OPT,
    *,
    client: Client,
) -> None:
    """Add an offer (a deployable configuration at a price)."""
    body: dict[str, Any] = {
        "provider_id": provider_id, "workload": workload,
        "gpu": {"vendor": vendor, "model": gpu_model, "vram": vram, "interface": interface},
        "gpu_count": gpu_count, "vcpu": vcpu, "memory_gib": memory, "storage_gib": storage,
        "price_hour": price, "capacity": capacity, "nvlink": nvlink,
    }
    if location:
        body["location"] = location
    if len(country) > 1:
        body["countries"] = country
    elif country:
        body["country"] = country[0]
    if os_option:
        body["os_options"] = os_option
    created = client.create_offer(body)
    if as_json:
        print_json(created)
    else:
        typer.echo(created.id)


@offers.command("ls")
@connected
def offers_ls(as_json: bool = JSON_OPT, *, client: Client) -> None:
    """List offers."""
    items = client.offers()
    if as_json:
        print_json(items)
        return
    table(["ID", "Provider", "Workload", "GPU", "Location", "Price/h", "In use", "Enabled"],
          [[o.id, o.provider or o.provider_id, o.workload, _offer_gpu(o),
            o.location or o.countries, o.price_hour, f"{o.in_use or 0}/{o.capacity}",
            "yes" if o.enabled else "no"] for o in items], right=("Price/h", "In use"))


def _offer_gpu(o: models.Offer) -> str:
    if o.gpu is None:
        return "-"
    return f"{o.gpu_count or 1}× {o.gpu.model} {o.gpu.vram or ''}".strip()


@offers.command("set")
@connected
def offers_set(
    offer_id: str = typer.Argument(..., metavar="ID"),
    capacity: Optional[int] = typer.Option(None, "--capacity", min=0),  # noqa: UP045
    price: Optional[str] = typer.Option(None, "--price", callback=parse_money),  # noqa: UP045
    *,
    client: Client,
) -> None:
    """Change an offer's capacity or price."""
    client.update_offer(offer_id, capacity=capacity, price_hour=price)
    info(f"Offer {offer_id} updated.")


def _toggle_offer(enabled: bool):
    @connected
    def toggle(offer_id: str = typer.Argument(..., metavar="ID"), *, client: Client) -> None:
        client.update_offer(offer_id, enabled=enabled)
        info(f"Offer {offer_id} {'enabled' if enabled else 'disabled'}.")

    toggle.__doc__ = "Enable an offer." if enabled else "Disable an offer (leaves the plans)."
    return toggle


offers.command("enable")(_toggle_offer(True))
offers.command("disable")(_toggle_offer(False))


# -- catalog and clock ---------------------------------------------------------------------------
class _DecimalLoader(yaml.SafeLoader):
    """YAML floats become Decimal: `price_hour: 2.123457` must reach the server digit for
    digit, not as the nearest binary float."""


_DecimalLoader.add_constructor(
    "tag:yaml.org,2002:float",
    lambda loader, node: Decimal(loader.construct_scalar(node).replace("_", "")))


@catalog.command("import")
@connected
def catalog_import(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, metavar="FILE.yaml"),
    as_json: bool = JSON_OPT,
    *,
    client: Client,
) -> None:
    """Import a catalog document (providers, offers, default images) from YAML."""
    try:
        document = yaml.load(file.read_text(), Loader=_DecimalLoader)
    except (yaml.YAMLError, ArithmeticError) as exc:
        raise typer.BadParameter(f"{file}: {exc}") from None
    if not isinstance(document, dict):
        raise typer.BadParameter(f"{file}: expected a YAML mapping")
    summary = client.import_catalog(document)
    if as_json:
        print_json(summary)
    else:
        fields(sorted((summary.model_extra or {}).items()))


# -- instances -----------------------------------------------------------------------------------
@app.command("console")
@connected
def console(instance_id: str = typer.Argument(..., metavar="ID"),
            last: int | None = typer.Option(None, "--last", min=1, help="Only the last N lines"),
            *, client: Client) -> None:
    """A VM's serial console log (kernel, systemd, cloud-init): why a guest never answered."""
    for line in client.console(instance_id, last):
        typer.echo(line)


@machines.command("list")
@connected
def machines_list(as_json: bool = JSON_OPT, *, client: Client) -> None:
    """Bare-metal machines: free, rented, dirty (wipe pending) or in maintenance, and why."""
    items = client.machines()
    if as_json:
        print_json(items)
        return
    table(["ID", "Provider", "Machine", "State", "Instance", "Inventory", "Reason"],
          [[m["id"], m["provider_id"], m["name"], m["state"], m["instance_id"] or "",
            _inventory_text(m.get("inventory")), m["reason"] or ""] for m in items])


def _inventory_text(inv: dict | None) -> str:
    if not inv:
        return "not read"
    return (f"cpus={inv.get('cpus')} memory_gib={inv.get('memory_gib')} "
            f"gpus={inv.get('gpus')} power={inv.get('power')}")


def _machine_view(m: dict, as_json: bool) -> None:
    if as_json:
        print_json(m)
    else:
        fields([("id", m["id"]), ("name", m["name"]), ("state", m["state"]),
                ("instance", m["instance_id"] or ""), ("inventory",
                                                       _inventory_text(m.get("inventory"))),
                ("reason", m["reason"] or "")])


@machines.command("wipe")
@connected
def machines_wipe(machine_id: int = typer.Argument(..., metavar="ID"), as_json: bool = JSON_OPT,
                  *, client: Client) -> None:
    """Wipe a machine in maintenance again (it is offered again only if the wipe succeeds)."""
    _machine_view(client.wipe_machine(machine_id), as_json)


@machines.command("return")
@connected
def machines_return(machine_id: int = typer.Argument(..., metavar="ID"),
                    as_json: bool = JSON_OPT, *, client: Client) -> None:
    """Return a machine in maintenance to service (you vouch that it is clean)."""
    _machine_view(client.return_machine(machine_id), as_json)


@machines.command("inventory")
@connected
def machines_inventory(machine_id: int = typer.Argument(..., metavar="ID"),
                       as_json: bool = JSON_OPT, *, client: Client) -> None:
    """Read a machine's CPUs, memory, GPUs and power from its BMC; check them against its
    offers (a contradiction is an error and takes a free machine out of service)."""
    _machine_view(client.check_machine_inventory(machine_id), as_json)


# -- the books -----------------------------------------------------------------------------------
@app.command("audit")
@connected
def audit(as_json: bool = JSON_OPT, *, client: Client) -> None:
    """Check the books: conservation, every balance and reserve re-derived from the ledger.
    Exits 1 when a check fails (for cron and monitoring)."""
    report = client.audit()
    if as_json:
        print_json(report)
    else:
        fields([("deposits", report.deposits), ("balances", report.balances),
                ("reserves", report.reserves), ("charges", report.charges),
                ("entries", report.entries)], title="books")
        table(["check", "result", "failures", "examples"],
              [(c.name, "ok" if c.ok else "FAILED", c.failures, ", ".join(c.examples))
               for c in report.checks])
    if not report.ok:
        failed = ", ".join(c.name for c in report.checks if not c.ok)
        raise fail(f"the books do not balance: {failed}")


@clock.command("show")
@connected
def clock_show(*, client: Client) -> None:
    """Print the server's current time."""
    typer.echo(_z(client.clock().now))


@clock.command("advance")
@connected
def clock_advance(seconds: float = typer.Argument(..., min=0, metavar="SECONDS"),
                  *, client: Client) -> None:
    """Move a manual clock forward; returns once everything due has run."""
    typer.echo(_z(client.advance_clock(seconds).now))


def _z(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
