"""A task's record: what training and evaluating it leaves for the report, in every entry point.

``sdlora run`` (:mod:`sdlora.sequence`) and the pipeline's ``train@k`` stages build the same
record per task, so their outputs compare cell for cell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdlora.model import SDLoRAViT


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
    if kd is not None:  # sdlora_kd: the fit and the decision (sdlora.kd)
        record["kd"] = kd
    return record
