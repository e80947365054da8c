"""The `gpucloud` CLI against a live server (SQLite and PostgreSQL): tables and --json, --wait
on the manual clock, --follow, profiles, admin commands, and the server's errors as one line
with the right exit code (2 usage, 1 API)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import pytest
import simplejson
from typer.testing import CliRunner

from gpucloud.cli.main import app
from tests.conftest import ADMIN_KEY
from tests.factories import SSH_ED25519
from tests.test_client import market, ticking, user  # noqa: F401 - fixtures

ENV_VARS = ("GPUCLOUD_URL", "GPUCLOUD_API_KEY", "GPUCLOUD_ADMIN_KEY", "GPUCLOUD_PROFILE",
            "GPUCLOUD_POLL_INTERVAL")
GPUCLOUD_BIN = Path(sys.executable).parent / "gpucloud"


class Cli:
    def __init__(self, url: str, key: str, config_dir: Path):
        self.url = url
        self.key = key
        self.env = {"GPUCLOUD_CONFIG_DIR": str(config_dir), **{v: None for v in ENV_VARS}}
        self.runner = CliRunner()

    def __call__(self, *args: str, key: str | None = "", admin: bool = False,
                 conn: bool = True, input: str | None = None, code: int | None = 0):
        argv = list(args)
        if conn:
            argv += ["--url", self.url, "--poll-interval", "0.05"]
            if admin:
                argv += ["--admin-key", ADMIN_KEY]
            elif key is not None:
                argv += ["--api-key", key or self.key]
        result = self.runner.invoke(app, argv, env=self.env, input=input)
        if code is not None:
            assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr,
                                              result.exception)
        return result

    def json(self, *args: str, **kwargs):
        return simplejson.loads(self(*args, "--json", **kwargs).stdout, use_decimal=True)


@pytest.fixture
def cli(live_server, user, tmp_path) -> Cli:  # noqa: F811
    return Cli(live_server.url, user["key"], tmp_path / "config")


def deploy_active(cli: Cli, plan_id: str, *extra: str) -> str:
    with ticking(cli.url):
        out = cli.json("deploy", "container", plan_id, "--name", "box", "--image",
                       "docker.io/library/ubuntu:22.04", "--port", "22/tcp", "--port", "80/http",
                       "--ssh-key", SSH_ED25519, "--wait", *extra)
    assert out["instance_status"] == "ACTIVE"
    return out["id"]


# -- plans ---------------------------------------------------------------------------------------
def test_plans_table_json_and_filters(cli, market):  # noqa: F811
    table = cli("plans").stdout
    order = [market[k] for k in ("cheap", "vm", "h100", "bm")]
    positions = [table.index(i) for i in order]
    assert positions == sorted(positions)  # sorted by price
    for header in ("Model", "VRAM", "Interface", "GPUs", "vCPU", "RAM GiB", "Disk GiB",
                   "Location", "Provider", "Price/h", "OS options"):
        assert header in table
    assert "Ubuntu Server 22.04" in table and "0.75" in table

    rows = cli.json("plans")
    assert [r["id"] for r in rows] == order
    assert rows[0]["price_hour"] == Decimal("0.75") and rows[0]["type"] == "container"
    assert [r["id"] for r in cli.json("plans", "vm")] == [market["vm"]]
    assert [r["id"] for r in cli.json("plans", "--gpu", "h100", "--max-price", "3")] == \
        [market["h100"]]
    assert [r["id"] for r in cli.json("plans", "--count", "8")] == [market["bm"]]
    assert [r["id"] for r in cli.json("plans", "container", "--location", "DE")] == \
        [market["cheap"]]
    bad = cli("plans", "gpu-farm", code=2)
    assert "gpu-farm" in bad.stderr


def test_default_images(cli, demo):
    images = cli.json("images")
    assert images and all(i["image"] and i["slug"] for i in images)
    table = cli("images").stdout
    assert all(i["slug"] in table for i in images)


# -- deploy, show, ls ----------------------------------------------------------------------------
def test_deploy_container_wait_reaches_active(cli, market, api):  # noqa: F811
    with ticking(cli.url):
        r = cli("deploy", "container", market["cheap"], "--name", "web", "--image",
                "docker.io/library/ubuntu:22.04", "--port", "22/tcp", "--port", "80/http",
                "--env", "MODEL=llama", "--cmd", "sleep infinity", "--ssh-key", SSH_ED25519,
                "--location", "DE", "--wait")
    assert "status: ACTIVE" in r.stderr
    [instance] = cli.json("ls")
    details = cli.json("show", instance["id"])
    ext = {str(p["port"]): p["external_port"] for p in details["network"]["forwarded_ports"]}
    assert f"ssh -p {ext['22']} root@{details['domain']}" in r.stdout
    assert details["location"] == "DE" and details["type"] == "container"
    env = {e["name"]: e["value"] for e in details["container_info"]["environment"]}
    assert env["MODEL"] == "llama" and env["SSH_PUBKEY"] == SSH_ED25519
    assert details["billing"]["hourly_usage"] == Decimal("0.75")

    shown = cli("show", instance["id"]).stdout
    assert "ACTIVE" in shown and "docker.io/library/ubuntu:22.04" in shown and "ssh -p" in shown
    listed = cli("ls").stdout
    assert instance["id"] in listed and "web" in listed and "ACTIVE" in listed


def test_deploy_vm_and_baremetal(cli, market, tmp_path):  # noqa: F811
    key_file = tmp_path / "id.pub"
    key_file.write_text(SSH_ED25519 + "\n")
    with ticking(cli.url):
        r = cli("deploy", "vm", market["vm"], "--name", "vm1", "--ssh-key", str(key_file),
                "--os", "Ubuntu Server 22.04", "--wait")
    vm_id = cli.json("ls", "--type", "vm")[0]["id"]
    vm = cli.json("show", vm_id)
    assert vm["type"] == "vm" and vm["ssh_key"] == SSH_ED25519
    assert vm["ssh_connection"] and vm["ssh_connection"] in r.stdout

    bm_id = cli("deploy", "baremetal", market["bm"], "--name", "bm1", "--ssh-key", SSH_ED25519,
                "--os", "Ubuntu Server 24.04").stdout.strip()
    assert cli.json("show", bm_id)["status"] == "INITIALIZED"
    assert {i["type"] for i in cli.json("ls")} == {"vm", "baremetal"}

    cli("rename", vm_id, "vm-two")
    assert cli.json("show", vm_id)["name"] == "vm-two"
    r = cli("logs", vm_id, code=1)
    assert r.stderr.startswith("error: logs are only available for containers")


def test_wait_reports_failed_provisioning(cli, api):
    pid = api.provider("flaky", fail_provisioning=True)
    offer = api.offer(pid, price="1")
    with ticking(cli.url):
        r = cli("deploy", "container", offer, "--name", "doomed", "--image",
                "docker.io/library/ubuntu:22.04", "--wait", code=1)
    assert "is FAILED" in r.stderr.splitlines()[-1]
    assert r.stderr.splitlines()[-1].startswith("error: instance ")
    assert cli.json("account")["balance"] == Decimal(100)  # the reserve came back


def test_ls_hides_finished_and_rm(cli, market, api):  # noqa: F811
    iid = deploy_active(cli, market["cheap"])
    refused = cli("rm", iid, input="n\n", code=1)
    assert "Terminate container" in refused.stdout
    assert cli.json("show", iid)["instance_status"] == "ACTIVE"
    cli("rm", iid, "--yes")
    assert cli.json("show", iid)["instance_status"] == "ENDED"
    assert cli.json("ls") == []
    assert [i["id"] for i in cli.json("ls", "--all")] == [iid]
    r = cli("rm", iid, "--yes", code=1)  # only ACTIVE instances can be terminated
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


# -- logs, events, update ------------------------------------------------------------------------
def test_logs_events_and_follow(cli, market):  # noqa: F811
    iid = deploy_active(cli, market["cheap"])
    events = cli("events", iid).stdout.splitlines()
    assert len(events) >= 2
    assert cli("events", iid, "--last", "1").stdout.splitlines() == events[-1:]
    before = cli("logs", iid).stdout.splitlines()
    assert before and cli("logs", iid, "--last", "1").stdout.splitlines() == before[-1:]

    # Heartbeat lines come every 10 server minutes: move the clock while --follow polls.
    with ticking(cli.url, step=300, every=0.05):
        r = cli("logs", iid, "--follow", "--max-seconds", "2")
    followed = r.stdout.splitlines()
    assert followed[:len(before)] == before
    assert len(followed) > len(before) + 1
    # Each line once, in order, none skipped (the clock may have moved on after the last poll).
    assert followed == cli("logs", iid).stdout.splitlines()[:len(followed)]

    # --follow ends by itself once the instance ends.
    done = threading.Event()

    def terminate_soon() -> None:
        done.wait(0.5)
        cli("rm", iid, "--yes")

    killer = threading.Thread(target=terminate_soon)
    killer.start()
    r = cli("logs", iid, "-f")
    done.set()
    killer.join()
    assert "instance is ENDED" in r.stderr


def test_update_and_rename_container(cli, market):  # noqa: F811
    iid = deploy_active(cli, market["cheap"])
    cli("update", iid, "--image", "docker.io/library/ubuntu:24.04", "--env", "B=2",
        "--cmd", "python3 serve.py")
    # The clock has not moved, so the first update is still being applied: a second is refused.
    again = cli("update", iid, "--env", "C=3", code=1)
    assert again.stderr.startswith("error: ") and len(again.stderr.splitlines()) == 1
    with ticking(cli.url):
        for _ in range(400):
            d = cli.json("show", iid)
            if d["container_info"]["image"] == "docker.io/library/ubuntu:24.04":
                break
    info = d["container_info"]
    env = {e["name"]: e["value"] for e in info["environment"]}
    assert info["image"] == "docker.io/library/ubuntu:24.04" and env["B"] == "2"
    assert env["SSH_PUBKEY"] == SSH_ED25519  # kept across the update
    assert info["startup_command"] == "python3 serve.py"
    assert {str(p["port"]) for p in info["expose"]} == {"22", "80"}
    with ticking(cli.url):
        for _ in range(400):
            if cli("rename", iid, "renamed", code=None).exit_code == 0:
                break
    with ticking(cli.url):
        for _ in range(400):
            if cli.json("show", iid)["name"] == "renamed":
                break
    assert cli.json("show", iid)["name"] == "renamed"


# -- money ---------------------------------------------------------------------------------------
def test_account_and_transactions(cli, market, user):  # noqa: F811
    acct = cli.json("account")
    assert acct == {"id": user["id"], "name": "alice", "balance": Decimal(100),
                    "reserved": Decimal(0), "spent": Decimal(0)}
    assert "100.00" in cli("account").stdout
    deploy_active(cli, market["cheap"])
    acct = cli.json("account")
    assert acct["spent"] == Decimal("0.75") and acct["reserved"] == Decimal("1.5")
    page = cli.json("transactions", "--limit", "2")
    assert [t["kind"] for t in page["items"]] == ["charge", "reserve"]
    assert page["next_cursor"]
    table = cli("transactions").stdout
    assert "deposit" in table and "charge" in table and "2.25" in table


# -- configuration -------------------------------------------------------------------------------
def test_login_profile_and_env(cli, market, user, tmp_path):  # noqa: F811
    r = cli("login", "--url", cli.url, "--api-key", user["key"], conn=False)
    assert "alice" in r.stderr
    path = Path(cli.env["GPUCLOUD_CONFIG_DIR"]) / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert user["key"] in path.read_text()
    assert cli.json("account", conn=False)["id"] == user["id"]  # from the profile alone
    # An env var beats the profile; a flag beats the env var.
    cli.env["GPUCLOUD_API_KEY"] = "gpc_bogus"
    assert cli("account", conn=False, code=1).stderr.startswith("error: ")
    assert cli.json("account", "--api-key", user["key"], conn=False)["id"] == user["id"]
    bad = cli("login", "--url", cli.url, "--api-key", "gpc_bogus", "--profile", "x", conn=False,
              code=1)
    assert bad.stderr.startswith("error: ") and "[profiles.x]" not in path.read_text()
    assert cli("account", "--profile", "nope", conn=False, code=2).stderr.startswith("error: ")


# -- errors --------------------------------------------------------------------------------------
def test_errors_print_server_message_and_exit_code(cli, market, api):  # noqa: F811
    base = ["deploy", "container", market["cheap"], "--name", "box", "--image",
            "docker.io/library/ubuntu:22.04"]
    r = cli(*base, "--port", "70000/tcp", code=1)
    assert r.stderr == ("error: body.container_settings.expose.0.port: "
                        "Value error, Port must be between 1 and 65535\n")
    r = cli(*base, "--port", "22/xyz", code=2)
    assert "22/xyz" in r.stderr
    assert cli(*base, "--env", "NOEQUALS", code=2).stderr
    r = cli("deploy", "container", "no-such-plan", "--name", "box", "--image", "x/y", code=1)
    assert r.stderr.startswith("error: ") and ("Plan" in r.stderr or "not found" in r.stderr)
    _, poor = api.account(1, name="poor")
    r = cli(*base, key=poor["X-API-KEY"], code=1)
    assert r.stderr == "error: Insufficient balance to deploy instance\n"
    r = cli("deploy", "vm", market["vm"], "--name", "v", "--ssh-key", SSH_ED25519, "--os",
            "Windows", code=1)
    assert r.stderr.startswith("error: Provided OS image Windows is not supported")
    r = cli("show", "00000000-0000-0000-0000-000000000000", code=1)
    assert r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1
    r = cli("account", key="gpc_wrong", code=1)
    assert r.stderr.startswith("error: ")
    r = cli("account", key=None, code=2)
    assert "no API key" in r.stderr
    r = cli("account", "--url", "http://127.0.0.1:9", "--api-key", "x", conn=False, code=1)
    assert "cannot reach" in r.stderr


# -- operator ------------------------------------------------------------------------------------
def test_admin_commands(cli, market, tmp_path):  # noqa: F811
    created = cli.json("admin", "accounts", "create", "carol", "--balance", "5.5", admin=True)
    assert created["balance"] == Decimal("5.5") and created["api_key"]
    table = cli("admin", "accounts", "create", "dave", admin=True).stdout
    assert "api_key" in table
    acct = cli.json("admin", "accounts", "deposit", created["id"], "0.000001", admin=True)
    assert acct["balance"] == Decimal("5.500001")
    assert "5.500001" in cli("admin", "accounts", "show", created["id"], admin=True).stdout
    assert cli("admin", "accounts", "deposit", created["id"], "lots", admin=True, code=2)
    r = cli("admin", "accounts", "show", created["id"], code=2)  # no admin key
    assert "no admin key" in r.stderr

    key = cli.json("admin", "keys", "create", created["id"], "--expires", "30d", admin=True)
    assert key["expires_at"].startswith("2026-02-04")  # 30 days on the server's manual clock
    iso = cli.json("admin", "keys", "create", created["id"], "--expires", "2026-03-01T00:00:00Z",
                   admin=True)
    assert iso["expires_at"] == "2026-03-01T00:00:00Z"
    assert "soon" in cli("admin", "keys", "create", created["id"], "--expires", "soon",
                         admin=True, code=2).stderr
    assert cli.json("account", key=key["api_key"])["id"] == created["id"]
    cli("admin", "keys", "revoke", key["id"], admin=True)
    assert cli("account", key=key["api_key"], code=1).stderr.startswith("error: ")

    config = tmp_path / "sim.yaml"
    config.write_text("provision_seconds: 2\n")
    pid = cli("admin", "providers", "add", "other", "--driver", "simulated", "--config",
              str(config), admin=True).stdout.strip()
    provider = [p for p in cli.json("admin", "providers", "ls", admin=True) if p["id"] == pid]
    assert provider[0]["config"]["provision_seconds"] == 2
    r = cli("admin", "providers", "add", "x", "--driver", "simulated", "--config",
            '{"warp": 9}', admin=True, code=1)
    assert r.stderr.startswith("error: ") and "warp" in r.stderr
    oid = cli("admin", "offers", "add", "--provider", pid, "--workload", "container", "--gpu",
              "l40s", "--vram", "48Gi", "--interface", "pcie", "--vcpu", "8", "--memory", "64",
              "--storage", "100", "--price", "0.5", "--capacity", "2", "--country", "FR",
              admin=True).stdout.strip()
    assert cli.json("plans", "--gpu", "l40s")[0]["id"] == oid
    assert oid in cli("admin", "offers", "ls", admin=True).stdout
    cli("admin", "offers", "disable", oid, admin=True)
    assert cli.json("plans", "--gpu", "l40s") == []
    cli("admin", "offers", "enable", oid, admin=True)
    cli("admin", "offers", "set", oid, "--price", "0.45", admin=True)
    assert cli.json("plans", "--gpu", "l40s")[0]["price_hour"] == Decimal("0.45")
    cli("admin", "providers", "disable", pid, admin=True)
    assert cli.json("plans", "--gpu", "l40s") == []
    cli("admin", "providers", "enable", pid, admin=True)
    assert len(cli.json("plans", "--gpu", "l40s")) == 1

    assert cli("admin", "clock", "show", admin=True).stdout.strip() == "2026-01-05T10:00:00Z"
    assert cli("admin", "clock", "advance", "3600", admin=True).stdout.strip() == \
        "2026-01-05T11:00:00Z"


def test_catalog_import(cli, tmp_path):
    doc = tmp_path / "catalog.yaml"
    doc.write_text(CATALOG_YAML)
    summary = cli.json("admin", "catalog", "import", str(doc), admin=True)
    assert summary["providers_created"] == 1 and summary["offers_created"] == 2
    again = cli("admin", "catalog", "import", str(doc), admin=True).stdout
    assert "offers_updated" in again  # idempotent: the second run updates
    plans = cli.json("plans")
    assert {p["price_hour"] for p in plans} == {Decimal("2.123457"), Decimal("1.07")}
    assert {p["model"] for p in plans} == {"h100", "a100"}
    assert {p["type"] for p in plans} == {"container", "vm"}
    assert "h100" in cli("plans").stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [\n")
    assert cli("admin", "catalog", "import", str(bad), admin=True, code=2).stderr


CATALOG_YAML = """\
providers:
  - name: yaml-sim
    driver: simulated
    config: {provision_seconds: 3}
offers:
  - provider: yaml-sim
    workload: container
    gpu: {vendor: nvidia, model: h100, vram: 80Gi, interface: SXM}
    gpu_count: 1
    vcpu: 16
    memory_gib: 128
    storage_gib: 200
    price_hour: 2.123457
    countries: [US]
    capacity: 4
  - provider: yaml-sim
    workload: vm
    gpu: {vendor: nvidia, model: a100, vram: 80Gi, interface: pcie}
    gpu_count: 1
    vcpu: 14
    memory_gib: 93
    storage_gib: 582
    price_hour: 1.07
    location: us-central-3
    country: US
    capacity: 2
    os_options: [Ubuntu Server 22.04]
"""


# -- the real executable -------------------------------------------------------------------------
def test_installed_executable(live_server, market, user, tmp_path):  # noqa: F811
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(GPUCLOUD_CONFIG_DIR=str(tmp_path), GPUCLOUD_URL=live_server.url,
               GPUCLOUD_API_KEY=user["key"])
    run = subprocess.run([str(GPUCLOUD_BIN), "plans", "container", "--json"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    rows = simplejson.loads(run.stdout, use_decimal=True)
    assert [r["id"] for r in rows] == [market["cheap"], market["h100"]]
    assert rows[1]["price_hour"] == Decimal("2.96")
    run = subprocess.run([str(GPUCLOUD_BIN), "deploy", "container", market["h100"], "--name",
                          "x", "--image", "docker.io/library/ubuntu:22.04", "--port", "0"],
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1
    assert run.stderr == ("error: body.container_settings.expose.0.port: "
                          "Value error, Port must be between 1 and 65535\n")
    run = subprocess.run([str(GPUCLOUD_BIN), "ls", "--bogus"], env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 2
