"""One runtime: `sdlora run` and the pipeline's stages give the same accuracy matrix
(test_dvc_pipeline.py re-runs a task stage in a moved project: nothing absolute is kept).

The stages run as library calls in a temporary project (no DVC), on Ray started in this process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from sdlora.config import load_config
from sdlora.core.loop import run_sequence
from sdlora.core.metrics import read_matrix_csv
from sdlora.pipeline.evaluate import evaluate_stage
from sdlora.pipeline.layout import EVAL_DIR, PREPARED_DIR, task_output, write_tasks
from sdlora.pipeline.prepare import prepare_stage
from sdlora.pipeline.pretrain import pretrain_stage
from sdlora.pipeline.report import report_stage
from sdlora.pipeline.train import train_stage

pytestmark = pytest.mark.slow
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

PARAMS = {
    "seed": 2,
    "progress": False,
    "data": {"dataset": "digits", "init_cls": 5, "increment": 5, "image_size": 16,
             "augment": "none"},
    "backbone": {"name": "vit_tiny_patch16_224", "weights": None,
                 "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2,
                            "num_heads": 2}},
    "model": {"rank": 3},
    "train": {"optimizer": "adam", "lr": 0.01, "epochs": 2, "batch_size": 64},
    "ray": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 0},
}  # fmt: skip
ARGV = ["--task", "1", "--params", "params.yaml"]


def test_run_equals_the_pipeline(
    ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = tmp_path / "first"
    project.mkdir()
    monkeypatch.chdir(project)
    Path("params.yaml").write_text(yaml.safe_dump(PARAMS))
    write_tasks("params.yaml", 2)
    cfg = load_config("params.yaml")
    prepare_stage(cfg)
    pretrain_stage(cfg)
    for task in (0, 1):
        train_stage(cfg, task)
    final = evaluate_stage(cfg)
    assert report_stage(cfg)["metrics"] == final
    pipeline, _ = read_matrix_csv(Path(EVAL_DIR) / "accuracy_matrix.csv")

    result = run_sequence(cfg, PREPARED_DIR)  # train.threads: 1 here and in the Ray worker
    np.testing.assert_array_equal(result.matrix, pipeline)
    assert np.isfinite(pipeline[1]).all() and pipeline[0, 0] > 20  # 5 classes: chance is 20 %
    ran = [r["epochs"] for r in result.records]
    staged_log = json.loads((Path(task_output(1)) / "train.json").read_text())["epochs"]
    assert [e["train_loss"] for e in ran[1]] == [e["train_loss"] for e in staged_log]
