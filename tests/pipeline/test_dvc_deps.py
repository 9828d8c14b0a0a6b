"""Every DVC stage lists the code it runs: the import closure of its entry script (every
``import`` in every module it reaches, function-level ones included) lies inside its deps.

An entry script runs one command of :mod:`sdlora.cli`, which imports its stage's module
(``sdlora/pipeline/<stage>.py``) only when the command runs: the closure is the CLI's
module-level imports plus that stage module's whole closure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PIPELINES = ["dvc.yaml", "compare/dvc.yaml", "tune/dvc.yaml"]


def _module_file(name: str) -> Path | None:
    """The project file of module ``name`` (``sdlora.core.lora``), None outside the project."""
    base = REPO / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


CLI = REPO / "sdlora" / "cli.py"


def _imported(path: Path) -> set[str]:
    """Every module name an import in ``path`` may load (``from a import b``: a and a.b); for
    the CLI, its module-level imports (each command imports its own module when it runs)."""
    names: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in tree.body if path == CLI else _run_nodes(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    parents = {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 1)}
    return names | parents  # importing a.b.c runs a/__init__.py and a/b/__init__.py


def _run_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that runs: ``if TYPE_CHECKING:`` blocks are left out."""
    out: list[ast.AST] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        out.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_closure(entry: Path) -> set[Path]:
    """The project files ``entry`` loads, itself included (a stage's entry script: with the
    stage module its command imports)."""
    seen, todo = set(), [entry]
    if entry.parent.name == "pipelines":
        todo.append(REPO / "sdlora" / "pipeline" / entry.name)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += [f for f in map(_module_file, _imported(path)) if f is not None]
    return seen


def _stages() -> list[tuple[str, Path, list[str]]]:
    out = []
    for name in PIPELINES:
        for stage, spec in yaml.safe_load((REPO / name).read_text())["stages"].items():
            spec = spec.get("do", spec)
            entry = next(w for w in spec["cmd"].split() if w.startswith("pipelines/"))
            deps = [d for d in spec["deps"] if "${" not in d]
            out.append((f"{name}:{stage}", REPO / entry, deps))
    return out


@pytest.mark.parametrize(("stage", "entry", "deps"), _stages(), ids=lambda v: str(v))
def test_a_stage_lists_every_file_its_entry_script_imports(
    stage: str, entry: Path, deps: list[str]
) -> None:
    listed = [REPO / d for d in deps]
    missing = sorted(
        str(f.relative_to(REPO))
        for f in import_closure(entry)
        if not any(f == d or f.is_relative_to(d) for d in listed)
    )
    assert not missing, f"{stage}: add to its deps in dvc.yaml: {missing}"


def test_the_closure_follows_function_level_imports(tmp_path: Path) -> None:
    closure = import_closure(REPO / "pipelines" / "pretrain.py")
    assert REPO / "sdlora" / "core" / "pretrain.py" in closure  # imported inside the stage
    assert not any("tracking" in f.name for f in closure)  # pretrain never touches MLflow


def test_each_stage_command_imports_only_its_stage_module() -> None:
    """What the closure above assumes of the CLI: a stage command's body imports its module."""
    tree = ast.parse(CLI.read_text())
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        stages = [d for d in fn.decorator_list if "stage.command" in ast.unparse(d)]
        if not stages:
            continue
        name = ast.literal_eval(stages[0].args[0])
        modules = {n.module for n in ast.walk(fn) if isinstance(n, ast.ImportFrom)}
        assert modules == {f"sdlora.pipeline.{name}"}, (fn.name, modules)
