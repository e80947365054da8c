"""Commands on existing instances. Each takes a bare ID and finds the instance's type itself."""

from __future__ import annotations

import time
from typing import Optional

import typer

from gpucloud.cli.config import ClientConfig
from gpucloud.cli.deploy import connection_lines, credentials
from gpucloud.cli.options import connected, parse_env, read_ssh_key
from gpucloud.cli.output import fail, fields, info, print_json, table
from gpucloud.cli.plans import Kind
from gpucloud.client import Client, Instance, models, status_of
from gpucloud.client.instances import FINISHED

LAST_HELP = "Only the last N lines"


def _gpu(item: models.ContainerInstance | models.VmInstance) -> str:
    r = item.resources
    if r is None:
        return "-"
    return f"{r.supply.gpu_count}× {r.gpu_model.model} {r.gpu_model.vram}"


@connected
def ls(
    kind: Optional[Kind] = typer.Option(None, "--type", help="Only this type"),  # noqa: UP045
    show_all: bool = typer.Option(False, "--all", "-a", help="Include ENDED and FAILED ones"),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table"),
    *,
    client: Client,
) -> None:
    """List your instances, newest first (running ones unless --all)."""
    kinds = (kind.value,) if kind else ("container", "vm", "baremetal")
    items = [(k, i) for k, i in client.all_instances(kinds)
             if show_all or status_of(i) not in FINISHED]
    if as_json:
        print_json([{"type": k, **i.model_dump(mode="python")} for k, i in items])
        return
    table(["ID", "Name", "Type", "Status", "GPU", "Location", "Domain", "Created"],
          [[i.id, i.name, k, status_of(i), _gpu(i), i.location, i.domain, i.created_at]
           for k, i in items])


def _billing_pairs(billing: models.Billing | None) -> list[tuple[str, object]]:
    if billing is None:
        return []
    return [("hourly usage", billing.hourly_usage), ("spent", billing.total_spendings),
            ("reserved", billing.reserved_amount),
            ("next billing", billing.next_billing_period)]


@connected
def show(
    instance_id: str = typer.Argument(..., metavar="ID"),
    as_json: bool = typer.Option(False, "--json", help="JSON output"),
    *,
    client: Client,
) -> None:
    """Show an instance: status, resources, billing, how to connect."""
    inst = client.locate(instance_id)
    d = inst.details
    if as_json:
        print_json({"type": inst.kind, **d.model_dump(mode="python")})
        return
    pairs: list[tuple[str, object]] = [("name", d.name), ("type", inst.kind),
                                       ("gpu", _gpu(d)), ("location", d.location),
                                       ("created", d.created_at)]
    if isinstance(d, models.ContainerDetails):
        pairs.append(("container", d.container_status))
        if d.container_info:
            ci = d.container_info
            pairs += [("image", ci.image),
                      ("ports", [f"{p.port}/{p.protocol}" for p in ci.expose]),
                      ("env", [e.name for e in ci.environment]),
                      ("command", ci.startup_command)]
    else:
        pairs += [("os", d.os_image)]
    pairs += _billing_pairs(d.billing)
    head = connection_lines(inst)
    fields(head[:2] + pairs + head[2:])


def _container(client: Client, instance_id: str, what: str) -> Instance:
    inst = client.locate(instance_id)
    if inst.kind != "container":
        raise fail(f"{what} are only available for containers; {instance_id} is a {inst.kind}")
    return inst


def new_lines(seen: list[str], current: list[str]) -> list[str]:
    """Lines of `current` not yet printed. The server may keep only a window of recent lines,
    so match the longest tail of what we printed against the head of what we got."""
    for k in range(min(len(seen), len(current)), 0, -1):
        if seen[-k:] == current[:k]:
            return current[k:]
    return current


@connected
def logs(
    instance_id: str = typer.Argument(..., metavar="ID"),
    last: Optional[int] = typer.Option(None, "--last", min=1, help=LAST_HELP),  # noqa: UP045
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines"),
    max_seconds: Optional[float] = typer.Option(  # noqa: UP045
        None, "--max-seconds", help="Stop following after this long"),
    *,
    client: Client,
    cfg: ClientConfig,
) -> None:
    """Print a container's stdout/stderr lines (oldest first)."""
    _container(client, instance_id, "logs")
    lines = client.container_logs(instance_id, last)
    for line in lines:
        typer.echo(line)
    if not follow:
        return
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    seen = list(lines)
    while deadline is None or time.monotonic() < deadline:
        time.sleep(cfg.poll_interval)
        current = client.container_logs(instance_id)
        for line in new_lines(seen, current):
            typer.echo(line)
        seen = current
        status = client.container(instance_id).instance_status
        if status in FINISHED:
            # One last read: lines written while it was stopping.
            for line in new_lines(seen, client.container_logs(instance_id)):
                typer.echo(line)
            info(f"instance is {status}")
            return


@connected
def events(
    instance_id: str = typer.Argument(..., metavar="ID"),
    last: Optional[int] = typer.Option(None, "--last", min=1, help=LAST_HELP),  # noqa: UP045
    *,
    client: Client,
) -> None:
    """Print a container's lifecycle events (oldest first)."""
    _container(client, instance_id, "events")
    for line in client.container_events(instance_id, last):
        typer.echo(line)


def _current_env(info_: models.ContainerInfo | None) -> tuple[dict[str, str], str | None]:
    """The env in effect, minus SSH_PUBKEY (the server injects it from ssh_key and rejects a
    request that sets it itself), and that key so an update keeps it."""
    env = {e.name: e.value for e in (info_.environment if info_ else [])}
    return env, env.pop("SSH_PUBKEY", None)


@connected
def update(
    instance_id: str = typer.Argument(..., metavar="ID"),
    image: Optional[str] = typer.Option(None, "--image", help="New image"),  # noqa: UP045
    env: list[str] = typer.Option([], "--env", help="Set NAME=VALUE, repeatable"),
    unset_env: list[str] = typer.Option([], "--unset-env", help="Remove NAME, repeatable"),
    cmd: Optional[str] = typer.Option(None, "--cmd",  # noqa: UP045
                                      help='Startup command ("" clears it)'),
    name: Optional[str] = typer.Option(None, "--name", help="New name"),  # noqa: UP045
    ssh_key: Optional[str] = typer.Option(None, "--ssh-key", help="Public key or file"),  # noqa: UP045
    registry_user: Optional[str] = typer.Option(None, "--registry-user"),  # noqa: UP045
    registry_password_stdin: bool = typer.Option(False, "--registry-password-stdin"),
    *,
    client: Client,
) -> None:
    """Change a container (the rest of its configuration is kept; ports cannot change).
    Registry credentials are never returned by the server: pass them again for a private image."""
    d = _container(client, instance_id, "updates").details
    assert isinstance(d, models.ContainerDetails)
    current, kept_key = _current_env(d.container_info)
    for item in env:
        pair = parse_env(item)
        current[pair["name"]] = pair["value"]
    for key in unset_env:
        current.pop(key, None)
    new_image = image or (d.container_info.image if d.container_info else None)
    if not new_image:
        raise fail("the instance reports no image yet; pass --image")
    old_cmd = d.container_info.startup_command if d.container_info else None
    settings = models.ContainerSettings(
        image=new_image,
        environment=[models.EnvVar(name=k, value=v) for k, v in current.items()],
        startup_command=(cmd or None) if cmd is not None else old_cmd,
        credentials=credentials(new_image, registry_user, registry_password_stdin, None))
    client.update_container(instance_id, models.ContainerUpdate(
        name=name or d.name, container_settings=settings,
        ssh_key=read_ssh_key(ssh_key) or kept_key))
    info(f"Update of {instance_id} accepted; it is applied in the background.")


@connected
def rename(
    instance_id: str = typer.Argument(..., metavar="ID"),
    name: str = typer.Argument(..., metavar="NAME"),
    *,
    client: Client,
) -> None:
    """Rename an instance."""
    inst = client.locate(instance_id)
    if inst.kind != "container":
        client.rename_vm(instance_id, name, inst.kind)
    else:
        d = inst.details
        assert isinstance(d, models.ContainerDetails)
        env, key = _current_env(d.container_info)
        info_ = d.container_info
        if info_ is None:
            raise fail("the instance reports no configuration yet; try again shortly")
        client.update_container(instance_id, models.ContainerUpdate(
            name=name, ssh_key=key, container_settings=models.ContainerSettings(
                image=info_.image, startup_command=info_.startup_command,
                environment=[models.EnvVar(name=k, value=v) for k, v in env.items()])))
    info(f"Renamed {instance_id} to {name}.")


@connected
def rm(
    instance_id: str = typer.Argument(..., metavar="ID"),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask"),
    *,
    client: Client,
) -> None:
    """Terminate an instance (unused reserve goes back to your balance)."""
    inst = client.locate(instance_id)
    if not yes:
        typer.confirm(f"Terminate {inst.kind} {instance_id} ({inst.details.name})?", abort=True)
    if inst.kind == "container":
        client.terminate_container(instance_id)
    else:
        client.terminate_vm(instance_id, inst.kind)
    info(f"Terminated {instance_id}.")


def register(app: typer.Typer) -> None:
    for func in (ls, show, logs, events, update, rename, rm):
        app.command(func.__name__)(func)
