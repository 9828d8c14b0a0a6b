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
import torch
import yaml

from sdlora.core.metrics import read_matrix_csv
from sdlora.core.records import task_metrics
from sdlora.pipeline.layout import (
    COMPARE_RESULTS,
    CURVE_FILE,
    EVAL_DIR,
    HEATMAP_FILE,
    MAGNITUDES_FILE,
    METRICS_FILE,
    PREPARED_DIR,
    REPORT_DIR,
    TUNE_RESULTS,
    task_output,
    write_tasks,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
TINY = {
    "progress": False,
    "data": {"train_per_class": 6, "test_per_class": 4, "init_cls": 20, "increment": 20},
    "backbone": {
        "weights": "artifacts/backbone/tiny.safetensors",
        "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2},
    },
    "pretrain": {"per_class": 5, "epochs": 1},
    "train": {"epochs": 2, "batch_size": 16, "threads": 1},  # a thread per worker's core
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


def test_validate_guards_repro_an_edit_a_typo_and_an_outside_weights_file(
    tmp_path: Path,
) -> None:
    """The validate stage tracks the whole params file and hashes a backbone.weights file
    outside the project's folders (DVC tracks neither) on every repro: a valid edit re-runs
    only it, new bytes under the outside path re-run pretrain, and a typo fails `dvc repro`
    with the config's message (the real dvc.yaml, prepare and pretrain, on digits)."""
    import timm

    from sdlora.core.backbone import save_backbone

    _copy_repo(tmp_path)
    kwargs = TINY["backbone"]["kwargs"]
    outside = tmp_path.parent / f"{tmp_path.name}-weights.safetensors"
    net = timm.create_model("vit_tiny_patch16_224", num_classes=0, **kwargs)
    save_backbone(net, outside, "vit_tiny_patch16_224", kwargs)
    params = tmp_path / "params.yaml"
    extra = {"progress": False, "data": {"dataset": "digits", "init_cls": 5, "increment": 5},
             "backbone": {"weights": str(outside), "kwargs": kwargs}}  # fmt: skip
    params.write_text(yaml.safe_dump(_merge(yaml.safe_load(params.read_text()), extra)))
    write_tasks(params, 2)
    _run(tmp_path, "git", "init", "-q")
    first = _ran(_dvc(tmp_path, "repro", "prepare", "pretrain"))  # prepare: every prepare@k
    assert first[0] == "validate"
    assert sorted(first[1:]) == ["prepare@0", "prepare@1", "pretrain"]
    manifest = (tmp_path / PREPARED_DIR / "task_01" / "task.json").read_bytes()
    params.write_text(params.read_text().replace("epochs: 10", "epochs: 3"))  # train.epochs
    output = _dvc(tmp_path, "repro", "prepare", "pretrain")  # validate always runs
    assert _ran(output) == ["validate"] and "Stage 'pretrain' didn't change" in output
    assert "Stage 'prepare@1' didn't change" in output
    with torch.no_grad():
        net.blocks[0].attn.qkv.weight.add_(1.0)
    save_backbone(net, outside, "vit_tiny_patch16_224", kwargs)  # the same path, new bytes
    assert _ran(_dvc(tmp_path, "repro", "prepare", "pretrain")) == ["validate", "pretrain"]
    record = json.loads((tmp_path / "artifacts" / "backbone" / "backbone.json").read_text())
    assert (
        record["sha256"]
        == json.loads((tmp_path / "runs/pipeline/weights.json").read_text())["sha256"]
    )
    params.write_text("progres: true\n" + params.read_text())
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "prepare", "pretrain"],
        cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0 and _ran(output) == ["validate"]
    assert "validate: error: params.yaml: invalid configuration" in output
    assert "progres: unknown key (check the spelling" in output
    assert "failed to reproduce 'validate'" in output
    assert (tmp_path / PREPARED_DIR / "task_01" / "task.json").read_bytes() == manifest


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
    ran = _ran(output)  # DVC orders stages that do not depend on each other as it likes
    assert ran[0] == "validate" and ran[-4:] == ["train@0", "train@1", "evaluate", "report"]
    assert sorted(ran[1:-4]) == ["prepare@0", "prepare@1", "pretrain"]
    assert ran.index("prepare@1") < ran.index("train@1")
    matrix, counts = read_matrix_csv(root / EVAL_DIR / "accuracy_matrix.csv")
    assert matrix.shape == (2, 2) and list(counts) == [80, 80]  # T rows; 20 classes x 4 images
    record = json.loads((root / task_output(1) / "record.json").read_text())
    assert [r["task"] for r in record["tasks"]] == [0, 1]
    shown = json.loads(_dvc(root, "metrics", "show", "--json"))
    final = json.loads((root / METRICS_FILE).read_text())
    assert shown[""]["data"][METRICS_FILE]["data"] == final
    plots = json.loads(_dvc(root, "plots", "show", "--json"))["data"]
    names = ("accuracy_curve", "kd_residual", "ncm_drift", "low_loss_path", "magnitudes")
    compare = {f"{COMPARE_RESULTS}/{n}.png" for n in names}
    tune = {f"{TUNE_RESULTS}/pareto.csv", f"{TUNE_RESULTS}/pareto.png"}
    assert set(plots) == {CURVE_FILE, HEATMAP_FILE, MAGNITUDES_FILE} | compare | tune  # + the
    # committed comparison's and sweep's (`dvc plots show` reads every dvc.yaml of the project)
    curve = plots[CURVE_FILE][0]["content"]
    assert curve["title"]["text"] == "Accuracy on all seen classes after each task"
    assert [v["task"] for v in curve["data"]["values"]] == ["0", "1"]
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert lock["validate"]["params"]["params.yaml"]["train"]["epochs"] == 2  # the whole file
    status = _run(root, "git", "status", "--porcelain", "-uall", "--ignored", "dvc.lock", "results")
    assert "!!" not in status and "dvc.lock" in status and METRICS_FILE in status  # for git


def test_a_task_stage_prints_its_own_account_and_logs_rays(project: tuple[Path, str]) -> None:
    """train@k's console: what it trains, where Ray's output went, the task's line; Ray's own
    output (worker logs, controller messages, warnings) only in runs/logs/train@k.log."""
    root, output = project
    ours = [ln for ln in output.splitlines() if ln.startswith("train@1: ")]  # stderr, in order
    assert len(ours) == 3, output  # progress: false here, so no epoch lines
    assert ours[0] == "train@1: task 1 of 2 (sdlora) on 2 Ray Train workers"  # TINY: 2
    assert ours[1].startswith("train@1: Ray's output goes to runs/logs/train@1.log")
    assert ours[2].startswith("train@1: accuracy ") and "classes seen" in ours[2]
    for noise in ("Traceback", "RayTrainWorker", "TrainController", "WARNING", "Checkpoint"):
        assert noise not in output
    log = (root / "runs" / "logs" / "train@1.log").read_text()
    assert "===== train@1 " in log and "RayTrainWorker" in log


def test_metrics_json_equals_the_mlflow_run(
    project: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import pandas as pd
    import pyarrow.parquet as pq
    import torch

    from sdlora.config import load_config
    from sdlora.core.checkpoint import load_adapter
    from sdlora.core.evaluate import outputs
    from sdlora.core.train import build_model, task_stream
    from sdlora.data.prepare import open_prepared

    root, _ = project
    final = json.loads((root / METRICS_FILE).read_text())
    client, run = _mlflow_run(root)
    assert run.info.status == "FINISHED"
    assert {k: run.data.metrics[k] for k in final} == pytest.approx(final)
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert sorted({m.step for m in history}) == [0, 1]  # one step per task
    assert "ray.num_workers" in run.data.params  # the DDP width is identity: the floats differ
    assert "ray.address" not in run.data.params  # where it ran is not
    assert run.data.params["model.method"] == "sdlora" and run.data.tags["sdlora.dataset"]
    assert run.data.params["git_commit"] == _run(root, "git", "rev-parse", "HEAD").strip()
    names = {a.path for a in client.list_artifacts(run.info.run_id)}  # evaluate's files on top
    assert {"accuracy_matrix.csv", "magnitudes.png", "metrics.json"} <= names
    uri = json.loads((root / REPORT_DIR / "run.json").read_text())["model_uri"]
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)  # restored
    mlflow.set_tracking_uri(client.tracking_uri)
    served = mlflow.pyfunc.load_model(uri)  # what `mlflow models serve` runs
    monkeypatch.chdir(root)
    cfg, prepared = load_config("params.yaml"), open_prepared(PREPARED_DIR)
    model = build_model(cfg)  # the pipeline's own prediction: the adapted model, unmerged
    load_adapter(model, Path(task_output(1)) / "adapter.safetensors")
    logits, _ = outputs(model.eval(), task_stream(prepared, 1, "test", cfg, model.backbone),
                        torch.device("cpu"), 64)  # fmt: skip
    names = [n for t in prepared.tasks for n in t["class_names"]]
    images = pq.read_table(prepared.files(1, "test")[0], columns=["image"]).column("image")
    answer = served.predict(pd.DataFrame({"image": images.to_pylist()}))
    assert list(answer["label"]) == [names[i] for i in logits.argmax(dim=1).tolist()]
    runs = client.search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # one run for the sequence


def test_second_repro_does_nothing(project: tuple[Path, str]) -> None:
    root, _ = project
    output = _dvc(root, "repro")  # validate always runs (it re-hashes an outside weights file)
    assert _ran(output) == ["validate"] and "Stage 'report' didn't change" in output


def test_deleting_the_last_task_reruns_only_that_stage_in_a_moved_project(
    project: tuple[Path, str],
) -> None:
    """A deleted output comes back from DVC's cache; without the cached copy, in the project
    moved to another folder, train@1 runs again and Ray restores its finished run there to the
    same bytes (nothing absolute in the fingerprint, checkpoint or run name)."""
    root, _ = project
    out = root / task_output(1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    shutil.rmtree(out)
    output = _dvc(root, "repro")  # restored from DVC's cache: nothing else touched
    assert _ran(output) == ["validate"] and "'train@1' is cached" in output
    shutil.rmtree(out)
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    digest = lock["stages"]["train@1"]["outs"][0]["md5"]  # "<hex>.dir": the folder's listing
    (root / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]).unlink()
    moved = root.with_name(f"{root.name}-moved")
    root.rename(moved)  # the original out of reach; moved back for the tests that follow
    try:
        # no cached copy now: the stage must run again (Ray restores its finished checkpoint)
        output = _dvc(moved, "repro")
        assert _ran(output) == ["validate", "train@1"]  # bit-identical: evaluate, report stay
        assert {p.name: p.read_bytes() for p in (moved / task_output(1)).iterdir()} == before
        globs = ("runs/pipeline/**/*.json", "runs/ray/**/state.json", f"{PREPARED_DIR}/*/*.json",
                 "artifacts/**/*.json")  # fmt: skip
        ours = [p for g in globs for p in moved.glob(g)]
        assert ours and not [p for p in ours if str(root) in p.read_text()]
        _, run = _mlflow_run(moved)
        assert run.info.status == "FINISHED"
    finally:
        moved.rename(root)


def test_a_change_to_task_k_reruns_from_k_in_a_new_run(project: tuple[Path, str]) -> None:
    root, _ = project
    _run(root, "git", "add", "-A")
    _run(root, "git", "commit", "-qm", "lock")
    head = json.loads((root / METRICS_FILE).read_text())  # committed: the baseline
    output = _dvc(root, "exp", "run", "-S", "tasks.1.rank=3")
    assert _ran(output) == ["validate", "train@1", "evaluate", "report"]
    assert "Traceback" not in output and "multiple active Ray instances" not in output
    new = json.loads((root / METRICS_FILE).read_text())
    diff = json.loads(_dvc(root, "metrics", "diff", "--all", "--json"))[METRICS_FILE]
    assert diff["final_accuracy"]["old"] == head["final_accuracy"]
    assert diff["final_accuracy"]["new"] == new["final_accuracy"]
    plots = json.loads(_dvc(root, "plots", "diff", "--json"))["data"][CURVE_FILE][0]
    assert plots["revisions"] == ["workspace", "HEAD"]
    shown = json.loads(_dvc(root, "exp", "show", "--json"))
    baseline = next(r for r in shown if r["rev"] != "workspace")["data"]
    assert baseline["metrics"][METRICS_FILE]["data"] == head
    client, run = _mlflow_run(root)
    assert run.data.params["tasks.1.rank"] == "3"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "accuracy"))
    assert steps == [0, 1]  # task 0 carried over from its record into the new run
    assert len(client.search_runs([run.info.experiment_id])) == 2


def test_the_tune_stage_and_its_best_trial_applied_with_dvc_exp_run(
    project: tuple[Path, str],
) -> None:
    """`dvc repro tune/dvc.yaml` on the tiny pipeline's splits and backbone; its best params
    file, applied with `sdlora exp-run` (`dvc exp run -S ...`) up to train@0, makes the
    pipeline's first task reproduce the best trial's: the trials train through the pipeline's
    functions (test_sequence.py: the stages equal `sdlora run` over the whole sequence)."""
    root, _ = project
    _run(root, "git", "checkout", "--", ".")  # the previous test's experiment left its workspace
    _dvc(root, "checkout", "dvc.yaml")  # the pipeline's outputs at HEAD
    params = root / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    raw["ray"]["num_workers"] = 1  # the trials' world size (process mode): the same floats
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    tune = {"space": {"train.lr": {"grid": [0.01, 0.002]}}, "num_samples": 1,
            "fixed": {"model.rank": 3}}  # fmt: skip
    (root / "tune" / "params.yaml").write_text(yaml.safe_dump(tune))
    output = _dvc(root, "repro", "tune/dvc.yaml")
    assert _ran(output) == ["validate", "tune/dvc.yaml:tune"]  # splits, backbone up to date
    assert "tune: apply it to the pipeline: python -m sdlora exp-run results/tune/best_pa" in output
    sweep = json.loads((root / TUNE_RESULTS / "metrics.json").read_text())
    assert sweep["trials"] == 2 and sweep["finished"] == 2
    shown = json.loads(_dvc(root, "metrics", "show", "--json", f"{TUNE_RESULTS}/metrics.json"))
    shown = shown[""]["data"]  # not one of the default pipeline's metrics: asked for by name
    assert shown[f"{TUNE_RESULTS}/metrics.json"]["data"] == sweep
    plots = json.loads(_dvc(root, "plots", "show", "--json"))["data"]
    assert {f"{TUNE_RESULTS}/pareto.csv", f"{TUNE_RESULTS}/pareto.png"} <= set(plots)
    _run(root, "git", "add", "-A")
    _run(root, "git", "commit", "-qm", "sweep")
    best = (root / TUNE_RESULTS / "best_params.yaml").read_text()
    assert "model.rank: 3\ntrain.lr: " in best
    best_file = f"{TUNE_RESULTS}/best_params.yaml"
    output = _run(root, sys.executable, "-m", "sdlora", "exp-run", best_file, "--", "train@0")
    assert "sdlora exp-run: dvc exp run -S model.rank=3 -S train.lr=" in output
    assert output.count("-S ") == 2 and "dvc exp run -S model.rank=3" in output  # then: train@0
    assert _ran(output) == ["validate", "train@0"]
    applied = yaml.safe_load(params.read_text())
    lr = float(best.split("train.lr: ")[1].split()[0])
    assert applied["model"]["rank"] == 3 and applied["train"]["lr"] == lr
    record = json.loads((root / task_output(0) / "record.json").read_text())
    client, _ = _mlflow_run(root)
    experiments = [e.experiment_id for e in client.search_experiments()]
    (trial,) = [
        r
        for r in client.search_runs(experiments)
        if "mlflow.parentRunId" in r.data.tags and float(r.data.params["train.lr"]) == lr
    ]  # the best trial's MLflow run: one point per task, task 0's first
    (first,) = [m for m in client.get_metric_history(trial.info.run_id, "accuracy") if m.step == 0]
    assert task_metrics(record["tasks"], 0)["accuracy"] == first.value  # as train@0 logs it
