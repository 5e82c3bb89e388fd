"""Every module and public name of upstream's package exists here, and every ``llava`` import upstream makes resolves.

The walk reads the files of ``llava-torch`` (upstream's own package) in the reference environment: each
``llava/**.py`` is a module that must import here; each name it defines at the top level (functions, classes,
assignments, outside ``if __name__ == "__main__":``; in ``__init__.py`` also the names it re-exports) must be an
attribute of our module of the same path; and every absolute ``llava...`` import in those files, anywhere in them,
must resolve against this package. The few exceptions are listed below with their reasons.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.upstream

PACKAGE = "llava"

# What is not here, and why.
EXCLUDED = {
    "llava.serve.model_worker.global_counter": (
        "upstream's module-global request counter; it is ModelWorker.global_counter (docs/upstream_differences.md #29)"
    ),
    "llava.serve.model_worker.model_semaphore": (
        "upstream's module-global semaphore; it is ModelWorker.model_semaphore (docs/upstream_differences.md #29)"
    ),
    "llava.utils.handler": (
        "upstream's module-global log file handler; build_logger keeps one handler per log file itself "
        "(docs/upstream_differences.md #29)"
    ),
    "llava.train.llama_flash_attn_monkey_patch.forward": (
        "the attention body it patched into transformers 4.3x's LlamaAttention; transformers' own attention "
        "implementations replace it (docs/upstream_differences.md #23)"
    ),
    "llava.train.llama_xformers_attn_monkey_patch.xformers_forward": (
        "the attention body it patched into transformers 4.3x's LlamaAttention; transformers' own attention "
        "implementations replace it (docs/upstream_differences.md #23)"
    ),
    **{
        f"llava.serve.gradio_web_server.{name}": (
            "a method of gradio_web_server.WebUI: upstream's handlers read the command line's global args and models "
            "(docs/upstream_differences.md #31)"
        )
        for name in ("add_text", "http_bot", "load_demo", "load_demo_refresh_model_list")
    },
    "llava.serve.gradio_web_server.get_window_url_params": (
        "the page script upstream read ?model= with; gradio 6 hands the handler the request's query parameters "
        "(docs/upstream_differences.md #31)"
    ),
}
# Modules that exist here but whose contents are upstream's alone, and why.
CONTENTS_EXCLUDED = {
    "llava.serve.sglang_worker": (
        "needs sglang and a CUDA GPU; here it is an entry point that says so (docs/upstream_differences.md #30)"
    ),
}


def _excluded(dotted: str) -> str | None:
    """The reason ``dotted`` (a module or ``module.name``) is not checked, if it is not."""
    if dotted in EXCLUDED:
        return EXCLUDED[dotted]
    return CONTENTS_EXCLUDED.get(dotted.rpartition(".")[0])


@dataclass
class UpstreamModule:
    name: str
    names: set[str]  # public top-level names
    imports: set[str]  # "module" or "module:name" for every llava import in the file


def _is_main_block(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)


def _defined(body: list[ast.stmt], reexports: bool) -> set[str]:
    found: set[str] = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found.update(leaf.id for target in targets for leaf in ast.walk(target) if isinstance(leaf, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and reexports:
            found.update((alias.asname or alias.name).split(".")[0] for alias in node.names if alias.name != "*")
        elif isinstance(node, (ast.If, ast.Try)) and not _is_main_block(node):
            handlers = [handler.body for handler in getattr(node, "handlers", [])]
            for block in [node.body, node.orelse, getattr(node, "finalbody", []), *handlers]:
                found |= _defined(block, reexports)
    return {name for name in found if not name.startswith("_")}


def _imports(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] == PACKAGE:
                found.update(base if alias.name == "*" else f"{base}:{alias.name}" for alias in node.names)
    return found


def upstream_modules(root: Path) -> list[UpstreamModule]:
    modules = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules.append(
            UpstreamModule(name, _defined(tree.body, reexports=is_package), _imports(tree, name, is_package))
        )
    return modules


@pytest.fixture(scope="module")
def walked(upstream) -> list[UpstreamModule]:
    roots = sorted(upstream.venv.glob(f"lib/python*/site-packages/{PACKAGE}"))
    assert len(roots) == 1, roots
    modules = upstream_modules(roots[0])
    assert len(modules) == 50 and sum(len(module.names) for module in modules) > 200  # the whole package was read
    return modules


def _problem(dotted: str) -> str | None:
    """None when ``dotted`` (``module`` or ``module:name``) exists here, else what is missing."""
    module_name, _, attribute = dotted.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        return f"module {module_name} does not import: {error}"
    if attribute and not hasattr(module, attribute):
        try:
            importlib.import_module(f"{module_name}.{attribute}")  # `from llava.model import builder`
        except ImportError:
            return f"{module_name} has no {attribute}"
    return None


def test_every_upstream_module_and_public_name_exists_here(walked):
    problems = []
    for module in walked:
        if _excluded(module.name):
            continue
        problem = _problem(module.name)
        if problem:
            problems.append(problem)
            continue
        for name in sorted(module.names):
            if not _excluded(f"{module.name}.{name}"):
                problems += [problem] if (problem := _problem(f"{module.name}:{name}")) else []
    assert problems == []


def test_every_llava_import_in_upstreams_files_resolves_here(walked):
    targets = {target for module in walked for target in module.imports}
    assert {"llava.model", "llava.utils:disable_torch_init", "llava.mm_utils:KeywordsStoppingCriteria"} <= targets
    problems = [
        f"{problem} (imported by upstream's {', '.join(sorted(m.name for m in walked if target in m.imports))})"
        for target in sorted(targets)
        if not _excluded(target.replace(":", ".")) and (problem := _problem(target))
    ]
    assert problems == []


def test_the_exclusions_are_still_needed(walked):
    """An exclusion whose name appears here (or upstream lost) is stale: delete it."""
    upstream_names = {f"{module.name}.{name}" for module in walked for name in module.names}
    assert set(EXCLUDED) <= upstream_names
    present = [dotted for dotted in EXCLUDED if _problem(":".join(dotted.rsplit(".", 1))) is None]
    assert present == []
