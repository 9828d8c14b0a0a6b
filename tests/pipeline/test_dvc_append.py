"""End to end: a model that keeps learning under `dvc repro` (README "A model that keeps
learning"), in a temporary copy of the repository: a task appended to `data.tasks` trains alone
and the MLflow gate decides its version. Its own file, so that pytest-xdist runs it beside
test_dvc_pipeline.py's project."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sdlora.pipeline.layout import PREPARED_DIR, REPORT_DIR, task_output, write_tasks

from .test_dvc_pipeline import TINY, _copy_repo, _dvc, _merge, _ran, _run

pytestmark = pytest.mark.slow


def _tree(root: Path, *folders: str) -> dict[str, bytes]:
    """Every file under ``folders`` by path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes()
            for f in folders for p in sorted((root / f).rglob("*")) if p.is_file()}  # fmt: skip


def test_appending_a_task_trains_only_it_and_gates_a_new_version(tmp_path: Path) -> None:
    """The user story of a model that keeps learning, on digits: one task named in data.tasks
    runs; a second is appended (`sdlora tasks --write`) and `dvc repro` prepares and trains only
    it (earlier splits, adapters and records byte-identical), then registers version 2, which
    a failing gate leaves `candidate` and a passing one makes `champion`; the champion served
    from the registry answers with class names, as the adapted model predicts."""
    import mlflow.pyfunc
    import pandas as pd
    import pyarrow.parquet as pq
    from mlflow import MlflowClient

    from sdlora.config import load_config
    from sdlora.core.checkpoint import load_adapter
    from sdlora.core.evaluate import outputs
    from sdlora.core.train import build_model, task_stream
    from sdlora.data.prepare import open_prepared

    root = tmp_path / "project"
    _copy_repo(root)
    params = root / "params.yaml"
    tiny = _merge(TINY, {"data": {"dataset": "digits", "tasks": [["0", "1"]]},
                         "ray": {"num_workers": 1}})  # fmt: skip
    tiny["backbone"] = {**tiny["backbone"], "weights": None}  # random init: no pre-training
    params.write_text(yaml.safe_dump(_merge(yaml.safe_load(params.read_text()), tiny)))
    write_tasks(params, 1)
    _run(root, "git", "init", "-q")
    first = _ran(_dvc(root, "repro"))
    assert first[0] == "validate" and first[-3:] == ["train@0", "evaluate", "report"]
    assert sorted(first[1:-3]) == ["prepare@0", "pretrain"]
    earlier = ("data/prepared/task_00", task_output(0))
    before = _tree(root, *earlier)
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("sdlora-digits", "champion").version) == "1"

    raw = yaml.safe_load(params.read_text())  # a new class pair arrives: task 1
    raw["data"]["tasks"].append(["2", "3"])
    raw["mlflow"]["gate"]["min_new_task_accuracy"] = 100.0  # fails unless task 1 is perfect
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    said = _run(root, sys.executable, "-m", "sdlora", "tasks", "--write")
    assert "task 1 added: its prepare@ and train@ stages run; task 0 stays as it is" in said
    status = _dvc(root, "status")
    assert "prepare@0" not in status and "train@0:" not in status and "prepare@1" in status
    output = _dvc(root, "repro")
    assert _ran(output) == ["validate", "prepare@1", "train@1", "evaluate", "report"]
    assert _tree(root, *earlier) == before  # untouched, byte for byte
    versions = client.search_model_versions("name = 'sdlora-digits'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    runs = client.search_runs([client.get_experiment_by_name("sdlora").experiment_id])
    assert len(runs) == 2  # a run per sequence state: 1 task, then 2
    tags = client.get_model_version("sdlora-digits", "2").tags
    assert tags["sdlora.gate.baseline_version"] == "1" and tags["sdlora.num_tasks"] == "2"
    new = float(tags["sdlora.gate.new_tasks_accuracy"])  # task 1's accuracy, as the gate saw it
    assert new < 99.5, "tiny training reached 100% on task 1: no failing threshold above it"
    assert str(client.get_model_version_by_alias("sdlora-digits", "candidate").version) == "2"
    assert str(client.get_model_version_by_alias("sdlora-digits", "champion").version) == "1"
    report = (root / REPORT_DIR / "report.md").read_text()
    assert "`sdlora-digits` version 2: not promoted: `candidate`" in report
    assert f"accuracy on the 1 new task(s) {new:.2f}% is below the 100% asked" in report

    def gate(**values: float) -> str:
        """`dvc repro` under these gate values: only report runs; version 2's alias."""
        now = yaml.safe_load(params.read_text())  # as `tasks --write` left it
        now["mlflow"]["gate"].update(values)
        params.write_text(yaml.safe_dump(now, sort_keys=False))
        assert _ran(_dvc(root, "repro")) == ["validate", "report"]  # re-decided, not retrained
        assert len(client.search_model_versions("name = 'sdlora-digits'")) == 2  # no new one
        return next(
            a
            for a in ("champion", "candidate")
            if str(client.get_model_version_by_alias("sdlora-digits", a).version) == "2"
        )

    assert gate(max_forgetting_points=100.0, min_new_task_accuracy=max(new - 0.5, 0)) == "champion"

    cwd = Path.cwd()
    os.chdir(root)
    try:
        import mlflow

        mlflow.set_tracking_uri(client.tracking_uri)
        served = mlflow.pyfunc.load_model("models:/sdlora-digits@champion")
        cfg, prepared = load_config("params.yaml"), open_prepared(PREPARED_DIR)
        model = build_model(cfg)  # the pipeline's own prediction: the adapted model
        load_adapter(model, Path(task_output(1)) / "adapter.safetensors")
        stream = task_stream(prepared, 1, "test", cfg, model.backbone)
        logits, _ = outputs(model.eval(), stream, torch.device("cpu"), 64)
        images = pq.read_table(prepared.files(1, "test")[0], columns=["image"]).column("image")
        answer = served.predict(pd.DataFrame({"image": images.to_pylist()[:8]}))
    finally:
        os.chdir(cwd)
    names = [n for t in prepared.tasks for n in t["class_names"]]
    assert names == ["0", "1", "2", "3"]
    assert list(answer["label"]) == [names[i] for i in logits[:8].argmax(dim=1).tolist()]
