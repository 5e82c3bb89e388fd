"""The package is a stack of layers: every import inside `llava` goes down the stack, never up, and no two packages
import each other. Read from the source with `ast` (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "llava"

# Bottom to top. A unit may import units of lower layers only (and itself).
LAYERS: list[tuple[str, ...]] = [
    ("llava.constants",),
    # llava.utils reads LOGDIR from llava.constants, as upstream's does.
    ("llava.utils", "llava.tokenization"),
    ("llava.mm_utils", "llava.distributed"),
    ("llava.conversation",),
    ("llava.model", "llava.data"),
    ("llava.train",),
    ("llava.inference", "llava.launch", "llava.testing"),
    ("llava.eval", "llava.serve", "llava.demo", "llava.export"),
]
# `llava/__init__.py` only offers upstream's `from llava import LlavaLlamaForCausalLM`, lazily.
FACADE = "llava"
LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """`llava.train.saving` -> `llava.train`; `llava.mm_utils` -> `llava.mm_utils`."""
    return ".".join(module.split(".")[:2])


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every `llava...` module `path` imports; `from llava import conversation` counts as `llava.conversation`."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == FACADE:
                found.update(f"{FACADE}.{alias.name}" for alias in node.names)
            else:
                found.add(target)
    return {name for name in found if name == FACADE or name.startswith(FACADE + ".")}


def package_imports() -> dict[str, set[str]]:
    """unit -> the other units it imports."""
    edges: dict[str, set[str]] = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        source = unit_of(module_name(path))
        if source == FACADE:
            continue
        targets = {unit_of(name) for name in imported_modules(path)} - {source}
        edges.setdefault(source, set()).update(targets)
    return edges


def layering_problems(edges: dict[str, set[str]]) -> list[str]:
    problems = [f"{unit} is in no layer of LAYERS: add it" for unit in sorted(edges) if unit not in LAYER_OF]
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            if target == FACADE:
                problems.append(f"{source} imports the package root {FACADE}; import the module itself")
            elif source in LAYER_OF and target in LAYER_OF and LAYER_OF[target] >= LAYER_OF[source]:
                problems.append(
                    f"{source} (layer {LAYER_OF[source]}) imports {target} (layer {LAYER_OF[target]}): imports must "
                    "go down"
                )
    return problems + cycles(edges)


def cycles(edges: dict[str, set[str]]) -> list[str]:
    """Every cycle between units, as `a -> b -> a` (found by depth-first search)."""
    found, state = [], {}

    def visit(unit: str, path: list[str]) -> None:
        state[unit] = "open"
        for target in sorted(edges.get(unit, ())):
            if state.get(target) == "open":
                found.append(" -> ".join(path[path.index(target) :] + [unit, target]) + ": a cycle")
            elif target not in state:
                visit(target, [*path, unit] if unit not in path else path)
        state[unit] = "done"

    for unit in sorted(edges):
        if unit not in state:
            visit(unit, [])
    return found


def test_every_import_goes_down_and_no_packages_import_each_other():
    edges = package_imports()
    assert set(edges) >= {"llava.model", "llava.data", "llava.train", "llava.distributed"}
    assert layering_problems(edges) == []


@pytest.mark.parametrize(
    "edges, expected",
    [
        ({"llava.model": {"llava.train"}}, "llava.model (layer 4) imports llava.train (layer 5): imports must go down"),
        ({"llava.model": {"llava.data"}}, "llava.model (layer 4) imports llava.data (layer 4): imports must go down"),
        ({"llava.newthing": {"llava.constants"}}, "llava.newthing is in no layer of LAYERS: add it"),
        ({"llava.data": {"llava"}}, "llava.data imports the package root llava; import the module itself"),
    ],
)
def test_the_check_catches_an_upward_import(edges, expected):
    assert expected in layering_problems(edges)


def test_the_check_catches_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a: a cycle"]
