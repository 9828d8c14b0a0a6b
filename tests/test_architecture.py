"""The walls of the package: the science (``sdlora.core``) imports nothing of Ray, MLflow, DVC or
argv, and no module imports itself back through others (runtime imports: module-level and
inside functions; ``if TYPE_CHECKING:`` blocks are not run)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sdlora"
OUTSIDE = ("ray", "mlflow", "dvc", "argparse", "click", "sdlora.ops", "sdlora.pipeline",
           "sdlora.cli", "sdlora.report")  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _runtime_imports(path: Path) -> set[str]:
    """The modules ``path`` imports when it runs (not under ``if TYPE_CHECKING:``)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {m for m in _runtime_imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_no_import_cycles() -> None:
    graph, cycles = _graph(), []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not cycles, " | ".join(" -> ".join(c) for c in cycles)


def test_the_science_imports_no_outside_system() -> None:
    bad = {
        name: sorted(m for m in _runtime_imports(path) if m.startswith(OUTSIDE))
        for name, path in _modules().items()
        if name.startswith("sdlora.core")
    }
    assert not {k: v for k, v in bad.items() if v}


def test_the_checks_see_imports_inside_functions(tmp_path: Path) -> None:
    code = tmp_path / "m.py"
    code.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ray\n"
                    "def f():\n    import mlflow\n")  # fmt: skip
    assert _runtime_imports(code) == {"typing", "typing.TYPE_CHECKING", "mlflow"}


def test_what_people_read_needs_no_outside_system() -> None:
    """``sdlora.report`` (tables, plots, a run's files) imports the science, not Ray or MLflow."""
    bad = {
        name: sorted(m for m in _runtime_imports(path) if m.startswith(OUTSIDE[:-1]))
        for name, path in _modules().items()
        if name.startswith("sdlora.report")
    }
    assert not {k: v for k, v in bad.items() if v}
