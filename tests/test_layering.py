"""The package's import structure as docs/architecture.md states it, read from the source (no import runs):
no import cycle (module-level imports, and all imports including those inside functions), and no import that
crosses a layering rule."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rpt", "data_prep")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(path: Path, top_level_only: bool) -> set[str]:
    """The project modules ``path`` imports (``from a import b`` counts as ``a.b`` when that is a module)."""
    module, tree = _module_name(path), ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, path.name == "__init__.py")
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES and name in MODULES}


MODULES = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node], _ = 2, path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def _parents(module: str) -> set[str]:
    """A module's enclosing packages: importing ``a.b.c`` runs ``a`` and ``a.b`` first."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


@pytest.mark.parametrize("top_level_only", [True, False])
def test_no_import_cycle(top_level_only):
    """Neither at import time (module-level imports) nor counting the imports made inside functions."""
    graph = {m: imports(p, top_level_only) - _parents(m) - {m} for m, p in MODULES.items()}
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    """The check above can fail: a two-module cycle in a made-up graph is reported."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _crossings(importer_prefix: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    out = []
    for module, path in MODULES.items():
        if not module.startswith(importer_prefix) or module.startswith(allowed):
            continue
        out += [f"{module} imports {target}" for target in sorted(imports(path, top_level_only=False))
                if target.startswith(forbidden)]
    return out


def test_layering_rules():
    """docs/architecture.md: ``model`` imports neither ``train`` nor ``stages``; ``tasks`` never imports
    ``data_prep``; of ``rpt``, only the prep, select and cnt stages and ``bench`` use ``data_prep``; the policy losses
    are pure tensor functions (no collectives: token choices live in ``algo.token_choice``); library code below
    the stages does not import the stages."""
    broken = (_crossings("rpt.model", ("rpt.train", "rpt.stages"))
              + _crossings("rpt.tasks", ("data_prep",))
              + _crossings("rpt", ("data_prep",),
                           allowed=("rpt.stages.prep", "rpt.stages.select", "rpt.stages.cnt", "rpt.bench"))
              + _crossings("rpt.algo.losses", ("rpt.distributed", "rpt.train", "rpt.model"))
              + _crossings("rpt.train", ("rpt.stages", "rpt.cli"))
              + _crossings("rpt.algo", ("rpt.train", "rpt.stages")))
    assert not broken, "\n".join(broken)


def test_only_entry_points_see_the_root_config():
    """Library functions take the config section they need; the root config is seen by the CLI and its
    preflight, the stages, the benchmark entry point and the report (which describes the whole run)."""
    allowed = ("rpt.cli", "rpt.refusal", "rpt.config", "rpt.stages", "rpt.bench", "rpt.analysis.report_md")
    seen = [m for m, p in MODULES.items() if "RootConfig" in p.read_text(encoding="utf-8")
            and not m.startswith(allowed)]
    assert not seen, seen
