"""What the stages hand each other: task records, the backbone record, the task plan, metrics.

A task output's ``record.json`` holds, for every task so far, its accuracy row, test counts,
rank, epoch log, storage and magnitudes; the evaluate and report stages need nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sdlora import metrics
from sdlora.config import Config, ConfigError, TaskEntry, known_num_classes
from sdlora.plan import BACKBONE_DIR, WRITE_COMMAND, count_tasks

RECORD = "record.json"  # in every task output
BACKBONE_RECORD = "backbone.json"  # in the pretrain output


class StageError(RuntimeError):
    """A stage cannot run: an input is missing or does not belong to this configuration."""


def require_plan(cfg: Config) -> dict[int, TaskEntry]:
    """The ``tasks`` section; a clear error when params.yaml has none."""
    if cfg.tasks is None:
        raise ConfigError(f"tasks: params.yaml has no tasks section; run `{WRITE_COMMAND}`")
    return cfg.tasks


def known_num_tasks(cfg: Config) -> int | None:
    """How many tasks ``data.*`` makes, when known without reading data (else None)."""
    total = known_num_classes(cfg.data.dataset)
    return None if total is None else count_tasks(total, cfg.data.init_cls, cfg.data.increment)


def num_tasks_of(cfg: Config) -> int:
    """How many tasks ``data.*`` makes (the on-disk folder is listed if its class count varies)."""
    known = known_num_tasks(cfg)
    if known is not None:
        return known
    from sdlora.data.benchmarks import open_source

    total = open_source(cfg.data).num_classes
    return count_tasks(total, cfg.data.init_cls, cfg.data.increment)


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


def read_record(folder: str | Path) -> dict[str, Any]:
    """A task output's ``record.json``."""
    return read_json(Path(folder) / RECORD, "a train stage's output", "run `dvc repro`")


def accuracy_matrix(records: list[dict[str, Any]]) -> np.ndarray:
    """The T x T matrix (percent, NaN above the diagonal) from records 0..T-1."""
    for i, rec in enumerate(records):
        if rec["task"] != i or len(rec["accuracy"]) != i + 1:
            raise StageError(f"record of task {i} is malformed (task {rec['task']})")
    return metrics.lower_triangular([rec["accuracy"] for rec in records])


def task_metrics(records: list[dict[str, Any]], task: int) -> dict[str, float]:
    """What MLflow gets at ``step=task``: accuracies, forgetting so far, storage, training cost."""
    R = accuracy_matrix(records[: task + 1])
    rec = records[task]
    epochs = rec["epochs"]  # empty for a method trained without gradients (prototype)
    nan = float("nan")  # not logged (SequenceTracker.log_task skips NaN)
    out = {
        "accuracy": float(metrics.anytime_accuracy(R, rec["counts"])[-1]),
        "forgetting": metrics.forgetting_so_far(R, task),
        **{f"accuracy_task_{j:02d}": float(R[task, j]) for j in range(task + 1)},
        "stored_params": float(rec["storage"]["stored_params"]),
        "stored_bytes": float(rec["storage"]["stored_bytes"]),
        "train_loss": float(epochs[-1]["train_loss"]) if epochs else nan,
        "epoch_seconds": float(np.mean([e["epoch_seconds"] for e in epochs])) if epochs else nan,
        "samples_per_second": (
            float(np.mean([e["samples_per_second"] for e in epochs])) if epochs else nan
        ),
        "rank": float(rec["rank"]),
    }
    if "kd" in rec:  # sdlora_kd: the least-squares fit of the task's direction and the decision
        out |= {
            "kd_rho": float(rec["kd"]["rho"]),
            "kd_residual": float(rec["kd"]["residual"]),
            "kd_folded": float(rec["kd"]["folded"]),
        }
        for key in ("accuracy_before_fold", "accuracy_after_fold"):  # the current task's
            if key in rec["kd"]:
                out[f"kd_{key}"] = float(rec["kd"][key])
    return out
