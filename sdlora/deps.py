"""What each DVC stage depends on, computed from its code: its source files and its params.

- Source files: the static import closure of the entry script ``pipelines/<stage>.py``
  (:func:`source_closure`), found by :class:`modulefinder.ModuleFinder`, which reads every
  ``import`` statement of every module it reaches, inside functions too, without running
  anything. Only this project's files count (``sdlora/``, ``pipelines/``). The closure is
  complete as long as nothing imports by computed name (:func:`dynamic_imports` finds such
  calls): that is why each entry script imports its stage's ``main`` by name and
  :mod:`sdlora.stages.cli` imports no stage.
- Params: the keys of ``params.yaml`` the code reachable from the entry script reads
  (:func:`params_read`, a static walk of the calls: :mod:`sdlora.params_read`).
  :data:`UNTRACKED` lists the keys a stage reads but deliberately does not track.

:func:`check_stage` holds a dvc.yaml stage to both (``tests/test_deps.py`` runs it for every
stage); ``python -m sdlora deps`` prints the computed picture.
"""

from __future__ import annotations

import ast
import itertools
import modulefinder
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "sdlora"
SOURCE_ROOTS = ("sdlora", "pipelines")  # the project's own code; everything else is a library

# Params a stage reads but deliberately does not list in dvc.yaml: {(stage or "*", key): why}.
UNTRACKED: dict[tuple[str, str], str] = {
    ("*", "progress"): "progress bars only",
    ("pretrain", "train.eval_batch_size"): "how many validation images go through at once: "
    "memory and speed, not the weights",
    ("prepare", "tasks"): "only its length is checked against data.*; a stale list stops the "
    "stage, it never changes the output",
    ("train", "tasks"): "train@k tracks its own entry (tasks.${key}); earlier entries reach it "
    "through ${item.prev}, later ones only through the count and the sequence key, which "
    "the report stage (listing tasks) brings up to date",
    ("train", "ray"): "where and how wide training runs, not what it computes (the sequence key "
    "leaves it out too)",
    ("train", "mlflow"): "where the run is tracked; the report stage lists it, and a run opened "
    "in a new store gets the earlier tasks from record.json",
}


def stage_script(stage: str) -> str:
    """The entry script of ``stage`` (``train@3`` -> ``pipelines/train.py``)."""
    return f"pipelines/{stage.partition('@')[0]}.py"


class _ProjectFinder(modulefinder.ModuleFinder):
    """A ModuleFinder that looks only into this project's package (libraries are not scanned)."""

    def import_module(self, partname: str, fqname: str, parent: Any) -> Any:
        if fqname.partition(".")[0] != PACKAGE:
            return None  # recorded as a "bad module" and skipped: not ours
        return super().import_module(partname, fqname, parent)


def _rel(path: str | Path, root: Path) -> str | None:
    try:
        rel = Path(path).resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return rel.as_posix() if rel.parts[0] in SOURCE_ROOTS else None


def _closure_modules(script: str, root: Path) -> dict[str, str]:
    """{module name: relative file} of the script's closure (the script itself as ``__main__``)."""
    finder = _ProjectFinder(path=[str(root)])
    finder.run_script(str(root / script))
    out = {}
    for name, module in finder.modules.items():
        rel = _rel(module.__file__, root) if module.__file__ else None
        if rel is not None:
            out[name] = rel
    return out


def source_closure(script: str, root: Path = REPO) -> list[str]:
    """The project files ``script`` (``pipelines/<stage>.py``) can load, relative and sorted."""
    return sorted(set(_closure_modules(script, root).values()))


def dynamic_imports(files: Iterable[str], root: Path = REPO) -> list[str]:
    """``file:line`` of every ``importlib.import_module(...)`` / ``__import__(...)`` call."""
    found = []
    for rel in files:
        for node in ast.walk(ast.parse((root / rel).read_text(), rel)):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")
            if name in ("import_module", "__import__"):
                found.append(f"{rel}:{node.lineno}")
    return found


def covers(dep: str, path: str) -> bool:
    """Whether a dvc.yaml dep covers ``path``: it is that file or a folder above it."""
    dep = dep.rstrip("/")
    return path == dep or path.startswith(dep + "/")


def uncovered(files: Iterable[str], deps: Iterable[str]) -> list[str]:
    """The ``files`` no dep covers."""
    deps = list(deps)
    return [f for f in files if not any(covers(d, f) for d in deps)]


def params_read(script: str, root: Path = REPO) -> dict[str, set[str]]:
    """{params key: the functions that read it} for the code ``script`` reaches
    (:mod:`sdlora.params_read`)."""
    from sdlora.params_read import read_params

    return read_params(_closure_modules(script, root), root)


def untracked(stage: str, key: str) -> str | None:
    """Why ``stage`` does not track ``key`` (:data:`UNTRACKED`, its section there), else None."""
    for k in (key, key.partition(".")[0]):
        why = UNTRACKED.get((stage, k)) or UNTRACKED.get(("*", k))
        if why is not None:
            return why
    return None


def params_cover(listed: str, key: str) -> bool:
    """Whether a dvc.yaml params entry covers a read key: ``data`` covers ``data.image_size``;
    ``tasks.${key}`` (a foreach stage's own entry) covers nothing else."""
    return key == listed or key.startswith(listed + ".")


# --------------------------------------------------------------------------------------------
# dvc.yaml against the code.


def _params_entries(entries: Iterable[Any]) -> tuple[list[str], list[str]]:
    """(keys, whole files) of a dvc.yaml ``params`` list: ``- key``, ``- file.yaml: [keys]``,
    or ``- file.yaml:`` with no keys, which tracks every key of that file."""
    keys, whole = [], []
    for entry in entries:
        if isinstance(entry, str):
            keys.append(entry)
            continue
        for file, listed in entry.items():
            if listed:
                keys.extend(listed)
            else:
                whole.append(file)
    return keys, whole


def dvc_stages(path: str | Path = REPO / "dvc.yaml") -> dict[str, dict[str, Any]]:
    """{stage: its cmd, deps, params, whole_params, outs} from dvc.yaml (a foreach stage: its
    ``do``). ``whole_params``: the params files tracked whole; ``outs`` includes the stage's
    ``metrics`` and ``plots`` outputs."""
    import yaml

    stages = yaml.safe_load(Path(path).read_text())["stages"]
    out = {}
    for name, spec in stages.items():
        body = spec.get("do", spec)
        keys, whole = _params_entries(body.get("params") or [])
        outputs = [o for kind in ("outs", "metrics", "plots") for o in body.get(kind) or []]
        out[name] = {
            "foreach": "do" in spec,
            "cmd": body.get("cmd", ""),
            "deps": [str(d) for d in body.get("deps") or []],
            "params": keys,
            "whole_params": whole,
            "outs": [o if isinstance(o, str) else next(iter(o)) for o in outputs],
        }
    return out


def _is_code(dep: str) -> bool:
    return dep.partition("/")[0] in SOURCE_ROOTS


def _lines(where: str, items: Iterable[str], note: str) -> str:
    """``where`` + ``note``, then ``items`` as dvc.yaml list lines, indented as there."""
    indent = " " * (8 if where.endswith(".do.deps") or where.endswith(".do.params") else 6)
    return f"{where}{note}:" + "".join(f"\n{indent}- {item}" for item in items)


def _suggest(keys: Iterable[str]) -> list[str]:
    """The keys, a key dropped where its whole section is among them."""
    keys = set(keys)
    return sorted(k for k in keys if k.partition(".")[0] == k or k.partition(".")[0] not in keys)


def check_stage(stage: str, spec: Mapping[str, Any], root: Path = REPO) -> list[str]:
    """What dvc.yaml's entry ``spec`` for ``stage`` gets wrong about the code; [] if nothing.

    Code deps must cover the entry script's import closure and nothing of another stage's;
    params must cover every key the code reads (but :data:`UNTRACKED`) and list nothing it does
    not read; every path the cmd passes must be a dep (inputs) or an out (``--out``).
    """
    where = f"dvc.yaml stages.{stage}{'.do' if spec.get('foreach') else ''}"
    script = stage_script(stage)
    problems = []
    if not spec["cmd"].startswith(f"python {script}"):
        problems.append(f"{where}.cmd: should run `python {script} ...`, not {spec['cmd']!r}")
    if not (root / script).is_file():
        return [*problems, f"{script} not found: every stage has its entry script there"]
    files = source_closure(script, root)
    code = [d for d in spec["deps"] if _is_code(d)]
    if missing := uncovered(files, code):
        problems.append(_lines(f"{where}.deps", missing, f" lacks files {script} imports; add"))
    others = {
        f for s in dvc_stages(root / "dvc.yaml") if s != stage
        for f in (stage_script(s), f"{PACKAGE}/stages/{s}.py")
    }  # fmt: skip
    for dep in code:
        if not any(covers(dep, f) for f in files):
            problems.append(f"{where}.deps: {dep} holds nothing {script} imports; remove it")
        foreign = sorted(f for f in others if covers(dep, f) and f not in files)
        if foreign and dep not in foreign:
            problems.append(
                f"{where}.deps: {dep} also covers another stage's code ({', '.join(foreign)}); "
                "list its files instead"
            )
    if bad := dynamic_imports(files, root):
        problems.append(
            f"{script} imports by computed name at {', '.join(bad)}: the closure cannot see "
            "what that loads; import it by name"
        )
    reads = params_read(script, root)
    listed = spec["params"]
    lacking = sorted(
        k for k in reads
        if not any(params_cover(p, k) for p in listed) and untracked(stage, k) is None
        and not spec.get("whole_params")  # a whole params file covers every key
    )  # fmt: skip
    if lacking:
        by = {
            k: sorted({f for r in lacking if params_cover(k, r) for f in reads[r]}) for k in lacking
        }
        lines = [f"{k}   # read by {', '.join(by[k])}" for k in _suggest(lacking)]
        problems.append(_lines(f"{where}.params", lines, " lacks keys the code reads; add"))
    for p in listed:
        own = p.split(".${")[0]  # tasks.${key}: the stage's own entry of tasks
        if not any(params_cover(own, k) or params_cover(k, own) for k in reads):
            problems.append(f"{where}.params: no code of {script} reads {p}; remove it")
    args = spec["cmd"].split()
    for flag, value in itertools.pairwise(args):
        if not flag.startswith("--") or flag in ("--params", "--task"):
            continue
        if flag == "--out":
            if value not in spec["outs"]:
                problems.append(f"{where}.outs: lacks {value} (the cmd's --out)")
        elif value in spec["outs"] or any(covers(value, o) for o in spec["outs"]):
            continue  # another output (evaluate's --metrics), or a folder of them (--results)
        elif not any(covers(d, value) or covers(value, d) for d in spec["deps"]):
            problems.append(f"{where}.deps: lacks {value} (the cmd's {flag})")
    return problems


def describe(stage: str, spec: Mapping[str, Any] | None = None, root: Path = REPO) -> str:
    """What ``stage`` depends on according to its code, and what dvc.yaml's ``spec`` lacks."""
    script = stage_script(stage)
    reads = params_read(script, root)
    lines = [f"{stage} ({script})", "  code deps (the script's import closure):"]
    lines += [f"    - {f}" for f in source_closure(script, root)]
    lines.append("  params read:")
    skipped: dict[str, list[str]] = {}
    for key in _suggest(reads):
        why = untracked(stage, key)
        if why is None:
            lines.append(f"    - {key}")
        else:
            skipped.setdefault(why, []).append(key)
    lines += [f"  not tracked: {', '.join(keys)}: {why}" for why, keys in skipped.items()]
    if spec is not None and spec.get("whole_params"):
        lines.append(f"  tracked whole (every key): {', '.join(spec['whole_params'])}")
    if spec is not None:
        problems = check_stage(stage, spec, root)
        lines += [f"  {p}".replace("\n", "\n  ") for p in problems] or ["  dvc.yaml agrees"]
    return "\n".join(lines)
