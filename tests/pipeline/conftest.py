"""Stage tests run in a fresh project root each: the stages read and write relative paths."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sdlora.pipeline.layout import write_tasks


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages read and write relative to the project root: run each test in its own, with the
    project's default MLflow store (an earlier test in this process may have set
    MLFLOW_TRACKING_URI: ``mlflow.set_tracking_uri`` exports it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _write_params(text: str, tasks: int | None) -> Path:
    path = Path("params.yaml")
    path.write_text("progress: false\n" + text)
    if tasks is not None:
        write_tasks(path, tasks)
    return path


def _record(task: int, accuracy: list[float], counts: list[int]) -> dict:
    """A task record as train@k writes it (two epochs, rank 4)."""
    return {
        "task": task,
        "num_classes": 2,
        "rank": 4,
        "accuracy": accuracy,
        "counts": counts,
        "epochs": [
            {"train_loss": 2.0, "epoch_seconds": 1.0, "samples_per_second": 10.0},
            {"train_loss": 1.0 + task, "epoch_seconds": 3.0, "samples_per_second": 30.0},
        ],
        "storage": {"stored_params": 10 * (task + 1), "stored_bytes": 40 * (task + 1)},
        "magnitudes": [[1.0]] * (task + 1),
    }


@pytest.fixture
def write_params() -> Callable[..., Path]:
    """``write_params(text, tasks)``: ``params.yaml`` here, with ``text`` (progress bars off)
    and a tasks section for ``tasks`` tasks (none for None)."""
    return _write_params


@pytest.fixture
def records() -> list[dict]:
    """Records of a 2-task sequence: after task 0 [90], after task 1 [60, 80]; counts 10, 30."""
    return [_record(0, [90.0], [10]), _record(1, [60.0, 80.0], [10, 30])]
