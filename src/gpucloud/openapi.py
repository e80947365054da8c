"""The OpenAPI document: FastAPI's generated one, finished in one place.

FastAPI derives paths, parameters and schemas from the routes. What it cannot know is written
here, for every operation at once, so no route can forget it:

- the security schemes (an API key as `X-API-KEY` or `Authorization: Bearer` under `/gpu`, the
  admin key under `/admin`), declared per operation so Swagger UI's Authorize button covers all;
- the error responses each operation can give (400, 403, 404, 422, and the limits' 413, 415,
  429) with real error bodies;
- a description of every operation, and examples taken from real responses;
- links from a deploy's `instance_id` to the operations on that instance, so tools (Swagger UI,
  schemathesis' stateful tests, client generators) can follow one to the other.

The document is built once per app and cached by FastAPI.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gpucloud import openapi_examples as ex
from gpucloud.errors import INSTANCE_NOT_FOUND, INSUFFICIENT_BALANCE, PLAN_UNAVAILABLE

SCHEMES: dict[str, dict[str, Any]] = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-KEY",
               "description": "Your API key (`gpc_…`), issued by the operator."},
    "Bearer": {"type": "http", "scheme": "bearer",
               "description": "The same API key as `Authorization: Bearer <key>`. When both "
                              "headers are sent they must name the same key."},
    "AdminKey": {"type": "apiKey", "in": "header", "name": "X-ADMIN-KEY",
                 "description": "The operator's admin key."},
}
PUBLIC_SECURITY = [{"ApiKey": []}, {"Bearer": []}]
ADMIN_SECURITY = [{"AdminKey": []}]
_AUTH_HEADERS = {"x-api-key", "x-admin-key", "authorization"}

ERROR_SCHEMA = {"title": "ErrorMessage", "type": "object", "required": ["detail"],
                "properties": {"detail": {"type": "string", "title": "Detail"}}}
_ERROR_REF = {"$ref": "#/components/schemas/ErrorMessage"}

PORT_422 = {"detail": [{
    "type": "value_error", "loc": ["body", "container_settings", "expose", 0, "port"],
    "msg": "Value error, Port must be between 1 and 65535", "input": "0",
    "ctx": {"error": {}}}]}

# What a path parameter that names nothing answers.
NOT_FOUND = {"instance_id": INSTANCE_NOT_FOUND, "account_id": "Account not found",
             "key_id": "API key not found", "provider_id": "Provider not found",
             "offer_id": "Offer not found", "machine_id": "Machine not found"}

INVENTORY_422 = {"detail": [{
    "type": "value_error", "loc": ["machine"], "input": "node3",
    "msg": "Machine node3 reports 32 CPUs; the offer says 64 (offer 5f0c…, field vcpu)"}]}

# What an id in a body that names nothing answers.
BODY_NOT_FOUND = {"adminCreateOffer": "Provider not found"}

_OS_IMAGE = ("Provided OS image Debian 9 is not supported for the selected offer. "
             "Available OS images: Ubuntu Server 22.04, Ubuntu Server 24.04")
_RENAME_ENDED = "Instance is ENDED; only an INITIALIZED or ACTIVE instance can be renamed"
_TERMINATE = "Only an ACTIVE instance can be terminated"

# The business errors (400) of each operation, as the server words them.
BAD_REQUESTS: dict[str, list[str]] = {
    "deployContainer": [INSUFFICIENT_BALANCE, PLAN_UNAVAILABLE,
                        "Location DE is not available for this plan. Available locations: US"],
    "updateContainer": ["Only an ACTIVE instance can be updated",
                        "An update of this instance is still being applied"],
    "terminateContainer": [_TERMINATE],
    "getContainerLogs": ["Logs are temporarily unavailable from the provider"],
    "adminCreateProvider": ["Provider massed-compute already exists"],
    "adminDeposit": ["Deposit amount must be positive"],
    "adminImportCatalog": ["The catalog changed concurrently; apply the document again"],
    "adminWipeMachine": ["Machine node3 is free: only a machine in maintenance can be wiped "
                         "again"],
    "adminReturnMachine": ["Machine node3 is rented: only a machine in maintenance can be "
                           "returned to service"],
    "adminGetConsole": ["Containers have no console; read GET /gpu/instances/{id}/logs",
                        "The console is temporarily unavailable from the provider"],
    "adminMoveClock": ["The clock cannot move backwards",
                       "The clock can only be moved when the server runs with "
                       "GPUCLOUD_CLOCK=manual"],
}
for _kind in ("VM", "Baremetal"):
    BAD_REQUESTS[f"deploy{_kind}"] = [INSUFFICIENT_BALANCE, PLAN_UNAVAILABLE, _OS_IMAGE]
    BAD_REQUESTS[f"rename{_kind}"] = [_RENAME_ENDED]
    BAD_REQUESTS[f"terminate{_kind}"] = [_TERMINATE]

# Real responses (gpucloud/openapi_examples.py) for the operations whose models carry none.
EXAMPLES: dict[str, Any] = {
    "listContainers": ex.CONTAINER_LIST, "getContainer": ex.CONTAINER,
    "getContainerLogs": ex.LOGS, "getContainerEvents": ex.EVENTS,
    "listVMs": ex.VM_LIST, "getVM": ex.VM,
    "listBaremetals": [{**ex.VM_LIST[0], "location": "helsinki-fi-2"}],
    "getBaremetal": {**ex.VM, "availability": "baremetal",
                     "ssh_connection": "ssh root@203.0.113.7"},
    "getAccount": ex.ACCOUNT, "listAccountTransactions": ex.TRANSACTIONS,
    "adminCreateAccount": ex.ACCOUNT_CREATED, "adminGetAccount": ex.ADMIN_ACCOUNT,
    "adminDeposit": ex.ADMIN_ACCOUNT, "adminListProviders": [ex.PROVIDER],
    "adminCreateProvider": ex.PROVIDER, "adminPatchProvider": ex.PROVIDER,
    "adminListOffers": [ex.OFFER], "adminGetOffer": ex.OFFER, "adminCreateOffer": ex.OFFER,
    "adminPatchOffer": ex.OFFER, "adminAudit": ex.AUDIT,
    "deployContainer": {"instance_id": ex.CONTAINER["id"]},
    "deployVM": {"instance_id": ex.VM["id"]},
    "deployBaremetal": {"instance_id": ex.VM["id"]},
}

_UPFRONT = ("The account must hold 3 hours of the plan's price; that amount moves into the "
            "instance's reserve at once (400 `Insufficient balance to deploy instance`). ")
_VM = ("`os_image` must be one of the option's `os_options` and `ssh_key` is required. " + _UPFRONT
       + "The instance starts INITIALIZED and becomes ACTIVE once the provider reports it "
       "reachable.")
_ONLY_OWN = "Another account's instance answers 404 exactly like an unknown id."

DESCRIPTIONS: dict[str, str] = {
    "listContainerPlans": "Container plans that can be deployed now (enabled offers with free "
    "capacity), cheapest first. `attributes.location` lists the countries with free capacity. "
    "The GPU interface is upper case here. Query parameters are optional filters.",
    "listVmPlans": "VM options that can be deployed now, grouped by GPU model, then by GPU "
    "count; options sorted by price. The GPU interface is lower case. Filters are optional.",
    "listBaremetalPlans": "Bare-metal options that can be deployed now, grouped like the VM "
    "plans. Filters are optional.",
    "listDefaultImages": "Ready-made container images (an SSH-ready Debian, CUDA/PyTorch, "
    "Jupyter…) with the ports and environment they need.",
    "deployContainer": "Deploy a container from a plan. Every field rule is a 422 pointing at "
    "the field; `SSH_PUBKEY` is reserved when `ssh_key` is given. " + _UPFRONT
    + "Answers 201 with the instance id; provisioning runs in the background.",
    "listContainers": "The account's containers, newest first, ended and failed ones included. "
    "`domain` is null unless the instance is ACTIVE.",
    "getContainer": "A container with its configuration in effect, billing and network "
    "(forwarded ports as strings; `network` is null unless ACTIVE). " + _ONLY_OWN,
    "updateContainer": "Replace the container's name, image, environment, startup command and "
    "registry credentials; `expose` cannot change. Only an ACTIVE instance, one update at a "
    "time (400 otherwise); the new configuration shows once the container is redeployed.",
    "terminateContainer": "Terminate an ACTIVE container: the workload is removed, the status "
    "becomes ENDED and the unspent reserve returns to the balance (the charged hour is kept).",
    "getContainerLogs": "The container's stdout/stderr lines, oldest first; `last` keeps the "
    "last N.",
    "getContainerEvents": "Lifecycle events (gpucloud's and the provider's), oldest first, each "
    "a readable line with its time; `last` keeps the last N.",
    "getAccount": "The caller's account: balance, amount held in reserves, total charged.",
    "listAccountTransactions": "The caller's ledger entries, newest first, in pages of `limit`; "
    "pass `next_cursor` as `cursor` for older ones.",
    "adminCreateAccount": "Create an account with an optional opening balance (a deposit). The "
    "API key in the answer is shown only here.",
    "adminGetAccount": "An account's balance, reserved and spent amounts.",
    "adminDeposit": "Add funds to an account (a ledger entry); answers the account. Retries a "
    "pending reserve top-up at once.",
    "adminCreateApiKey": "Issue another API key for the account, optionally expiring; the key "
    "is shown only in this answer.",
    "adminRevokeApiKey": "Revoke an API key; requests with it answer 403 from now on.",
    "adminAudit": "Check the books: every balance, reserve and spend re-derived from the "
    "ledger. `ok` is false and the failing checks list offending ids when they disagree.",
    "adminListProviders": "Every provider with its driver, its config minus secrets, and the "
    "capacity of its offers in use.",
    "adminCreateProvider": "Register a provider. `driver` names a driver (`simulated`, "
    "`docker`…); its config is validated by the driver (422 on nonsense).",
    "adminPatchProvider": "Enable or disable a provider; a disabled provider's offers leave "
    "the plans.",
    "adminCreateOffer": "Add an offer: one deployable GPU configuration of a provider with a "
    "price per hour and a capacity per country.",
    "adminListOffers": "Every offer with its zones, capacity and use.",
    "adminGetOffer": "One offer with its zones, capacity and use.",
    "adminPatchOffer": "Change an offer's enabled flag, capacity or price. A new price applies "
    "to new deploys; running instances keep theirs.",
    "adminImportCatalog": "Apply a catalog document (providers, offers, default images) in one "
    "transaction; entries are matched by name and updated in place.",
    "adminGetClock": "The server's current time (the manual clock's, when it runs with one).",
    "adminMoveClock": "Manual clock only: move time forward and answer once every lifecycle and "
    "billing step due on the way has run, in order.",
}
for _kind, _path in (("VM", "vms"), ("Baremetal", "baremetal")):
    _what = "VM" if _kind == "VM" else "bare-metal"
    DESCRIPTIONS.update({
        f"deploy{_kind}": f"Deploy a {_what} instance from an option of `/gpu/plans/{_path}`. "
        + _VM,
        f"list{_kind}s": f"The account's {_what} instances, newest first (the field is "
        "`status` here).",
        f"get{_kind}": f"A {_what} instance with its OS image, SSH command (null unless "
        "ACTIVE), billing and network. An instance is reachable only under its own kind's "
        "path. " + _ONLY_OWN,
        f"rename{_kind}": "Rename the instance (only the name changes). An ENDED or FAILED "
        "instance cannot be renamed (400).",
        f"terminate{_kind}": f"Terminate an ACTIVE {_what} instance; the unspent reserve "
        "returns to the balance.",
        f"get{_kind}Events": f"A {_what} instance's lifecycle events (gpucloud's and the "
        "provider's: boot, SSH ready, failures with their reason), oldest first; `last` keeps "
        "the last N. An extension beyond the Fluence API.",
    })
DESCRIPTIONS["adminListMachines"] = (
    "The bare-metal machines of every redfish provider with their state: free, rented (and to "
    "which instance), dirty (released, wipe pending) or maintenance (a wipe failed; the reason "
    "says why). Only free machines are rented out. Each row has its `id` (for the actions "
    "below) and the `inventory` its BMC reported at registration or the last check: `cpus`, "
    "`memory_gib`, `gpus` and `power`, each \"unverified\" when the BMC does not report it.")
DESCRIPTIONS["adminWipeMachine"] = (
    "Wipe a machine in maintenance again: it becomes dirty and the release of its last "
    "instance is scheduled again (power off, wipe image, wait for it to power off). It is "
    "offered again only when that wipe succeeds, and goes back to maintenance with the new "
    "reason if not. 400 for a machine that is not in maintenance.")
DESCRIPTIONS["adminReturnMachine"] = (
    "Return a machine in maintenance to service on the operator's word that it is clean and "
    "healthy (e.g. wiped by hand): it becomes free and counts in its offers' capacity again. "
    "400 for a machine that is not in maintenance.")
DESCRIPTIONS["adminCheckMachineInventory"] = (
    "Read the machine's CPUs, memory, GPUs (GPU-class PCIe devices, where the BMC lists PCIe "
    "devices) and power state from its BMC now, store it, and check it against every offer the "
    "machine serves. A figure below what an offer promises is a 422 naming the machine, the "
    "offer and the field, and a free machine goes to maintenance with that reason; what the BMC "
    "does not report is \"unverified\", never a mismatch.")
DESCRIPTIONS["adminGetConsole"] = (
    "The serial console log of a VM (the driver's capture of the guest's ttyS0), oldest line "
    "first; `last` keeps the last N. For operators diagnosing a guest that never answered SSH.")

_INSTANCE = "$response.body#/instance_id"
LINKS: dict[str, dict[str, str]] = {
    "deployContainer": {"GetContainer": "getContainer", "UpdateContainer": "updateContainer",
                        "TerminateContainer": "terminateContainer",
                        "GetContainerLogs": "getContainerLogs",
                        "GetContainerEvents": "getContainerEvents"},
    "deployVM": {"GetVM": "getVM", "RenameVM": "renameVM", "TerminateVM": "terminateVM"},
    "deployBaremetal": {"GetBaremetal": "getBaremetal", "RenameBaremetal": "renameBaremetal",
                        "TerminateBaremetal": "terminateBaremetal"},
}
ACCOUNT_LINKS = {"GetAccount": "adminGetAccount", "Deposit": "adminDeposit",
                 "CreateApiKey": "adminCreateApiKey"}


def _link(target: str, parameters: dict[str, str] | None = None,
          body: dict[str, str] | None = None) -> dict[str, Any]:
    link: dict[str, Any] = {"operationId": target}
    if parameters:
        link["parameters"] = parameters
    if body:
        link["requestBody"] = body  # the fields named here; tools fill in the rest
    return link


_OPTION = "$response.body#/data/0/availability_by_number/0/options/0"
_FROM_OPTION = {"plan_id": f"{_OPTION}/id", "os_image": f"{_OPTION}/os_options/0"}
# Where the ids that other operations need come from: a plan listed to its deploy, a created
# provider, offer or API key to the operations on it.
MORE_LINKS: dict[str, dict[str, dict[str, Any]]] = {
    "listContainerPlans": {"DeployContainer": _link(
        "deployContainer", body={"plan_id": "$response.body#/0/plan/id"})},
    "listVmPlans": {"DeployVM": _link("deployVM", body=_FROM_OPTION)},
    "listBaremetalPlans": {"DeployBaremetal": _link("deployBaremetal", body=_FROM_OPTION)},
    "adminCreateProvider": {
        "PatchProvider": _link("adminPatchProvider", {"provider_id": "$response.body#/id"}),
        "CreateOffer": _link("adminCreateOffer", body={"provider_id": "$response.body#/id"})},
    "adminCreateOffer": {
        "GetOffer": _link("adminGetOffer", {"offer_id": "$response.body#/id"}),
        "PatchOffer": _link("adminPatchOffer", {"offer_id": "$response.body#/id"})},
    "adminCreateApiKey": {
        "RevokeApiKey": _link("adminRevokeApiKey", {"key_id": "$response.body#/id"})},
}


def _json(example: Any, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    content: dict[str, Any] = {"example": example}
    if schema is not None:
        content["schema"] = schema
    return {"application/json": content}


def _query_422(params: list[dict[str, Any]]) -> dict[str, Any]:
    """What the server answers for a bad value of the operation's first query parameter."""
    param = next(p for p in params if p.get("in") == "query")
    schema = param.get("schema", {})
    schema = next((alt for alt in schema.get("anyOf", []) if alt.get("type") != "null"), schema)
    if "minimum" in schema:
        low = int(schema["minimum"])
        error = {"type": "greater_than_equal", "msg": f"Input should be greater than or "
                 f"equal to {low}", "input": str(low - 1), "ctx": {"ge": low}}
    else:
        longest = int(schema.get("maxLength", 64))
        error = {"type": "string_too_long", "msg": f"String should have at most {longest} "
                 "characters", "input": "x" * (longest + 1), "ctx": {"max_length": longest}}
    return {"detail": [{"loc": ["query", param["name"]], **error}]}


def _body_422(doc: dict[str, Any], op: dict[str, Any]) -> dict[str, Any]:
    """What the server answers for a body missing its first required field, or for a body
    that is not JSON when every field is optional."""
    ref = op["requestBody"]["content"]["application/json"]["schema"].get("$ref", "")
    schema = doc["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {})
    required = schema.get("required", [])
    if required:
        return {"detail": [{"type": "missing", "loc": ["body", required[0]],
                            "msg": "Field required", "input": {}}]}
    return {"detail": [{"type": "json_invalid", "loc": ["body", 0], "msg": "JSON decode error",
                        "input": {}, "ctx": {"error": "Expecting value"}}]}


def _errors(doc: dict[str, Any], path: str, op: dict[str, Any]) -> None:
    responses = op.setdefault("responses", {})
    op_id = op.get("operationId", "")
    admin = path.startswith("/admin")
    responses["403"] = {
        "description": "Missing or invalid admin key" if admin else
        "Missing, unknown, revoked or expired API key",
        "content": _json({"detail": "Invalid admin key" if admin else "Invalid API key"},
                         _ERROR_REF)}
    params = [p["name"] for p in op.get("parameters", []) if p.get("in") == "path"]
    for name in params:
        if name in NOT_FOUND:
            responses["404"] = {"description": NOT_FOUND[name],
                                "content": _json({"detail": NOT_FOUND[name]}, _ERROR_REF)}
    if op_id in BODY_NOT_FOUND:
        responses["404"] = {"description": BODY_NOT_FOUND[op_id],
                            "content": _json({"detail": BODY_NOT_FOUND[op_id]}, _ERROR_REF)}
    if op_id in BAD_REQUESTS:
        messages = BAD_REQUESTS[op_id]
        content = {"schema": _ERROR_REF, "examples": {
            f"e{i}": {"summary": m, "value": {"detail": m}} for i, m in enumerate(messages)}}
        responses["400"] = {"description": "A business rule refused the request",
                            "content": {"application/json": content}}
    # The limits of web/guard.py and gpucloud/bodies.py, which any operation may meet.
    responses["429"] = {"description": "Too many requests from this key or address; retry "
                        "after `Retry-After` seconds",
                        "content": _json({"detail": "Too many requests; slow down"}, _ERROR_REF)}
    if "requestBody" in op:
        responses["413"] = {"description": "The body is larger than the server accepts",
                            "content": _json({"detail": "Request body too large (limit 1048576 "
                                                        "bytes)"}, _ERROR_REF)}
        responses["415"] = {"description": "The body is not sent as application/json",
                            "content": _json({"detail": "Send the request body as "
                                                        "application/json"}, _ERROR_REF)}
    # Path parameters are plain strings (an unknown one is a 404), so only a body or a query
    # can fail validation; FastAPI lists a 422 for path parameters too.
    queries = any(p.get("in") == "query" for p in op.get("parameters", []))
    responses.pop("422", None)
    if op_id == "adminCheckMachineInventory":
        responses["422"] = {
            "description": "The machine's inventory contradicts an offer it serves",
            "content": _json(INVENTORY_422, {"$ref": "#/components/schemas/HTTPValidationError"})}
    elif queries or "requestBody" in op:
        example = PORT_422 if op_id == "deployContainer" else \
            _body_422(doc, op) if "requestBody" in op else _query_422(op["parameters"])
        responses["422"] = {
            "description": "Validation error: one entry per problem, pointing at the field",
            "content": _json(example, {"$ref": "#/components/schemas/HTTPValidationError"})}


def _finish_operation(doc: dict[str, Any], path: str, op: dict[str, Any]) -> None:
    op_id = op.get("operationId", "")
    op["security"] = ADMIN_SECURITY if path.startswith("/admin") else PUBLIC_SECURITY
    # Auth is declared by `security`; a header parameter would duplicate it.
    params = [p for p in op.get("parameters", [])
              if not (p.get("in") == "header" and p.get("name", "").lower() in _AUTH_HEADERS)]
    if params:
        op["parameters"] = params
    else:
        op.pop("parameters", None)
    if op_id in DESCRIPTIONS:
        op["description"] = DESCRIPTIONS[op_id]
    _errors(doc, path, op)
    ok = next((code for code in ("200", "201") if code in op.get("responses", {})), None)
    if ok and op_id in EXAMPLES:
        media = op["responses"][ok].setdefault("content", {}).setdefault("application/json", {})
        media["example"] = EXAMPLES[op_id]
    links = {name: {"operationId": target, "parameters": {"instance_id": _INSTANCE}}
             for name, target in LINKS.get(op_id, {}).items()}
    if op_id == "adminCreateAccount":
        links = {name: {"operationId": target, "parameters": {"account_id": "$response.body#/id"}}
                 for name, target in ACCOUNT_LINKS.items()}
    links.update(MORE_LINKS.get(op_id, {}))
    if ok and links:
        op["responses"][ok]["links"] = links


def build(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=app.routes, tags=app.openapi_tags, servers=app.servers)
    components = doc.setdefault("components", {})
    components["securitySchemes"] = SCHEMES
    components.setdefault("schemas", {})["ErrorMessage"] = ERROR_SCHEMA
    for path, ops in doc.get("paths", {}).items():
        for op in ops.values():
            _finish_operation(doc, path, op)
    return doc


def install(app: FastAPI) -> None:
    """Replace FastAPI's generator; the document is built on first request and kept."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
