"""Where the DVC pipeline's stages read and write, and the per-task stage list it runs.

``dvc.yaml``'s ``train`` stage is a ``foreach`` over the ``tasks`` section of ``params.yaml``:
one ``train@<key>`` stage per task, each naming its own split and what it starts from (the
backbone for task 0, the previous task's output after that), so DVC chains them. The section
follows ``data.*``: ``python -m sdlora tasks --write`` regenerates it (keeping per-task
overrides), and the stages refuse a section that does not match the prepared data.

The file is edited with ruamel.yaml's round-trip mode (what DVC uses to rewrite params.yaml for
``dvc exp run -S``): comments, key order and the rest of the file survive a rewrite.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.representer import RoundTripRepresenter
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

if TYPE_CHECKING:
    pass

from sdlora.config import (
    TASKS_COMMAND,
    Config,
    ConfigError,
    RunInputs,
    TaskEntry,
    known_num_classes,
)
from sdlora.errors import BadInput

PREPARED_DIR = "data/prepared"  # prepare: per-task Parquet splits + manifest.json
BACKBONE_DIR = "artifacts/backbone"  # pretrain: backbone.json (+ the embedded weights)
PIPELINE_DIR = "runs/pipeline"  # train@k: task_<k>/; evaluate: eval/; report: report/
VALIDATED = f"{PIPELINE_DIR}/params_valid.json"  # validate: the same bytes while params are valid
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
    total = known_num_classes(cfg.data.dataset)
    return None if total is None else count_tasks(total, cfg.data.init_cls, cfg.data.increment)


def read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A JSON file another stage wrote; a StageError saying ``what`` is missing and the ``fix``."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path} not found: {what} is missing; {fix}") from None
    except json.JSONDecodeError as err:
        raise StageError(f"{path} is not valid JSON ({err}); {fix}") from None


def read_backbone_record(backbone: str | Path = BACKBONE_DIR) -> dict[str, Any]:
    """``<backbone>/backbone.json`` (``artifacts/backbone``), written by the pretrain stage."""
    return read_json(
        Path(backbone) / BACKBONE_RECORD, "the pretrain stage's output", "run `dvc repro`"
    )


def read_inputs(manifest: dict[str, Any], backbone: str | Path = BACKBONE_DIR) -> RunInputs:
    """The run's inputs by content: the prepared splits' ``manifest`` (read once by the stage)
    and the pretrain stage's record in ``backbone``."""
    return RunInputs(manifest["content_hash"], read_backbone_record(backbone).get("sha256"))


def read_record(folder: str | Path) -> dict[str, Any]:
    """A task output's ``record.json``."""
    return read_json(Path(folder) / RECORD, "a train stage's output", "run `dvc repro`")


# ---- the params file, edited round-trip ------------------------------------------------------


class _Representer(RoundTripRepresenter):
    """ruamel's round-trip representer, but None is written ``null`` (ruamel writes nothing).

    A subclass: ruamel's own class, which DVC also uses in this process, stays as it is.
    """


_Representer.add_representer(
    type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
)


def _yaml() -> YAML:
    y = YAML()  # round-trip: comments, key order, quoting and flow/block style are kept
    y.Representer = _Representer
    y.preserve_quotes = True
    y.width = 4096  # never fold a line (each task entry is one flow mapping on one line)
    return y


def _entries(plan: Mapping[str, Mapping[str, Any]]) -> CommentedMap:
    """The ``tasks`` mapping: double-quoted str keys (DVC's foreach wants str), flow entries."""
    tasks = CommentedMap()
    for key, entry in plan.items():
        flow = CommentedMap(entry)
        flow.fa.set_flow_style()
        tasks[DoubleQuotedScalarString(key)] = flow
    return tasks


def _last_line_comment(node: CommentedMap) -> tuple[CommentedMap, Any] | None:
    """The mapping and key whose end-of-line comment is on ``node``'s last line, if any."""
    key = list(node)[-1]
    value = node[key]
    if isinstance(value, CommentedMap) and len(value) and not value.fa.flow_style():
        return _last_line_comment(value)  # a block-style entry: its last line is inside it
    item = node.ca.items.get(key)
    return (node, key) if item and len(item) > 2 and item[2] is not None else None


def _keep_comments(old: CommentedMap, new: CommentedMap) -> tuple[str, Any]:
    """Carry ``old``'s entry comments over to the same keys of ``new``; return the tail.

    ruamel glues the lines after a line with an end-of-line comment (blank lines, a comment on
    its own line) to that comment. Lines glued to an entry belong to the next entry: dropped
    with it when it goes. Lines glued to the section's last line belong to what follows the
    section: that tail is cut off and returned (with the comment token it came in, or None) for
    the caller to put after the new section.
    """
    tail, token = "", None
    last = _last_line_comment(old) if len(old) else None
    if last is not None:
        node, key = last
        token = copy.copy(node.ca.items[key][2])
        eol, _, tail = token.value.partition("\n")
        token.value = eol + "\n"
        node.ca.items[key] = [*node.ca.items[key][:2], token, *node.ca.items[key][3:]]
    keys = list(old)
    for i, key in enumerate(keys):
        if str(key) not in new or key not in old.ca.items:
            continue
        item = list(old.ca.items[key])
        glued = item[2] is not None and "\n" in item[2].value.rstrip("\n")
        if glued and i + 1 < len(keys) and str(keys[i + 1]) not in new:
            item[2] = copy.copy(item[2])
            item[2].value = item[2].value.partition("\n")[0] + "\n"
        new.ca.items[str(key)] = item
    return tail, token


def _append_tail(node: CommentedMap, key: Any, tail: str, template: Any) -> None:
    """Put ``tail`` (whole comment lines) after ``node[key]``'s line."""
    item = node.ca.items.setdefault(key, [None, None, None, None])
    line_end = item[2].value.rstrip("\n") + "\n" if item[2] is not None else "\n"
    token = copy.copy(item[2] if item[2] is not None else template)
    token.value = line_end + tail
    item[2] = token


def _set_tasks(doc: CommentedMap, plan: Mapping[str, Mapping[str, Any]], commented: bool) -> None:
    """Put ``plan`` and its ``final_task`` into ``doc``: where the old ones were, or at the end.

    ``commented``: the generated comment is already in the file (above ``tasks``, where ruamel
    keeps it with the line before; it stays).
    """
    tasks = _entries(plan)
    old = doc.get("tasks")
    tail, token = _keep_comments(old, tasks) if isinstance(old, CommentedMap) else ("", None)
    appended = "tasks" not in doc
    doc["tasks"] = tasks  # an existing key keeps its place and its comments
    if not commented:
        doc.yaml_set_comment_before_after_key(
            "tasks", before=("\n" if appended and len(doc) > 1 else "") + TASKS_COMMENT
        )
    final = task_output(len(plan) - 1)
    if "final_task" in doc:
        doc["final_task"] = final
        if tail:
            _append_tail(tasks, list(tasks)[-1], tail, token)
    else:  # right after tasks, before what followed it
        doc.insert(list(doc).index("tasks") + 1, "final_task", final)
        doc.yaml_add_eol_comment(FINAL_COMMENT, "final_task", column=_FINAL_COLUMN)
        if tail:
            _append_tail(doc, "final_task", tail, token)


def tasks_block(plan: Mapping[str, Mapping[str, Any]]) -> str:
    """The ``tasks`` and ``final_task`` sections' YAML text, as :func:`write_tasks` writes it."""
    doc = CommentedMap()
    _set_tasks(doc, plan, commented=False)
    out = io.StringIO()
    _yaml().dump(doc, out)
    return out.getvalue()


def write_tasks(params_path: str | Path, num_tasks: int) -> dict[str, dict[str, Any]]:
    """Regenerate ``params_path``'s ``tasks`` section for ``num_tasks`` tasks, keeping overrides.

    Only ``tasks`` and ``final_task`` change, edited round-trip: every other line of the file
    (comments included) is kept, and so are the comments on entries that stay. The sections stay
    where they were, or are appended (with the generated comment) when missing. The file is
    replaced atomically. Returns the new section.
    """
    from sdlora.files import atomic_path

    path = Path(params_path)
    text = path.read_text()
    y = _yaml()
    doc = y.load(text)
    if doc is None:
        doc = CommentedMap()
    if not isinstance(doc, CommentedMap):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(doc).__name__}")
    old = doc.get("tasks")
    old = old if isinstance(old, Mapping) else {}
    overrides = {int(k): v for k, v in old.items() if isinstance(v, Mapping)}
    plan = plan_tasks(num_tasks, overrides)
    _set_tasks(doc, plan, commented=TASKS_COMMENT.splitlines()[0] in text)
    with atomic_path(path) as tmp, tmp.open("w") as f:
        y.dump(doc, f)
    return plan
