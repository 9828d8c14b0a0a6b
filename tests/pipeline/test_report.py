"""Stage report on a tiny project (digits, a tiny random ViT, 2 tasks; no Ray, no training):
what the MLflow run and the report folder hold, and that a re-run duplicates nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
import timm
import torch
from mlflow import MlflowClient

from sdlora.config import load_config
from sdlora.core.checkpoint import save_adapter
from sdlora.core.records import task_record
from sdlora.core.train import begin_task, build_model
from sdlora.data.prepare import open_prepared, read_manifest
from sdlora.ops.ray_train import ADAPTER
from sdlora.ops.tracking import EXPERIMENT_KIND, KIND_TAG
from sdlora.pipeline.evaluate import evaluate_stage
from sdlora.pipeline.layout import PREPARED_DIR, RECORD, REPORT_DIR, task_output
from sdlora.pipeline.prepare import prepare_stage
from sdlora.pipeline.pretrain import pretrain_stage
from sdlora.pipeline.report import MODEL_NAME, TIMM_DIR, WEIGHTS_TAG, report_stage

pytestmark = pytest.mark.slow  # the whole stage: MLflow store, torch.export of the model (~10 s)

PARAMS = """\
seed: 0
data: {dataset: digits, init_cls: 5, increment: 5, image_size: 16}
backbone:
  name: vit_tiny_patch16_224
  weights: null
  kwargs: {img_size: 16, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}
model: {rank: 2}
mlflow: {tracking_uri: "sqlite:///mlflow.db", experiment: report-test}
"""


@pytest.fixture
def project(write_params: Callable[..., Path], monkeypatch: pytest.MonkeyPatch):
    """Prepared digits, the backbone record, task 1's adapter and record, the evaluate output."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(write_params(PARAMS, 2))
    prepare_stage(cfg)
    pretrain_stage(cfg)
    model = build_model(cfg)
    records = []
    for task in (0, 1):
        begin_task(model, cfg, task, open_prepared(PREPARED_DIR).task_classes(task)[1])
        with torch.no_grad():
            for m in model.matrices():
                m.B_cur.normal_()  # stands in for training: B starts at zero
        model.end_task()
        accs = [90.0 - 10 * j - 5 * task for j in range(task + 1)]
        records.append(task_record(model, task, 5, accs, [36] * (task + 1), []))
    save_adapter(model, Path(task_output(1)) / ADAPTER, extra={"task": 1})
    record = {"key": "k", "mlflow_run_id": None, "tasks": records}
    (Path(task_output(1)) / RECORD).write_text(json.dumps(record))
    evaluate_stage(cfg)
    yield cfg, model.merge()
    while mlflow.active_run() is not None:
        mlflow.end_run()


def test_report_logs_a_truthful_run_and_a_plain_timm_model(project) -> None:
    cfg, merged = project
    payload = report_stage(cfg)
    client = MlflowClient("sqlite:///mlflow.db")
    exp = client.get_experiment_by_name("report-test")
    assert exp.tags[KIND_TAG] == EXPERIMENT_KIND  # opens as model training
    run = client.get_run(payload["mlflow_run_id"])
    # the name says what differs: method, tasks, (no git here: nothing to diff) dataset and
    # seed, and the sequence key's start; the description says what ran
    assert re.fullmatch(r"sdlora 2t digits s0 [0-9a-f]{8}", run.info.run_name)
    assert run.data.tags["mlflow.note.content"].startswith("**sdlora** on `digits`: 2 tasks")
    assert run.info.run_name.endswith(run.data.tags["sdlora_key"][:8])
    assert run.data.tags["sdlora.command.report"]  # this process's command line
    assert run.data.tags["mlflow.source.type"] == "LOCAL" and run.data.tags["mlflow.user"]
    assert payload["ui"] == (
        f"#/experiments/{exp.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    )

    # the logged model carries the final metrics (step 1), not task 0's
    model = client.get_logged_model(payload["model_id"])
    assert model.name == MODEL_NAME and model.tags[WEIGHTS_TAG]
    metrics = {m.key: (m.step, m.value) for m in model.metrics}
    assert metrics["final_accuracy"] == (1, payload["metrics"]["final_accuracy"])
    assert metrics["accuracy_task_00"] == (1, 85.0)  # after task 1, not 90 after task 0

    # Compare lists the top-level files runs share: the evaluate files and report.md are there
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"accuracy_matrix.png", "accuracy_matrix.csv", "metrics.json", "report.md"} <= top
    assert TIMM_DIR in top
    logged = {a.path for a in client.list_artifacts(run.info.run_id, TIMM_DIR)}
    assert logged == {f"{TIMM_DIR}/model.safetensors", f"{TIMM_DIR}/config.json"}

    # the report folder's timm checkpoint is a plain timm ViT with the merged model's outputs
    folder = Path(REPORT_DIR) / TIMM_DIR
    assert payload["timm_model"] == str(folder)
    plain = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    tasks = read_manifest(PREPARED_DIR)["tasks"]
    assert plain.pretrained_cfg["label_names"] == [n for t in tasks for n in t["class_names"]]
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), merged(x), rtol=0, atol=0)
    assert "local-dir:" in (Path(REPORT_DIR) / "report.md").read_text()

    # the first version of the registered model (named after the dataset) is the champion
    reg = payload["registry"]
    assert (reg["registered_model"], reg["version"], reg["alias"]) == ("sdlora-digits", "1",
                                                                       "champion")  # fmt: skip
    version = client.get_model_version("sdlora-digits", "1")
    assert version.source == payload["model_uri"] and version.run_id == run.info.run_id
    assert version.tags["sdlora.final_accuracy"] == f"{payload['metrics']['final_accuracy']:.2f}"
    assert version.description.startswith("champion: no champion yet; accuracy on the 2 new")
    assert "sdlora-digits` version 1: promoted to `champion`. No champion yet" in (
        Path(REPORT_DIR) / "report.md").read_text()  # fmt: skip

    # a re-run adds no second point at the last step, no second model and no second version
    again = report_stage(cfg)
    assert again["mlflow_run_id"] == run.info.run_id and again["model_id"] == payload["model_id"]
    assert again["registry"] == reg
    for key in ("final_accuracy", "accuracy"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == sorted(set(steps)), (key, steps)
    outputs = client.get_run(run.info.run_id).outputs.model_outputs
    assert [o.model_id for o in outputs] == [payload["model_id"]]
