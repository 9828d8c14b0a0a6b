"""What a ``train@k`` stage checks on the driver before it starts Ray or writes anything.

Ray Train workers read the prepared Parquet splits, the previous task's adapter and the backbone
weights; a bad file found there costs a worker traceback per retry and names no file. So the
stage reads each of them here first (Parquet footers and schemas, the adapter's header, the
backbone loaded into the configured timm model, the previous adapter loaded into it) and turns
the first problem into one of the stages' bad-input errors: one line naming the file and the fix.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import SafetensorError

from sdlora.config import Config, check_pipeline_method
from sdlora.core.checkpoint import AdapterMismatchError, load_adapter, read_header
from sdlora.core.model import ModelSettingError, SDLoRAViT
from sdlora.core.train import build_model, check_settings
from sdlora.data.prepare import (
    PARQUET_SCHEMA,
    Prepared,
    PreparedLike,
    open_prepared,
    reprepare,
)
from sdlora.data.source import DataError
from sdlora.pipeline.layout import StageError

# What loading a weights or adapter file raises when the file is damaged or foreign.
LOAD_ERRORS = (ValueError, RuntimeError, OSError, EOFError, SafetensorError, pickle.PickleError)
MAX_REASON = 400  # characters of a low-level reason kept (a state_dict error lists every key)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())


def _reason(err: BaseException, path: Path) -> str:
    """The low-level reason of ``err`` on one line, without a leading ``path:`` it may repeat."""
    text = one_line(str(err.__cause__ or err))
    for prefix in (f"{path}: ", f"{path.resolve()}: "):
        text = text.removeprefix(prefix)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 4] + " ..."


def check_task_inputs(
    cfg: Config, task: int, prepared: Prepared, prev_adapter: str | Path | None
) -> SDLoRAViT:
    """Check everything task ``task``'s workers and evaluation read; raise one bad-input error.
    Returns the model it built to check them, after tasks ``0..task-1`` (the stage's one model).

    ``prepared``: the prepare stage's folder, opened; ``prev_adapter``: task ``task - 1``'s
    adapter file (None for task 0). Order: params, Parquet splits, backbone, previous adapter.
    """
    check_run_params(cfg)
    check_splits(prepared, task)
    model = check_backbone(cfg)
    if prev_adapter is not None:
        check_prev_adapter(model, task, Path(prev_adapter))
    return model


def check_run_params(cfg: Config) -> None:
    """A per-task method and what params alone decide (``check_settings``)."""
    check_pipeline_method(cfg)
    check_settings(cfg, cfg.ray.num_workers)


def stage_files(prepared: Prepared, task: int) -> list[tuple[int, dict[str, Any]]]:
    """``(task, split entry)`` of every split task ``task``'s stage reads: its train split
    (training, class means) and the test splits of tasks ``0..task`` (evaluation)."""
    entries = prepared.tasks
    wanted = [(task, entries[task]["train"])]
    return wanted + [(t, entries[t]["test"]) for t in range(task + 1)]


def check_splits(prepared: PreparedLike, task: int) -> None:
    """Every Parquet file the stage reads has a readable footer, the prepare stage's schema,
    its task.json's row count and its SHA-256."""
    prepared = open_prepared(prepared)
    if not 0 <= task < prepared.num_tasks:
        raise DataError(
            f"{prepared} holds tasks 0..{prepared.num_tasks - 1}, not task {task}; "
            f"{reprepare(task)}"
        )
    for t, entry in stage_files(prepared, task):
        check_split(prepared.folder / entry["file"], entry.get("rows"), prepared.task_file(t), t)
    prepared.verify([(task, "train"), *((t, "test") for t in range(task + 1))])  # the bytes


def check_split(path: Path, rows: int | None, listed: Path, task: int | None = None) -> None:
    """One prepared split: footer readable, schema as prepared, ``rows`` rows if given
    (``listed``: the file that lists it; ``task``: its task, for the fix)."""
    fix = reprepare(task)
    try:
        meta = pq.ParquetFile(path)
    except FileNotFoundError:
        raise DataError(f"{path} not found (listed in {listed}); {fix}") from None
    except (OSError, pa.ArrowException) as err:
        raise DataError(
            f"{path} is not a readable Parquet file ({_reason(err, path)}): it was truncated or "
            f"overwritten; {fix}"
        ) from None
    diff = schema_diff(meta.schema_arrow, PARQUET_SCHEMA)
    if diff:
        raise DataError(
            f"{path} does not have the prepare stage's columns ({diff}): it was not written by "
            f"this sdlora's prepare stage; {fix}"
        )
    if rows is not None and meta.metadata.num_rows != rows:
        raise DataError(
            f"{path} holds {meta.metadata.num_rows} rows but {listed} lists {rows}: the file "
            f"was replaced after the prepare stage; {fix}"
        )


def schema_diff(got: pa.Schema, want: pa.Schema) -> str:
    """How ``got``'s columns differ from ``want``'s, on one line ('' if they are the same)."""
    diffs = [f"no column {name!r}" for name in want.names if name not in got.names]
    diffs += [f"extra column {name!r}" for name in got.names if name not in want.names]
    for field in want:
        if field.name not in got.names:
            continue
        have = got.field(field.name)
        if have.type != field.type:
            diffs.append(f"column {field.name!r} is {have.type}, not {field.type}")
        elif have.nullable != field.nullable:
            diffs.append(f"column {field.name!r} {'allows' if have.nullable else 'forbids'} nulls")
    if not diffs and got.names != want.names:
        diffs.append(f"columns in the order {got.names}, not {want.names}")
    return "; ".join(diffs)


def check_backbone(cfg: Config) -> SDLoRAViT:
    """The model the workers build: the configured timm ViT with ``backbone.weights`` loaded."""
    bb = cfg.backbone
    model = f"{bb.name!r} with backbone.kwargs {bb.kwargs}"
    if bb.weights is None:
        what = f"cannot build {model}"
        fix = "fix `backbone.name` or `backbone.kwargs` in params.yaml"
    elif bb.weights == "timm":
        what = f"cannot load timm's pretrained weights into {model}"
        fix = "let timm fetch them (network or its cache) or name a local file in backbone.weights"
    else:
        what = f"{bb.weights} cannot be loaded into {model}"
        fix = "re-create it with `dvc repro -f pretrain` or fix `backbone.weights` in params.yaml"
        if not Path(bb.weights).is_file():
            raise StageError(f"{bb.weights} not found (backbone.weights); {fix}")
    try:
        return build_model(cfg)
    except ModelSettingError as err:  # the backbone is fine: a model.* key does not fit it
        raise StageError(f"{err}; fix it in params.yaml") from None
    except (*LOAD_ERRORS, TypeError) as err:  # TypeError: timm refusing a backbone.kwargs key
        raise StageError(f"{what} ({_reason(err, Path(str(bb.weights)))}); {fix}") from None


def check_prev_adapter(model: SDLoRAViT, task: int, path: Path) -> None:
    """Task ``task - 1``'s adapter: readable, of tasks ``0..task-1``, fits ``model``, loads."""
    fix = f"re-run the previous task's stage with `dvc repro -f train@{task - 1}`"
    if not path.is_file():
        raise StageError(f"{path} not found (the previous task's adapter); {fix}")
    try:
        head = read_header(path)
    except (ValueError, OSError) as err:
        raise StageError(
            f"{path} is not a readable adapter file ({_reason(err, path)}): it was truncated or "
            f"overwritten; {fix}"
        ) from None
    held = len(head.get("task_classes") or [])
    if held != task:
        raise StageError(
            f"{path} holds the adapter of {held} task(s), but task {task} starts from tasks "
            f"0..{task - 1}: it is not task {task - 1}'s output; {fix}"
        )
    try:
        load_adapter(model, path)
    except AdapterMismatchError as err:
        diffs = str(err).splitlines()[1:]  # after "adapter PATH does not fit this model:"
        raise AdapterMismatchError(
            f"{path} was trained with other settings ({'; '.join(d.strip() for d in diffs)}): "
            f"params changed since task {task - 1} ran; re-run it with `dvc repro train@{task - 1}`"
            " or restore the params it was trained with"
        ) from None
    except LOAD_ERRORS as err:
        raise StageError(
            f"{path} is a corrupt adapter ({_reason(err, path)}): it was truncated or "
            f"overwritten; {fix}"
        ) from None
