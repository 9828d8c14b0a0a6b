"""One runtime: `sdlora run` and the pipeline's stages give the same accuracy matrix; a finished
project moved to another folder re-runs a task stage there (nothing absolute is kept).

The stages run as library calls in a temporary project (no DVC), on Ray started in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from sdlora.config import load_config
from sdlora.core.loop import run_sequence
from sdlora.core.metrics import read_matrix_csv
from sdlora.ops.ray_train import ADAPTER
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


def test_run_equals_the_pipeline_and_a_moved_project_reruns(
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

    # Copy the finished project, put the original out of reach, and re-run its last task in the
    # copy (a new process, as `dvc repro` runs it): Ray's finished run is restored (nothing
    # absolute in the fingerprint, checkpoint or run name) and the adapter is the same bytes.
    adapter = (Path(task_output(1)) / ADAPTER).read_bytes()
    copy = tmp_path / "copy"
    shutil.copytree(project, copy)
    monkeypatch.chdir(copy)
    project.rename(tmp_path / "gone")
    shutil.rmtree(task_output(1))
    rerun = f"from sdlora.cli import stage_main; raise SystemExit(stage_main('train', {ARGV!r}))"
    done = subprocess.run([sys.executable, "-c", rerun], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (Path(task_output(1)) / ADAPTER).read_bytes() == adapter
    record = json.loads((Path(task_output(1)) / "record.json").read_text())
    assert record["tasks"][1]["accuracy"] == list(pipeline[1])
    assert record["tasks"][1]["epochs"] == staged_log
    ours = [*Path("runs/pipeline").rglob("*.json"), *Path("runs/ray").rglob("state.json"),
            *Path("data/prepared").glob("*.json"), *Path("artifacts").rglob("*.json")]  # fmt: skip
    assert ours and not [p for p in ours if str(project) in p.read_text()]
