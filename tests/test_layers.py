"""The package layers of src/gpucloud, checked on the source (an AST walk, no imports run).

Layers point one way: a module may import its own layer and the layers below it, never one
above. Drivers sit below every domain, so that a driver could run inside a provider-side agent;
real drivers do not even reach the database (only the simulated one keeps a table). And no
import of a gpucloud module is placed inside a function, where it would hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "gpucloud"

# Lowest first. A package (first path component under src/gpucloud) may import its own layer
# and every layer listed before it.
LAYERS: list[set[str]] = [
    {"__init__", "settings", "db", "money", "errors", "jsonresp", "common", "secrets",
     "metrics", "request_context", "routing", "params", "bodies", "threads", "pgexec",
     "pgpipe", "pipes", "sqlitepipe", "sqlitereader"},
    {"drivers"},
    {"accounts", "catalog", "billing", "instances", "clock", "idempotency"},  # the domains
    {"workers", "runtime", "models", "migrations", "console"},  # console: pages on the services
    {"admin", "app", "bootstrap", "web", "openapi", "openapi_examples"},
    {"cli"},
]
# The HTTP client ships to people who never run a server: it imports nothing else of ours.
ISOLATED = {"client": {"client"}}
# Real drivers touch no database: the control plane allocates for them (docs/drivers.md).
NO_DATABASE = ("drivers/",)
MAY_USE_DATABASE = ("drivers/simulated/",)
# Imports inside a function that are allowed, with the reason (never a cycle).
LAZY_ALLOWED = {
    # The server stack (FastAPI, SQLAlchemy, uvicorn, docker-py) costs over a second to
    # import; every other `gpucloud` command is a thin HTTP client that must not pay for it.
    ("cli/serve.py", "serve"),
}


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("migrations/versions/"):
            continue
        yield rel, ast.parse(path.read_text(), filename=str(path))


def _package(rel: str) -> str:
    first = rel.split("/")[0]
    return first[:-3] if first.endswith(".py") else first


def _gpucloud_targets(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [node.module]
    elif isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        return []
    out = []
    for name in names:
        parts = name.split(".")
        if parts[0] == "gpucloud":
            out.append(parts[1] if len(parts) > 1 else "__init__")
    return out


def _rank() -> dict[str, int]:
    ranks = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
    ranks.update(dict.fromkeys(ISOLATED, 0))  # anyone may use it; it uses nobody
    return ranks


def test_every_package_has_a_layer():
    ranks = _rank()
    unknown = sorted({_package(rel) for rel, _ in _modules()} - set(ranks))
    assert unknown == [], f"packages without a layer in tests/test_layers.py: {unknown}"


def test_imports_point_down_the_layers():
    ranks = _rank()
    violations = []
    for rel, tree in _modules():
        pkg = _package(rel)
        for node in ast.walk(tree):
            for target in _gpucloud_targets(node):
                if target == pkg:
                    continue
                if pkg in ISOLATED:
                    ok = target in ISOLATED[pkg]
                else:
                    ok = target in ranks and ranks[target] <= ranks[pkg]
                if not ok:
                    violations.append(f"{rel}:{node.lineno} imports gpucloud.{target}")
    assert violations == [], "imports against the layers:\n" + "\n".join(violations)


def test_real_drivers_touch_no_database():
    violations = []
    for rel, tree in _modules():
        if not rel.startswith(NO_DATABASE) or rel.startswith(MAY_USE_DATABASE):
            continue
        for node in ast.walk(tree):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.split(".")[0] == "sqlalchemy" or name.startswith("gpucloud.db"):
                    violations.append(f"{rel}:{node.lineno} imports {name}")
    assert violations == [], "a real driver reaches the database:\n" + "\n".join(violations)


def test_no_gpucloud_import_inside_a_function():
    found = []
    for rel, tree in _modules():
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if (rel, fn.name) in LAZY_ALLOWED:
                continue
            for node in ast.walk(fn):
                if _gpucloud_targets(node):
                    found.append(f"{rel}:{node.lineno} (in {fn.name})")
    assert found == [], "gpucloud imports inside functions:\n" + "\n".join(found)


def test_the_checks_catch_a_violation(tmp_path):
    """The walk itself works: a driver importing a domain, inside a function, is seen."""
    tree = ast.parse("def f():\n    from gpucloud.instances import service\n")
    (fn,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    targets = [t for node in ast.walk(fn) for t in _gpucloud_targets(node)]
    assert targets == ["instances"]
    assert _rank()["instances"] > _rank()["drivers"]
