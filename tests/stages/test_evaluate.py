"""Stage evaluate: matrix, metrics.json, curve and plots from the last task's record."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sdlora import metrics
from sdlora.config import load_config
from sdlora.plan import EVAL_DIR, task_output
from sdlora.stages.evaluate import METRICS, evaluate_stage, main
from sdlora.stages.records import RECORD, StageError


def test_evaluate_writes_matrix_metrics_curve_and_plots(
    write_params: Callable[..., Path], records: list[dict]
) -> None:
    cfg = load_config(write_params("data: {dataset: digits, init_cls: 4, increment: 6}\n", 2))
    out = Path(task_output(1))
    out.mkdir(parents=True)
    (out / RECORD).write_text(json.dumps({"key": "k", "mlflow_run_id": "r", "tasks": records}))
    final = evaluate_stage(cfg)
    ev = Path(EVAL_DIR)
    R = np.array([[90.0, np.nan], [60.0, 80.0]])
    want = metrics.summarize(R, [10, 30])
    assert json.loads((ev / METRICS).read_text()) == final
    assert final["final_accuracy"] == want["final_accuracy"] == 75.0
    assert final["forgetting"] == want["forgetting"] and final["stored_params"] == 20
    matrix, counts = metrics.read_matrix_csv(ev / "accuracy_matrix.csv")
    np.testing.assert_array_equal(matrix, R)
    assert list(counts) == [10, 30]
    curve = (ev / "accuracy_curve.csv").read_text().splitlines()
    assert curve == ["task,accuracy", "0,90.0000", "1,75.0000"]
    for png in ("accuracy_matrix.png", "accuracy_curve.png", "magnitudes.png"):
        assert (ev / png).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_refuses_an_incomplete_sequence(
    write_params: Callable[..., Path], records: list[dict]
) -> None:
    cfg = load_config(write_params("data: {dataset: digits, init_cls: 4, increment: 6}\n", 2))
    with pytest.raises(StageError, match=r"record.json not found: a train stage's output"):
        evaluate_stage(cfg)
    out = Path(task_output(1))
    out.mkdir(parents=True)
    (out / RECORD).write_text(json.dumps({"key": "k", "tasks": records[:1]}))
    with pytest.raises(StageError, match="holds 1 tasks, not 2"):
        evaluate_stage(cfg)
    assert not Path(EVAL_DIR).exists()


def test_evaluate_reads_and_writes_where_it_is_told(
    write_params: Callable[..., Path], records: list[dict]
) -> None:
    cfg = load_config(write_params("data: {dataset: digits, init_cls: 4, increment: 6}\n", 2))
    rec = Path("somewhere/last")
    rec.mkdir(parents=True)
    (rec / RECORD).write_text(json.dumps({"key": "k", "tasks": records}))
    assert main(["--record", str(rec), "--out", "ev"]) == 0
    assert json.loads(Path("ev", METRICS).read_text())["final_accuracy"] == 75.0
    assert not Path(EVAL_DIR).exists()
    assert evaluate_stage(cfg, record=rec, out="ev2")["final_accuracy"] == 75.0
