"""End to end: `dvc repro` of the default pipeline in a temporary copy of the repository.

A tiny config (2 tasks of 20 glyph classes, a 2-block ViT pre-trained for one epoch, 2 Ray
workers) runs every stage for real: Parquet, Ray Train with DDP, MLflow on SQLite, DVC caching.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sdlora.metrics import read_matrix_csv
from sdlora.plan import EVAL_DIR, REPORT_DIR, task_output, write_tasks

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TINY = {
    "progress": False,
    "data": {"train_per_class": 6, "test_per_class": 4, "init_cls": 20, "increment": 20},
    "backbone": {
        "weights": "artifacts/backbone/tiny.safetensors",
        "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2},
    },
    "pretrain": {"per_class": 5, "epochs": 1},
    "train": {"epochs": 2, "batch_size": 16},
    "ray": {"num_workers": 2, "cpus_per_worker": 1, "max_failures": 0},
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(base.get(k) or {}, v) if isinstance(v, dict) and v else v
    return out


def _copy_repo(dst: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(root),  # the driver and Ray's workers import the copy's sdlora
        MLFLOW_DISABLE_TELEMETRY="true",
        DVC_NO_ANALYTICS="1",
        RAY_USAGE_STATS_ENABLED="0",
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )  # fmt: skip
    return env


def _run(root: Path, *args: str) -> str:
    done = subprocess.run(
        list(args), cwd=root, env=_env(root), capture_output=True, text=True, check=False
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{out[-6000:]}"
    return out


def _dvc(root: Path, *args: str) -> str:
    return _run(root, sys.executable, "-m", "dvc", *args)


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The copy after one `dvc repro`, and that run's output."""
    root = tmp_path_factory.mktemp("project")
    _copy_repo(root)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(_merge(yaml.safe_load(params.read_text()), TINY)))
    write_tasks(params, 2)
    _run(root, "git", "init", "-q")
    _run(root, "git", "add", "-A")
    _run(root, "git", "commit", "-qm", "tiny pipeline")
    return root, _dvc(root, "repro")


def _mlflow_run(root: Path):
    from mlflow import MlflowClient

    run_id = json.loads((root / REPORT_DIR / "run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return client, client.get_run(run_id)


def test_repro_runs_every_stage_in_order(project: tuple[Path, str]) -> None:
    root, output = project
    assert _ran(output) == ["prepare", "pretrain", "train@0", "train@1", "evaluate", "report"]
    matrix, counts = read_matrix_csv(root / EVAL_DIR / "accuracy_matrix.csv")
    assert matrix.shape == (2, 2) and list(counts) == [80, 80]  # T rows; 20 classes x 4 images
    record = json.loads((root / task_output(1) / "record.json").read_text())
    assert [r["task"] for r in record["tasks"]] == [0, 1]
    shown = json.loads(_dvc(root, "metrics", "show", "--json"))
    final = json.loads((root / EVAL_DIR / "metrics.json").read_text())
    assert shown[""]["data"][f"{EVAL_DIR}/metrics.json"]["data"] == final
    plots = json.loads(_dvc(root, "plots", "show", "--json"))["data"]
    assert {"Accuracy on all seen classes after each task", f"{EVAL_DIR}/magnitudes.png"} <= set(
        plots
    )


def test_metrics_json_equals_the_mlflow_run(
    project: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pytorch
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import torch

    root, _ = project
    final = json.loads((root / EVAL_DIR / "metrics.json").read_text())
    client, run = _mlflow_run(root)
    assert run.info.status == "FINISHED"
    assert {k: run.data.metrics[k] for k in final} == pytest.approx(final)
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert sorted({m.step for m in history}) == [0, 1]  # one step per task
    assert "ray.num_workers" not in run.data.params  # where it ran is not what it is
    assert run.data.params["model.method"] == "sdlora" and run.data.tags["sdlora.dataset"]
    assert run.data.params["git_commit"] == _run(root, "git", "rev-parse", "HEAD").strip()
    names = {a.path for a in client.list_artifacts(run.info.run_id, "evaluate")}
    assert {"evaluate/accuracy_matrix.csv", "evaluate/magnitudes.png"} <= names
    uri = json.loads((root / REPORT_DIR / "run.json").read_text())["model_uri"]
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)  # restored
    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.pytorch.load_model(uri)
    assert model(torch.zeros(3, 3, 16, 16)).shape == (3, 40)  # merged ViT, all 40 classes
    runs = client.search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # one run for the sequence


def test_second_repro_does_nothing(project: tuple[Path, str]) -> None:
    root, _ = project
    output = _dvc(root, "repro")
    assert _ran(output) == [] and "Data and pipelines are up to date" in output


def test_deleting_the_last_task_reruns_only_that_stage(project: tuple[Path, str]) -> None:
    root, _ = project
    out = root / task_output(1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    shutil.rmtree(out)
    output = _dvc(root, "repro")  # restored from DVC's cache: nothing else touched
    assert _ran(output) == [] and "'train@1' is cached" in output
    shutil.rmtree(out)
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    digest = lock["stages"]["train@1"]["outs"][0]["md5"]  # "<hex>.dir": the folder's listing
    (root / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]).unlink()
    # no cached copy now: the stage must run again (Ray restores its finished checkpoint)
    output = _dvc(root, "repro")
    assert _ran(output) == ["train@1"]  # bit-identical output, so evaluate and report stay
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    _, run = _mlflow_run(root)
    assert run.info.status == "FINISHED"


def test_a_change_to_task_k_reruns_from_k_in_a_new_run(project: tuple[Path, str]) -> None:
    root, _ = project
    _run(root, "git", "add", "-A")
    _run(root, "git", "commit", "-qm", "lock")
    output = _dvc(root, "exp", "run", "-S", "tasks.1.rank=3")
    assert _ran(output) == ["train@1", "evaluate", "report"]
    client, run = _mlflow_run(root)
    assert run.data.params["tasks.1.rank"] == "3"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "accuracy"))
    assert steps == [0, 1]  # task 0 carried over from its record into the new run
    assert len(client.search_runs([run.info.experiment_id])) == 2
