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
from itertools import accumulate
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
    parse_config,
    read_yaml,
)
from sdlora.core.records import RecordError, check_records
from sdlora.errors import BadInput
from sdlora.files import atomic_path, file_sha256

PREPARED_DIR = "data/prepared"  # prepare@k: task_XX/ (Parquet splits + task.json)
BACKBONE_DIR = "artifacts/backbone"  # pretrain: backbone.json (+ the embedded weights)
PIPELINE_DIR = "runs/pipeline"  # train@k: task_<k>/; evaluate: eval/; report: report/
VALIDATED = f"{PIPELINE_DIR}/params_valid.json"  # validate: the same bytes while params are valid
WEIGHTS_RECORD = f"{PIPELINE_DIR}/weights.json"  # validate: an outside weights file's SHA-256
DATA_RECORD = f"{PIPELINE_DIR}/data.json"  # validate: data.* but data.tasks (prepare@k, train@k)
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
    "One prepare@<key> and train@<key> stage per task, generated from data.* by\n"
    f"`{WRITE_COMMAND}`, which keeps per-task overrides (rank, epochs, lr: a change\n"
    "re-runs from that task on)."
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


Span = tuple[int, list[str] | None]  # a task's first label and its classes by name (or None)


def task_spans(cfg: Config, num_tasks: int) -> list[Span]:
    """Where each task's labels start and its classes by name, as ``data.*`` cuts them: what
    ``tasks.<k>.label_offset`` and ``tasks.<k>.classes`` hold (classes None: the seeded order's,
    known once the data are read). ``prepare@k`` and ``train@k`` track them, so a task whose
    classes change re-runs while its neighbours' stages stay."""
    d = cfg.data
    if d.tasks is None:
        return [(0 if k == 0 else d.init_cls + (k - 1) * d.increment, None)
                for k in range(num_tasks)]  # fmt: skip
    if num_tasks != len(d.tasks):
        raise ConfigError(
            f"tasks: params.yaml lists {num_tasks} task(s) but data.tasks lists {len(d.tasks)}; "
            f"run `{WRITE_COMMAND}` to regenerate the stage list"
        )
    offsets = accumulate(map(len, d.tasks), initial=0)
    return [(offset, list(names)) for offset, names in zip(offsets, d.tasks, strict=False)]


def plan_tasks(
    num_tasks: int,
    overrides: Mapping[int, Mapping[str, Any]] | None = None,
    spans: list[Span] | None = None,
) -> dict[str, dict[str, Any]]:
    """The ``tasks`` section for ``num_tasks`` tasks; ``overrides[k]`` is kept in entry k,
    ``spans[k]`` (:func:`task_spans`) gives its label offset and classes (default: none).

    Every entry lists every override (null when unset) so that ``dvc exp run -S
    tasks.3.rank=4`` finds the key.
    """
    out = {}
    for k in range(num_tasks):
        given = (overrides or {}).get(k, {})
        extra = {n: given.get(n) for n in OVERRIDES}  # null: the global setting
        offset, classes = spans[k] if spans is not None else (None, None)
        out[str(k)] = {"split": task_split(k), "prev": task_prev(k), **extra,
                       "label_offset": offset, "classes": classes}  # fmt: skip
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
    for k, (offset, classes) in enumerate(task_spans(cfg, len(cfg.tasks))):
        entry, fix = cfg.tasks[k], f"run `{WRITE_COMMAND}` (it says which stages re-run)"
        if entry.classes != classes:
            data = (
                "data.tasks is unset (null)" if classes is None else f"data.tasks[{k}] = {classes}"
            )
            raise ConfigError(f"tasks.{k}.classes = {entry.classes} but {data}; {fix}")
        if entry.label_offset != offset:
            raise ConfigError(
                f"tasks.{k}.label_offset = {entry.label_offset} but data.* starts task {k}'s "
                f"labels at {offset}; {fix}"
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
    return RunInputs(tuple(prepared.manifest["task_hashes"]), sha)


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
    """A task entry's value as YAML: null, a number, a plain path or a list of class names
    (each quoted: "0" stays a name, not a number)."""
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in value) + "]"
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


def plan_changes(old: Mapping[str, Any], new: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What replacing the tasks section ``old`` (as read from the file) by ``new`` makes `dvc
    repro` run, one line each: the first task whose classes, label offset or overrides change
    re-runs with every task after it; added tasks run; removed tasks' stages go."""

    def entry(plan: Mapping[str, Any], k: int) -> Mapping[str, Any]:
        value = plan.get(str(k), plan.get(k))  # type: ignore[call-overload]
        return value if isinstance(value, Mapping) else {}

    n_old, n_new = len(old), len(new)
    data = [
        k
        for k in range(min(n_old, n_new))
        if any(entry(old, k).get(n) != entry(new, k).get(n) for n in ("label_offset", "classes"))
    ]
    train = [k for k in range(min(n_old, n_new))
             if any(entry(old, k).get(n) != entry(new, k).get(n) for n in OVERRIDES)]  # fmt: skip

    def stages(name: str, ks: list[int]) -> str:
        if len(ks) > 2 and ks == list(range(ks[0], ks[-1] + 1)):
            return f"{name}@{ks[0]} .. {name}@{ks[-1]}"
        return ", ".join(f"{name}@{k}" for k in ks)

    def kept_tasks(n: int) -> str:
        return "task 0 stays as it is" if n == 1 else f"tasks 0 .. {n - 1} stay as they are"

    lines = []
    if data or train:
        first = min(data + train)
        what = "classes or label offset" if first in data else "overrides"
        redo = ", ".join(filter(None, [stages("prepare", data),
                                       stages("train", list(range(first, n_new)))]))  # fmt: skip
        kept = f"; {kept_tasks(first)}" if first else ""
        lines.append(f"task {first}'s {what} change: {redo} re-run{kept}")
    if n_new > n_old:
        added = f"{n_old}" if n_new == n_old + 1 else f"{n_old} .. {n_new - 1}"
        lines.append(
            f"task {added} added: its prepare@ and train@ stages run"
            + ("" if data or train else f"; {kept_tasks(n_old)}")
        )
    if n_new < n_old:
        gone = f"{n_new}" if n_old == n_new + 1 else f"{n_new} .. {n_old - 1}"
        lines.append(f"task {gone} removed: its stages go (their folders stay on disk, unused)")
    if lines:
        lines.append("evaluate and report re-run; a new registered model version is gated")
    return lines or ["no stage changes"]


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
    top = start  # the generated comment above, this version's or an earlier one's
    while top > 0 and lines[top - 1].startswith("# "):
        top -= 1
        if lines[top].startswith("# One ") and "@<key> stage" in lines[top]:
            start = top
            break
    return start, end


def write_tasks(params_path: str | Path, num_tasks: int) -> dict[str, dict[str, Any]]:
    """Regenerate ``params_path``'s ``tasks`` and ``final_task`` for ``num_tasks`` tasks, each
    entry's classes and label offset from the file's ``data.*`` (:func:`task_spans`), keeping
    the per-task overrides (rank, epochs, lr). The section's lines are replaced where they are
    (appended when missing); every other line of the file stays as it is, comments inside the
    section do not. The file is replaced atomically. Returns the new section."""
    path = Path(params_path)
    text = path.read_text()
    raw = read_yaml(text, str(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    old = raw.pop("tasks", None)
    old = old if isinstance(old, Mapping) else {}
    raw.pop("final_task", None)
    overrides = {int(k): v for k, v in old.items() if isinstance(v, Mapping)}
    spans = task_spans(parse_config(raw, str(path)), num_tasks)  # the section: not checked
    plan = plan_tasks(num_tasks, overrides, spans)
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
