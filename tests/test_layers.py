"""The import rule of the tree: a module imports only its own layer or the layers below it.

Layers, bottom up (DESIGN.md): ``pdwire`` (wire formats, no I/O), ``pdmodel`` (the model's
text side), then the components, which never import one another: ``config_server``,
``pdmaster``, ``node_agents`` (the simulated engine is a node: it never imports a master)
and ``benchmark_client``; then ``pdlocal`` (local process launchers) and ``pdcluster`` (the
cluster planner, which builds agent configs), then ``benchmarks``.
Inside ``pdmaster`` the subpackages are layered too (``RANKS``). Imports inside functions
count as well: a late import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "pdwire",
    "pdmodel",
    "config_server",
    "pdmaster",
    "node_agents",
    "benchmark_client",
    "pdlocal",
    "pdcluster",
    "benchmarks",
)

# (rank, group): a module may import a module of a lower rank, or of its own rank and group.
RANKS: dict[str, tuple[int, str]] = {
    "pdwire": (0, "pdwire"),
    "pdmodel": (1, "pdmodel"),
    "config_server": (2, "config_server"),
    "node_agents": (2, "node_agents"),
    "benchmark_client": (2, "benchmark_client"),
    # pdmaster, bottom up; one group each, so a lower one never reaches up.
    "pdmaster.errors": (2, "pdmaster.errors"),
    "pdmaster.nodes": (3, "pdmaster.nodes"),
    "pdmaster.routing": (4, "pdmaster.routing"),
    "pdmaster.dispatch": (5, "pdmaster.dispatch"),
    "pdmaster.metrics": (6, "pdmaster.metrics"),
    "pdmaster.settings": (7, "pdmaster.settings"),
    "pdmaster.cluster": (8, "pdmaster.cluster"),
    "pdmaster.api": (9, "pdmaster.api"),
    "pdmaster": (10, "pdmaster"),  # app, cli, __main__
    "pdlocal": (11, "pdlocal"),
    "pdcluster": (11, "pdcluster"),
    "benchmarks": (12, "benchmarks"),
}


def rank_of(module: str) -> tuple[int, str]:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        found = RANKS.get(".".join(parts[:n]))
        if found is not None:
            return found
    raise KeyError(module)


def ours(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


COMPONENTS = {"config_server", "pdmaster", "node_agents", "benchmark_client"}


def may_import(importer: str, imported: str) -> bool:
    top_importer, top_imported = importer.split(".")[0], imported.split(".")[0]
    if {top_importer, top_imported} <= COMPONENTS and top_importer != top_imported:
        return False  # components are peers
    (low, low_group), (high, high_group) = rank_of(imported), rank_of(importer)
    return low < high or (low == high and low_group == high_group)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if ours(name)]


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    assert [module_name(p) for p in modules() if not _has_rank(module_name(p))] == []


def _has_rank(module: str) -> bool:
    try:
        rank_of(module)
    except KeyError:
        return False
    return True


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_layers(path: Path) -> None:
    importer = module_name(path)
    upward = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for line, name in imports(path)
        if not may_import(importer, name)
    ]
    assert upward == []


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("pdmaster.api.service", "pdmaster.dispatch.session", True),
        ("pdmaster.nodes.pool", "pdmaster.routing.policies", False),
        ("pdwire.lightllm", "pdmaster.errors", False),
        ("node_agents.simengine.cli", "pdmaster.dispatch.session", False),
        ("node_agents.simengine.cli", "pdmodel.tokenizer", True),
        ("config_server.app", "pdmaster.errors", False),
        ("pdmaster.app", "config_server.app", False),
        ("pdmaster.api.service", "config_server.registry", False),
        ("benchmarks.scale", "pdlocal.cluster", True),
        ("pdlocal.cluster", "benchmarks.common", False),
    ],
)
def test_the_rule_itself(importer: str, imported: str, allowed: bool) -> None:
    assert may_import(importer, imported) is allowed
