"""A task's record: what training and evaluating it leaves for the report, in every entry point.

``sdlora run`` (:mod:`sdlora.core.loop`) and the pipeline's ``train@k`` stages build the same
record per task, so their outputs compare cell for cell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from sdlora.core import metrics
from sdlora.errors import BadInput

if TYPE_CHECKING:
    from sdlora.core.model import SDLoRAViT


def task_record(
    model: SDLoRAViT,
    task: int,
    num_classes: int,
    accuracy: list[float],
    counts: list[int],
    epochs: list[dict[str, float]],
) -> dict[str, Any]:
    """Accuracy row, test counts, rank, epoch log, storage and magnitudes after ``task``."""
    record = {
        "task": task,
        "num_classes": int(num_classes),
        "rank": model.task_ranks[task],  # 0 when the method added no component
        "accuracy": accuracy,
        "counts": counts,
        "epochs": epochs,
        "storage": model.storage(),
        "magnitudes": model.magnitudes.alpha.detach().cpu().tolist(),
    }
    kd = next((e for e in model.kd_log if e["task"] == task), None)
    if kd is not None:  # sdlora_kd: the fit and the decision (sdlora.core.kd)
        record["kd"] = kd
    return record


class RecordError(BadInput, ValueError):
    """A task record that is not what training wrote (a damaged or foreign record file)."""


RECORD_KEYS = ("task", "num_classes", "rank", "accuracy", "counts", "epochs", "storage")


def check_records(records: Any) -> None:
    """Refuse task records 0..T-1 that are not what :func:`task_record` builds: the keys, and
    row ``i``'s ``accuracy`` and ``counts`` as ``i + 1`` numbers (a RecordError naming the task)."""
    if not isinstance(records, list):
        raise RecordError(f"'tasks' is a {type(records).__name__}, not a list of task records")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise RecordError(f"the record of task {i} is a {type(rec).__name__}, not an object")
        if missing := [k for k in RECORD_KEYS if k not in rec]:
            raise RecordError(f"the record of task {i} has no {', '.join(map(repr, missing))}")
        if rec["task"] != i:
            raise RecordError(f"entry {i} is the record of task {rec['task']!r}, not of task {i}")
        for key in ("accuracy", "counts"):
            row = rec[key]
            if (
                not isinstance(row, list)
                or len(row) != i + 1
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in row)
            ):
                raise RecordError(f"task {i}'s {key!r} is not a list of {i + 1} numbers")


def accuracy_matrix(records: list[dict[str, Any]]) -> np.ndarray:
    """The T x T matrix (percent, NaN above the diagonal) from records 0..T-1."""
    check_records(records)
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
