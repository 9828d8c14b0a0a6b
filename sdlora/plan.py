"""Where the DVC pipeline's stages read and write, and the per-task stage list it runs.

``dvc.yaml``'s ``train`` stage is a ``foreach`` over the ``tasks`` section of ``params.yaml``:
one ``train@<key>`` stage per task, each naming its own split and what it starts from (the
backbone for task 0, the previous task's output after that), so DVC chains them. The section
follows ``data.*``: ``python -m sdlora tasks --write`` regenerates it (keeping per-task
overrides), and the stages refuse a section that does not match the prepared data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PREPARED_DIR = "data/prepared"  # prepare: per-task Parquet splits + manifest.json
BACKBONE_DIR = "artifacts/backbone"  # pretrain: backbone.json (+ the embedded weights)
PIPELINE_DIR = "runs/pipeline"  # train@k: task_<k>/; evaluate: eval/; report: report/
EVAL_DIR = f"{PIPELINE_DIR}/eval"
REPORT_DIR = f"{PIPELINE_DIR}/report"
OVERRIDES = ("rank", "epochs", "lr")  # what a tasks entry may set for its task alone
WRITE_COMMAND = "python -m sdlora tasks --write"


def task_split(task: int) -> str:
    """The prepared split folder of ``task`` (``data/prepared/task_00``)."""
    return f"{PREPARED_DIR}/task_{task:02d}"


def task_output(task: int) -> str:
    """The output folder of stage ``train@task`` (``runs/pipeline/task_0``; dvc.yaml names it)."""
    return f"{PIPELINE_DIR}/task_{task}"


def task_prev(task: int) -> str:
    """What ``train@task`` starts from: the backbone folder for task 0, else task - 1's output."""
    return BACKBONE_DIR if task == 0 else task_output(task - 1)


def count_tasks(num_classes: int, init_cls: int, increment: int) -> int:
    """Tasks of a class-incremental split: init_cls classes, then increment each (SPEC §1)."""
    if not 1 <= init_cls <= num_classes or increment < 1:
        raise ValueError(
            f"init_cls = {init_cls}, increment = {increment} do not split {num_classes} classes"
        )
    return 1 + -(-(num_classes - init_cls) // increment)


def plan_tasks(
    num_tasks: int, overrides: Mapping[int, Mapping[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """The ``tasks`` section for ``num_tasks`` tasks; ``overrides[k]`` is kept in entry k.

    Every entry lists every override (null when unset) so that ``dvc exp run -S
    tasks.3.rank=4`` finds the key.
    """
    out = {}
    for k in range(num_tasks):
        given = (overrides or {}).get(k, {})
        extra = {n: given.get(n) for n in OVERRIDES}  # null: the global setting
        out[str(k)] = {"split": task_split(k), "prev": task_prev(k), **extra}
    return out


def _flow(entry: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {'null' if v is None else v}" for k, v in entry.items()) + "}"


def tasks_block(plan: Mapping[str, Mapping[str, Any]]) -> str:
    """The YAML text of the ``tasks`` and ``final_task`` sections (quoted keys: DVC wants str)."""
    n = len(plan)
    lines = [
        f"# One train@<key> stage per task, generated from data.* by `{WRITE_COMMAND}`, which",
        "# keeps per-task overrides (rank, epochs, lr: a change re-runs from that task on).",
        "tasks:",
        *(f'  "{k}": {_flow(v)}' for k, v in plan.items()),
        f"final_task: {task_output(n - 1)}   # what evaluate reads: the last task's output",
    ]
    return "\n".join(lines) + "\n"


_GENERATED = re.compile(r"^# (One train@<key> stage per task|keeps per-task overrides)")


def replace_tasks_block(text: str, block: str) -> str:
    """``params.yaml`` text with its ``tasks``/``final_task`` sections replaced by ``block``.

    Everything else (comments included) is kept; the block goes where ``tasks`` was, or at
    the end when there was none.
    """
    lines = text.splitlines(keepends=True)
    kept: list[str] = []
    at: int | None = None
    skipping = False
    for line in lines:
        top = bool(line.strip()) and not line[0].isspace() and not line.startswith("#")
        if top:
            skipping = line.startswith(("tasks:", "final_task:"))
            if skipping and at is None:
                at = len(kept)
        elif line.startswith("#") and _GENERATED.match(line):
            continue
        if not skipping:
            kept.append(line)
    if at is None:
        if kept and not kept[-1].endswith("\n"):
            kept[-1] += "\n"
        at = len(kept)
    return "".join(kept[:at]) + block + "".join(kept[at:])


def write_tasks(params_path: str | Path, num_tasks: int) -> dict[str, dict[str, Any]]:
    """Regenerate ``params_path``'s ``tasks`` section for ``num_tasks`` tasks, keeping overrides.

    The file is replaced atomically. Returns the new section.
    """
    from sdlora.atomic import atomic_path
    from sdlora.config import read_yaml

    path = Path(params_path)
    text = path.read_text()
    raw = read_yaml(text) or {}
    old = raw.get("tasks") or {}
    overrides = {int(k): v for k, v in old.items() if isinstance(v, Mapping)}
    plan = plan_tasks(num_tasks, overrides)
    with atomic_path(path) as tmp:
        tmp.write_text(replace_tasks_block(text, tasks_block(plan)))
    return plan
