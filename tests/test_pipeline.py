"""sdlora.pipeline's stages without DVC or Ray: prepare, pretrain, evaluate, metrics, errors.

The train and report stages (Ray Train, MLflow) run end to end in test_pipeline_dvc.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sdlora import metrics
from sdlora.__main__ import main as cli
from sdlora.config import ConfigError, load_config
from sdlora.pipeline import (
    BACKBONE_RECORD,
    METRICS,
    RECORD,
    StageError,
    evaluate_stage,
    pretrain_stage,
    stage_main,
    task_metrics,
    train_stage,
)
from sdlora.plan import BACKBONE_DIR, EVAL_DIR, PREPARED_DIR, task_output, write_tasks
from sdlora.train import build_model

TINY = "{img_size: 16, patch_size: 4, embed_dim: 32, depth: 2, num_heads: 2}"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages read and write relative to the project root: run each test in its own."""
    monkeypatch.chdir(tmp_path)


def _params(text: str, tasks: int | None) -> Path:
    path = Path("params.yaml")
    path.write_text("progress: false\n" + text)
    if tasks is not None:
        write_tasks(path, tasks)
    return path


def _record(task: int, accuracy: list[float], counts: list[int]) -> dict:
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


RECORDS = [_record(0, [90.0], [10]), _record(1, [60.0, 80.0], [10, 30])]


# ---- prepare ----------------------------------------------------------------------------------


def test_prepare_stage_writes_the_splits() -> None:
    _params("seed: 3\ndata: {dataset: digits, init_cls: 4, increment: 3}\n", tasks=3)
    assert stage_main("prepare", ["--params", "params.yaml"]) == 0
    manifest = json.loads((Path(PREPARED_DIR) / "manifest.json").read_text())
    assert [t["num_classes"] for t in manifest["tasks"]] == [4, 3, 3]
    assert manifest["params"]["seed"] == 3


def test_prepare_refuses_a_stale_task_list(capsys: pytest.CaptureFixture[str]) -> None:
    _params("data: {dataset: digits, init_cls: 4, increment: 3}\n", tasks=5)
    assert stage_main("prepare", ["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert "tasks: params.yaml lists 5 task(s) but data.* has 3" in err
    assert "run `python -m sdlora tasks --write`" in err
    assert not Path(PREPARED_DIR).exists()


@pytest.mark.parametrize(
    ("text", "tasks", "message"),
    [
        ("data: {dataset: imagenet-r}\n", None, "data.root is required"),
        ("data: {dataset: digits}\n", None, "params.yaml has no tasks section"),
        ("data: {dataset: imagenet-r, root: /nonexistent/x}\n", 1, "'imagenet-r' at /nonexist"),
    ],
)
def test_bad_input_exits_2(
    capsys: pytest.CaptureFixture[str], text: str, tasks: int | None, message: str
) -> None:
    _params(text, tasks)
    assert stage_main("prepare", ["--params", "params.yaml"]) == 2
    assert message in capsys.readouterr().err
    assert not Path(PREPARED_DIR).exists()


# ---- pretrain ---------------------------------------------------------------------------------


def test_pretrain_records_a_configured_backbone_without_training(tmp_path: Path) -> None:
    for weights, source in (("null", "random initialisation"), ("timm", "timm pretrained")):
        record = pretrain_stage(load_config(_params(f"backbone: {{weights: {weights}}}\n", 1)))
        assert record["source"].startswith(source) and record["sha256"] is None
        assert sorted(p.name for p in Path(BACKBONE_DIR).iterdir()) == [BACKBONE_RECORD]
    own = tmp_path / "mine.pth"
    own.write_bytes(b"weights")
    record = pretrain_stage(load_config(_params(f"backbone: {{weights: {own}}}\n", 1)))
    assert record["sha256"] == hashlib.sha256(b"weights").hexdigest()
    with pytest.raises(ConfigError, match=r"backbone.weights = '/nope.pth': no such file"):
        pretrain_stage(load_config(_params("backbone: {weights: /nope.pth}\n", 1)))
    assert json.loads((Path(BACKBONE_DIR) / BACKBONE_RECORD).read_text())["sha256"]  # kept


def test_pretrain_trains_the_embedded_backbone() -> None:
    cfg = load_config(
        _params(
            "data: {image_size: 16}\n"
            f"backbone: {{weights: {BACKBONE_DIR}/tiny.safetensors, kwargs: {TINY}}}\n"
            "pretrain: {per_class: 2, epochs: 1, batch_size: 64}\n",
            1,
        )
    )
    record = pretrain_stage(cfg)
    weights = Path(BACKBONE_DIR) / "tiny.safetensors"
    assert record["source"] == "pre-trained by this stage" and weights.is_file()
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    report = json.loads(weights.with_suffix(".json").read_text())
    assert report["path"] == f"{BACKBONE_DIR}/tiny.safetensors" and report["num_classes"] == 52
    build_model(cfg, torch.device("cpu"))  # loads what the stage wrote


# ---- train (input checks), evaluate, metrics ---------------------------------------------------


def test_train_stage_needs_its_inputs() -> None:
    cfg = load_config(_params("data: {dataset: digits, init_cls: 2, increment: 2}\n", 5))
    with pytest.raises(ConfigError, match=r"tasks: no entry 7 \(params.yaml lists tasks 0..4\)"):
        train_stage(cfg, 7)
    with pytest.raises(ValueError, match=r"manifest\.json"):
        train_stage(cfg, 1)  # nothing prepared yet


def test_task_metrics_weight_by_test_counts() -> None:
    m = task_metrics(RECORDS, 1)
    assert m["accuracy"] == pytest.approx((60 * 10 + 80 * 30) / 40)
    assert m["forgetting"] == pytest.approx(30.0)
    assert m["accuracy_task_00"] == 60.0 and m["accuracy_task_01"] == 80.0
    assert m["train_loss"] == 2.0 and m["epoch_seconds"] == 2.0 and m["samples_per_second"] == 20
    assert m["stored_params"] == 20 and m["stored_bytes"] == 80 and m["rank"] == 4
    assert task_metrics(RECORDS, 0)["accuracy"] == 90.0


def test_evaluate_writes_matrix_metrics_curve_and_plots() -> None:
    cfg = load_config(_params("data: {dataset: digits, init_cls: 4, increment: 6}\n", 2))
    out = Path(task_output(1))
    out.mkdir(parents=True)
    (out / RECORD).write_text(json.dumps({"key": "k", "mlflow_run_id": "r", "tasks": RECORDS}))
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


def test_evaluate_refuses_an_incomplete_sequence() -> None:
    cfg = load_config(_params("data: {dataset: digits, init_cls: 4, increment: 6}\n", 2))
    with pytest.raises(StageError, match=r"record.json not found: a train stage's output"):
        evaluate_stage(cfg)
    out = Path(task_output(1))
    out.mkdir(parents=True)
    (out / RECORD).write_text(json.dumps({"key": "k", "tasks": RECORDS[:1]}))
    with pytest.raises(StageError, match="holds 1 tasks, not 2"):
        evaluate_stage(cfg)
    assert not Path(EVAL_DIR).exists()


# ---- the tasks command --------------------------------------------------------------------------


def test_tasks_command_prints_and_writes(capsys: pytest.CaptureFixture[str]) -> None:
    path = _params("data: {dataset: digits, init_cls: 4, increment: 2}\n", 2)  # stale: 4 tasks
    with pytest.raises(ConfigError, match="lists 2 task"):
        load_config(path).check_num_tasks(4, "data")
    assert cli(["tasks", "--params", str(path)]) == 0
    assert '"3": {split: data/prepared/task_03' in capsys.readouterr().out
    assert cli(["tasks", "--params", str(path), "--write"]) == 0
    assert "lists 4 task(s) (was 2)" in capsys.readouterr().out
    assert sorted(load_config(path).tasks) == [0, 1, 2, 3]
