"""Stage evaluate: matrix, metrics.json, curve and plots from the last task's record.

metrics.json and the curve go to results/ (kept in git), the rest to the cached eval folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sdlora.cli import stage_main
from sdlora.config import load_config
from sdlora.core import metrics
from sdlora.pipeline.evaluate import evaluate_stage
from sdlora.pipeline.layout import (
    CURVE_FILE,
    EVAL_DIR,
    HEATMAP_FILE,
    MAGNITUDES_FILE,
    METRICS_FILE,
    RECORD,
    RESULTS_DIR,
    StageError,
    task_output,
)


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
    assert json.loads(Path(METRICS_FILE).read_text()) == final
    assert METRICS_FILE == "results/metrics.json" and CURVE_FILE == "results/accuracy_curve.csv"
    assert final["final_accuracy"] == want["final_accuracy"] == 75.0
    assert final["forgetting"] == want["forgetting"] and final["stored_params"] == 20
    matrix, counts = metrics.read_matrix_csv(ev / "accuracy_matrix.csv")
    np.testing.assert_array_equal(matrix, R)
    assert list(counts) == [10, 30]
    curve = Path(CURVE_FILE).read_text().splitlines()
    assert curve == ["task,accuracy", "0,90.0000", "1,75.0000"]
    for png in (ev / "accuracy_curve.png", Path(HEATMAP_FILE), Path(MAGNITUDES_FILE)):
        assert png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in ev.iterdir()) == [
        "accuracy_curve.png", "accuracy_matrix.csv", "results.json",
    ]  # fmt: skip
    assert sorted(p.name for p in Path(RESULTS_DIR).iterdir()) == [
        "accuracy_curve.csv", "accuracy_matrix.png", "magnitudes.png", "metrics.json"
    ]  # fmt: skip
    assert evaluate_stage(cfg) == final  # a second run replaces both (DVC re-runs in place)


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
    assert not Path(EVAL_DIR).exists() and not Path(RESULTS_DIR).exists()


def test_evaluate_reads_and_writes_where_it_is_told(
    write_params: Callable[..., Path], records: list[dict]
) -> None:
    cfg = load_config(write_params("data: {dataset: digits, init_cls: 4, increment: 6}\n", 2))
    rec = Path("somewhere/last")
    rec.mkdir(parents=True)
    (rec / RECORD).write_text(json.dumps({"key": "k", "tasks": records}))
    args = ["--record", str(rec), "--out", "ev", "--metrics", "m/final.json", "--curve", "c.csv",
            "--heatmap", "i/h.png", "--magnitudes", "i/m.png"]  # fmt: skip
    assert stage_main("evaluate", args) == 0
    assert sorted(p.name for p in Path("i").iterdir()) == ["h.png", "m.png"]
    assert json.loads(Path("m/final.json").read_text())["final_accuracy"] == 75.0
    assert Path("c.csv").read_text().startswith("task,accuracy\n")
    assert (Path("ev") / "accuracy_matrix.csv").is_file()
    assert not Path(EVAL_DIR).exists() and not Path(RESULTS_DIR).exists()
    final = evaluate_stage(
        cfg, record=rec, out="ev2", metrics_file="ev2.json", curve_file="c2",
        heatmap_file="h2.png", magnitudes_file="m2.png",
    )  # fmt: skip
    assert final["final_accuracy"] == 75.0 and Path("ev2.json").is_file()
