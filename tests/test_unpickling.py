"""No file the package reads can run code (issue 19): every unpickling in ``sdlora/`` is either
the CIFAR reader's restricted unpickler or ``torch.load(..., weights_only=True)``. Read from the
syntax tree, so a call spread over lines or an aliased import (``import pickle as p``) counts."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sdlora"
UNPICKLERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads",
              "_pickle.Unpickler", "torch.load"}  # fmt: skip
RESTRICTED = ("data/cifar.py", "pickle.Unpickler")  # the one subclass allowed, with find_class


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str:
    """``a.b.c`` for a name or attribute chain, its first part resolved through the imports."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def _uses(path: Path) -> list[tuple[int, str, ast.AST]]:
    """(line, what, node) for each use of an unpickler in ``path``: calls, bases, imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname: a.name for a in node.names if a.asname})
        elif isinstance(node, ast.ImportFrom) and node.module:
            aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            targets = [node.func]
        elif isinstance(node, ast.ClassDef):
            targets = node.bases
        else:
            continue
        for target in targets:
            name = _dotted(target, aliases)
            if name in UNPICKLERS:
                found.append((node.lineno, name, node))
    return found


def _allowed(rel: str, name: str, node: ast.AST) -> bool:
    if name == "torch.load" and isinstance(node, ast.Call):
        kw = {k.arg: k.value for k in node.keywords}
        flag = kw.get("weights_only")
        return isinstance(flag, ast.Constant) and flag.value is True
    if (rel, name) == RESTRICTED and isinstance(node, ast.ClassDef):
        return any(isinstance(f, ast.FunctionDef) and f.name == "find_class" for f in node.body)
    return False


def test_every_unpickling_is_restricted() -> None:
    uses = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for line, name, node in _uses(path):
            uses[f"sdlora/{rel}:{line}: {name}"] = _allowed(rel, name, node)
    bad = [where for where, ok in uses.items() if not ok]
    assert not bad, f"unrestricted unpickling (weights_only=True or a find_class list): {bad}"
    # the scan sees the known sites, so a pass is not an empty search
    assert any("data/cifar.py" in w and "pickle.Unpickler" in w for w in uses)
    assert any("ops/ray_train.py" in w and "torch.load" in w for w in uses)


def test_scan_catches_unsafe_forms(tmp_path: Path) -> None:
    src = tmp_path / "bad.py"
    src.write_text(
        "import pickle as pk\nfrom pickle import loads\nimport torch\n"
        "pk.load(open('f', 'rb'))\nloads(b'')\n"
        "torch.load(\n    'f', map_location='cpu'\n)\ntorch.load('f', weights_only=False)\n"
        "torch.load('f', weights_only=True)\nclass U(pk.Unpickler):\n    pass\n"
    )
    found = [(line, name, _allowed("bad.py", name, node)) for line, name, node in _uses(src)]
    assert sorted(found) == [
        (4, "pickle.load", False),
        (5, "pickle.loads", False),
        (6, "torch.load", False),
        (9, "torch.load", False),
        (10, "torch.load", True),
        (11, "pickle.Unpickler", False),
    ]
