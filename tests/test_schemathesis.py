"""Schemathesis over the whole OpenAPI document, against the real server on each database
(issue 14): examples, coverage, fuzzing, and stateful runs along the document's links, with
the API key and the admin key both sent, so every operation is reached with valid
credentials. Nothing may answer 5xx, and every answer must match what the document says it
answers (status code, content type, headers and body schema).

Schemathesis runs as its own process (its command line), over HTTP, for a bounded time; the
seed is fixed, so a failure reproduces with the command line it prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.factories import SSH_ED25519

ST = str(Path(sys.executable).parent / "st")
CHECKS = ",".join([
    # no 5xx, and every answer as documented
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance",
    # a request without its key is refused; a deleted thing stays gone, a created one is there
    "ignored_auth", "use_after_free", "ensure_resource_availability",
    "missing_required_header", "unsupported_method"])
# Seconds per database for each run: the generated phases, then the stateful one on its own
# (sharing one budget, a slow machine spent it all before the stateful phase began).
# Raise them to search longer.
SECONDS = int(os.environ.get("GPUCLOUD_TEST_SCHEMATHESIS_SECONDS", "12"))
STATEFUL_SECONDS = int(os.environ.get("GPUCLOUD_TEST_SCHEMATHESIS_STATEFUL_SECONDS", "8"))


@pytest.fixture
def settings_overrides():
    # The production clock: POST /admin/clock is then a documented 400, as it is in service
    # (moving a manual clock by ten years, billing every hour of them, is a test tool's cost).
    return {"clock": "system"}


@pytest.fixture
def world(api):
    account_id, headers = api.account(balance="100000")
    pid = api.provider(name="dc", provision_seconds=1)
    container = api.offer(pid)
    vm = api.offer(pid, workload="vm")
    metal = api.offer(pid, workload="baremetal")
    api.deploy(headers, container)
    api.deploy_vm(headers, vm, ssh_key=SSH_ED25519)
    api.deploy_vm(headers, metal, kind="baremetal", ssh_key=SSH_ED25519)
    return headers["X-API-KEY"]


def _operations(url: str) -> int:
    """How many operations the served OpenAPI document declares."""
    doc = httpx.get(f"{url}/gpu/api-docs/openapi.json", timeout=30).json()
    return sum(1 for item in doc["paths"].values() for method in item
               if method in {"get", "put", "post", "delete", "patch"})


def _schemathesis(url: str, key: str, admin_key: str, phases: str, seconds: int,
                  cwd: Path) -> str:
    command = [
        ST, "run", f"{url}/gpu/api-docs/openapi.json",
        "-H", f"X-API-KEY: {key}", "-H", f"Authorization: Bearer {key}",
        "-H", f"X-ADMIN-KEY: {admin_key}", "--generation-with-security-parameters", "false",
        "--checks", CHECKS, "--phases", phases, "--max-time", str(seconds), "--workers", "1",
        "--seed", "14", "--generation-database", "none", "--no-color",
        "--request-timeout", "30",
    ]
    run = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    print(output[-20_000:])
    assert run.returncode == 0, output[-20_000:]
    n = _operations(url)
    assert n > 40 and f"Selected: {n}/{n}" in output  # it read the whole document
    return output


def test_the_whole_openapi_holds_under_schemathesis(api, world, live_server, tmp_path):
    admin_key = api.admin["X-ADMIN-KEY"]
    out = _schemathesis(live_server.url, world, admin_key, "examples,coverage,fuzzing",
                        SECONDS, tmp_path)
    assert "Examples" in out and "Fuzzing" in out
    out = _schemathesis(live_server.url, world, admin_key, "stateful", STATEFUL_SECONDS,
                        tmp_path)
    assert "Stateful" in out and "Scenarios:    0\n" not in out
    # And the books still hold after whatever it did.
    audit = api.client.get("/admin/audit", headers=api.admin).json()
    assert audit["ok"], audit
