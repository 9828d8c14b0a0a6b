"""Where the DVC pipeline's stages read and write, and the per-task stage list it runs.

``dvc.yaml``'s ``train`` stage is a ``foreach`` over the ``tasks`` section of ``params.yaml``:
one ``train@<key>`` stage per task, each naming its own split and what it starts from (the
backbone for task 0, the previous task's output after that), so DVC chains them. The section
follows ``data.*``: ``python -m sdlora tasks --write`` regenerates it (keeping per-task
overrides), and the stages refuse a section that does not match the prepared data.

The section is written plainly (:func:`write_tasks` replaces its lines and nothing else), so
every other line of the file, comments included, survives a rewrite.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdlora.data.prepare import Prepared

from sdlora.config import (
    ON_DISK_DATASETS,
    TASKS_COMMAND,
    Config,
    ConfigError,
    RunInputs,
    TaskEntry,
    known_num_classes,
    read_yaml,
)
from sdlora.core.records import RecordError, check_records
from sdlora.errors import BadInput
from sdlora.files import atomic_path, file_sha256

PREPARED_DIR = "data/prepared"  # prepare: per-task Parquet splits + manifest.json
BACKBONE_DIR = "artifacts/backbone"  # pretrain: backbone.json (+ the embedded weights)
PIPELINE_DIR = "runs/pipeline"  # train@k: task_<k>/; evaluate: eval/; report: report/
VALIDATED = f"{PIPELINE_DIR}/params_valid.json"  # validate: the same bytes while params are valid
WEIGHTS_RECORD = f"{PIPELINE_DIR}/weights.json"  # validate: an outside weights file's SHA-256
EVAL_DIR = f"{PIPELINE_DIR}/eval"
REPORT_DIR = f"{PIPELINE_DIR}/report"
# evaluate's files kept in git (DVC's `cache: false`): the baseline `dvc metrics diff`,
# `dvc plots diff` and `dvc exp show` compare against; the committed default writes them
RESULTS_DIR = "results"
METRICS_FILE = f"{RESULTS_DIR}/metrics.json"  # final scalars (dvc metrics show)
CURVE_FILE = f"{RESULTS_DIR}/accuracy_curve.csv"  # anytime accuracy per task (dvc plots show)
HEATMAP_FILE = f"{RESULTS_DIR}/accuracy_matrix.png"  # accuracy on each task after each (plots)
MAGNITUDES_FILE = f"{RESULTS_DIR}/magnitudes.png"  # the magnitudes' trajectories (dvc plots)
COMPARE_DIR = "runs/compare"  # compare: each seed's splits and each run's JSON (cached)
COMPARE_RESULTS = f"{RESULTS_DIR}/compare"  # compare: table, CSV, plots (in git, like results/)
TUNE_RESULTS = f"{RESULTS_DIR}/tune"  # tune: trials, Pareto front, best params (in git)
OVERRIDES = ("rank", "epochs", "lr")  # what a tasks entry may set for its task alone
WRITE_COMMAND = TASKS_COMMAND
TASKS_COMMENT = (
    f"One train@<key> stage per task, generated from data.* by `{WRITE_COMMAND}`, which\n"
    "keeps per-task overrides (rank, epochs, lr: a change re-runs from that task on)."
)  # written above `tasks:`
FINAL_COMMENT = "what evaluate reads: the last task's output"  # beside `final_task:`
_FINAL_COLUMN = 35  # where FINAL_COMMENT starts (the column of params.yaml's other comments)


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


# ---- what the stages hand each other ---------------------------------------------------------

RECORD = "record.json"  # in every task output: every task's record so far (sdlora.core.records)
BACKBONE_RECORD = "backbone.json"  # in the pretrain output


class StageError(BadInput, RuntimeError):
    """A stage cannot run: an input is missing or does not belong to this configuration."""


def require_plan(cfg: Config) -> dict[int, TaskEntry]:
    """The ``tasks`` section, checked against this layout (every entry's split and prev, and
    ``final_task``); a ConfigError naming the key and the fix when it does not match."""
    if cfg.tasks is None:
        if cfg.final_task is not None:
            raise ConfigError(f"final_task is set but tasks is not; run `{WRITE_COMMAND}`")
        raise ConfigError(f"tasks: params.yaml has no tasks section; run `{WRITE_COMMAND}`")
    for k, entry in cfg.tasks.items():
        for name, want in (("split", task_split(k)), ("prev", task_prev(k))):
            if getattr(entry, name) != want:
                raise ConfigError(
                    f"tasks.{k}.{name} = {getattr(entry, name)!r} but the pipeline writes "
                    f"{want!r} there; run `{WRITE_COMMAND}`"
                )
    want = task_output(len(cfg.tasks) - 1)
    if cfg.final_task != want:
        raise ConfigError(
            f"final_task = {cfg.final_task!r} but the last task's output is {want!r}; "
            f"run `{WRITE_COMMAND}`"
        )
    return cfg.tasks


def known_num_tasks(cfg: Config) -> int | None:
    """How many tasks ``data.*`` makes, when known without reading data (else None)."""
    if cfg.data.tasks is not None:
        return len(cfg.data.tasks)
    total = known_num_classes(cfg.data.dataset)
    return None if total is None else count_tasks(total, cfg.data.init_cls, cfg.data.increment)


def check_known_num_tasks(cfg: Config, source: str) -> None:
    """Refuse a ``tasks`` section whose length differs from the task count ``data.*`` fixes
    (``source`` names it in the message); nothing to check when only the data can tell."""
    known = known_num_tasks(cfg)
    if known is not None:
        cfg.check_num_tasks(known, source)


def read_json(path: Path, what: str, fix: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object another stage wrote, holding ``keys``; a StageError saying ``what`` is
    missing or damaged and the ``fix``."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path} not found: {what} is missing; {fix}") from None
    except json.JSONDecodeError as err:
        raise StageError(f"{path} is not valid JSON ({err}); {fix}") from None
    if not isinstance(doc, dict):
        raise StageError(f"{path} holds a JSON {type(doc).__name__}, not {what}'s object; {fix}")
    if missing := [k for k in keys if k not in doc]:
        raise StageError(f"{path} has no {', '.join(map(repr, missing))}: not {what}; {fix}")
    return doc


def read_backbone_record(backbone: str | Path = BACKBONE_DIR) -> dict[str, Any]:
    """``<backbone>/backbone.json`` (``artifacts/backbone``), written by the pretrain stage."""
    return read_json(
        Path(backbone) / BACKBONE_RECORD,
        "the pretrain stage's output",
        "run `dvc repro`",
        keys=("weights", "sha256"),  # what read_inputs checks
    )


def check_data_root(cfg: Config) -> None:
    """Refuse an on-disk dataset whose ``data.root`` is not a folder (before anything else)."""
    root = cfg.data.root
    if cfg.data.dataset in ON_DISK_DATASETS and root is not None and not Path(root).is_dir():
        raise ConfigError(
            f"data.root = {root!r}: no such folder (dataset {cfg.data.dataset!r}); point it at "
            "the downloaded dataset (docs/data.md says what each one expects)"
        )


def read_inputs(prepared: Prepared, backbone: str | Path = BACKBONE_DIR) -> RunInputs:
    """The run's inputs by content: the prepared splits' hash (from the manifest of the stage's
    opened folder) and the weights' SHA-256 from the pretrain stage's record, after checking
    the weights file still has it (a damaged or replaced file stops the stage)."""
    record = read_backbone_record(backbone)
    sha = record.get("sha256")
    if sha is not None:
        path = Path(record["weights"])
        fix = "`dvc repro` records a replaced file anew; `dvc checkout` restores the embedded one"
        if not path.is_file():
            raise StageError(f"{path} not found (backbone.weights, recorded in {backbone}); {fix}")
        if (actual := file_sha256(path)) != sha:
            raise StageError(
                f"{path} is not the file the pretrain stage recorded (SHA-256 {actual[:12]}..., "
                f"recorded {sha[:12]}...): damaged or replaced since; {fix}"
            )
    return RunInputs(prepared.manifest["content_hash"], sha)


def read_record(folder: str | Path) -> dict[str, Any]:
    """A task output's ``record.json``, its task entries checked (:func:`check_records`)."""
    path = Path(folder) / RECORD
    fix = "run `dvc repro`"
    record = read_json(path, "a train stage's output", fix, keys=("key", "tasks"))
    try:
        check_records(record["tasks"])
    except RecordError as err:
        raise StageError(f"{path}: {err}: not what a train stage wrote; {fix}") from None
    return record


# ---- the params file: the generated section, written plainly ---------------------------------


def _scalar(value: Any) -> str:
    """A task entry's value as YAML: null, a number or a plain path."""
    return "null" if value is None else str(value)


def tasks_block(plan: Mapping[str, Mapping[str, Any]]) -> str:
    """The ``tasks`` and ``final_task`` sections' YAML text, as :func:`write_tasks` writes it:
    the generated comment, one flow mapping per task (str keys, as DVC's foreach wants them)."""
    lines = [f"# {line}" for line in TASKS_COMMENT.splitlines()] + ["tasks:"]
    for key, entry in plan.items():
        cells = ", ".join(f"{name}: {_scalar(v)}" for name, v in entry.items())
        lines.append(f'  "{key}": {{{cells}}}')
    final = f"final_task: {task_output(len(plan) - 1)}"
    lines.append(f"{final.ljust(_FINAL_COLUMN - 1)} # {FINAL_COMMENT}")
    return "\n".join(lines) + "\n"


def _section_span(lines: list[str]) -> tuple[int, int] | None:
    """Where the tasks section lies in ``lines``: from its generated comment (or ``tasks:``)
    through its indented entries and a ``final_task:`` line right after them; None if absent."""
    start = next((i for i, ln in enumerate(lines) if ln.startswith("tasks:")), None)
    if start is None:
        return None
    end = start + 1
    while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():  # blank lines belong to what follows
        end -= 1
    if end < len(lines) and lines[end].startswith("final_task:"):
        end += 1
    comment = [f"# {line}" for line in TASKS_COMMENT.splitlines()]
    if lines[max(start - len(comment), 0) : start] == comment:
        start -= len(comment)
    return start, end


def write_tasks(params_path: str | Path, num_tasks: int) -> dict[str, dict[str, Any]]:
    """Regenerate ``params_path``'s ``tasks`` and ``final_task`` for ``num_tasks`` tasks, keeping
    the per-task overrides (rank, epochs, lr). The section's lines are replaced where they are
    (appended when missing); every other line of the file stays as it is, comments inside the
    section do not. The file is replaced atomically. Returns the new section."""
    path = Path(params_path)
    text = path.read_text()
    raw = read_yaml(text, str(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    old = raw.get("tasks") if isinstance(raw.get("tasks"), Mapping) else {}
    overrides = {int(k): v for k, v in old.items() if isinstance(v, Mapping)}
    plan = plan_tasks(num_tasks, overrides)
    lines = text.splitlines()
    block = tasks_block(plan).splitlines()
    span = _section_span(lines)
    if span is None:  # appended, after a blank line
        lines += [""] if any(ln.strip() for ln in lines) else []
        span = (len(lines), len(lines))
    lines[span[0] : span[1]] = block
    inside = range(span[0], span[0] + len(block))  # a final_task elsewhere: replaced by this one
    lines = [ln for i, ln in enumerate(lines) if i in inside or not ln.startswith("final_task:")]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return plan
