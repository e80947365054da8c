"""`gpucloud deploy container|vm|baremetal`, and `--wait` with its spinner."""

from __future__ import annotations

from typing import Optional

import typer

from gpucloud.cli.config import ClientConfig
from gpucloud.cli.options import connected, parse_env, parse_port, read_ssh_key
from gpucloud.cli.output import console, fail, fields, print_json
from gpucloud.client import Client, Instance, models, ssh_command
from gpucloud.client.instances import ACTIVE

app = typer.Typer(help="Deploy an instance from a plan (see `gpucloud plans`).",
                  no_args_is_help=True)

WAIT_HELP = "Wait until ACTIVE (or FAILED), then print how to connect"
# Shared by every deploy command.
WAIT_OPT = typer.Option(False, "--wait", help=WAIT_HELP)
TIMEOUT_OPT = typer.Option(None, "--timeout", help="Give up waiting after this many seconds")
JSON_OPT = typer.Option(False, "--json", help="JSON output")


def registry_host(image: str) -> str:
    return "ghcr.io" if image.startswith("ghcr.io/") else "docker.io"


def read_password() -> str:
    password = typer.get_text_stream("stdin").read().strip()
    if not password:
        raise typer.BadParameter("--registry-password-stdin: nothing on stdin")
    return password


def credentials(image: str, user: str | None, password_stdin: bool,
                host: str | None) -> models.Credentials | None:
    if not user and not password_stdin:
        return None
    if not (user and password_stdin):
        raise typer.BadParameter("--registry-user and --registry-password-stdin go together")
    return models.Credentials(host=host or registry_host(image), username=user,
                              password=read_password())


def connection_lines(inst: Instance) -> list[tuple[str, object]]:
    d = inst.details
    pairs: list[tuple[str, object]] = [("id", d.id), ("status", inst.status)]
    ssh = ssh_command(inst)
    if ssh:
        pairs.append(("ssh", ssh))
    net = d.network
    if net:
        pairs.append(("domain", net.domain or d.domain))
        for fp in net.forwarded_ports:
            pairs.append((f"port {fp.port}/{fp.protocol}", f"{net.domain}:{fp.external_port}"))
        if net.uri:
            pairs.append(("uri", net.uri))
    return pairs


def wait_and_report(client: Client, instance_id: str, kind: str, cfg: ClientConfig,
                    timeout: float | None, as_json: bool) -> None:
    """Poll with a spinner; on a terminal the spinner shows the status, elsewhere each status
    change is one line on stderr. FAILED (or ENDED) exits 1."""
    err = console(stderr=True)
    seen: list[str] = []

    def on_status(inst: Instance) -> None:
        status.update(f"[bold]{instance_id}[/]: {inst.status}")
        if not err.is_terminal and (not seen or seen[-1] != inst.status):
            err.print(f"status: {inst.status}")
        seen.append(inst.status)

    with err.status(f"{instance_id}: waiting") as status:
        inst = client.wait(instance_id, kind, interval=cfg.poll_interval, timeout=timeout,
                           on_status=on_status)
    if as_json:
        print_json(inst.details)
    elif inst.status == ACTIVE:
        fields(connection_lines(inst))
    if inst.status != ACTIVE:
        hint = f"; see `gpucloud events {instance_id}`" if kind == "container" else ""
        raise fail(f"instance {instance_id} is {inst.status}{hint}")


def report_created(instance_id: str, as_json: bool) -> None:
    if as_json:
        print_json({"instance_id": instance_id})
    else:
        typer.echo(instance_id)
        console(stderr=True).print(f"Deployed; `gpucloud show {instance_id}` for its status.")


@app.command("container")
@connected
def deploy_container(
    plan_id: str = typer.Argument(..., help="Plan ID from `gpucloud plans container`"),
    name: str = typer.Option(..., "--name", help="Instance name (lowercase, digits, -)"),
    image: str = typer.Option(..., "--image", help="Container image reference"),
    port: list[str] = typer.Option([], "--port", help="PORT or PORT/PROTOCOL (tcp, udp, "
                                   "http), repeatable (default: 22/tcp)"),
    env: list[str] = typer.Option([], "--env", help="NAME=VALUE, repeatable"),
    cmd: Optional[str] = typer.Option(None, "--cmd", help="Startup command"),  # noqa: UP045
    ssh_key: Optional[str] = typer.Option(None, "--ssh-key",  # noqa: UP045
                                          help="Public key, or a file holding it"),
    location: Optional[str] = typer.Option(None, "--location",  # noqa: UP045
                                           help="Country code, e.g. US"),
    registry_user: Optional[str] = typer.Option(None, "--registry-user"),  # noqa: UP045
    registry_password_stdin: bool = typer.Option(False, "--registry-password-stdin",
                                                 help="Read the registry password from stdin"),
    registry_host_: Optional[str] = typer.Option(  # noqa: UP045
        None, "--registry-host", help="docker.io or ghcr.io (default: from the image)"),
    wait: bool = WAIT_OPT,
    timeout: Optional[float] = TIMEOUT_OPT,  # noqa: UP045
    as_json: bool = JSON_OPT,
    *,
    client: Client,
    cfg: ClientConfig,
) -> None:
    """Deploy a container."""
    expose = [parse_port(p) for p in port] or [{"port": "22", "protocol": "tcp"}]
    settings = models.ContainerSettings(
        image=image, expose=[models.Port(**p) for p in expose],
        environment=[models.EnvVar(**parse_env(e)) for e in env] or None,
        startup_command=cmd,
        credentials=credentials(image, registry_user, registry_password_stdin, registry_host_))
    request = models.ContainerDeploy(
        plan_id=plan_id, name=name, container_settings=settings, ssh_key=read_ssh_key(ssh_key),
        constraints=models.Constraints(location=location) if location else None)
    created = client.deploy_container(request)
    if not wait:
        report_created(created.instance_id, as_json)
        return
    console(stderr=True).print(f"Deployed {created.instance_id}")
    wait_and_report(client, created.instance_id, "container", cfg, timeout, as_json)


def _deploy_machine(kind: str):
    @connected
    def deploy_machine(
        plan_id: str = typer.Argument(..., help=f"Option ID from `gpucloud plans {kind}`"),
        name: str = typer.Option(..., "--name", help="Instance name"),
        ssh_key: str = typer.Option(..., "--ssh-key", help="Public key, or a file holding it"),
        os_image: str = typer.Option(..., "--os", help='e.g. "Ubuntu Server 22.04"'),
        wait: bool = WAIT_OPT,
        timeout: Optional[float] = TIMEOUT_OPT,  # noqa: UP045
        as_json: bool = JSON_OPT,
        *,
        client: Client,
        cfg: ClientConfig,
    ) -> None:
        request = models.VmDeploy(plan_id=plan_id, name=name, ssh_key=read_ssh_key(ssh_key),
                                  os_image=os_image)
        created = client.deploy_vm(request, kind)
        if not wait:
            report_created(created.instance_id, as_json)
            return
        console(stderr=True).print(f"Deployed {created.instance_id}")
        wait_and_report(client, created.instance_id, kind, cfg, timeout, as_json)

    deploy_machine.__doc__ = {"vm": "Deploy a virtual machine.",
                              "baremetal": "Deploy a bare-metal server."}[kind]
    return deploy_machine


app.command("vm")(_deploy_machine("vm"))
app.command("baremetal")(_deploy_machine("baremetal"))

