"""Stage compare on a tiny project (digits, a tiny random ViT, 2 tasks, 1 epoch): every method
over two seeds through the one runtime, one table, the plots, and one MLflow run per (method,
seed) tagged so the UI groups them."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sdlora.cli import stage_main
from sdlora.config import ConfigError, load_compare, load_config
from sdlora.pipeline.compare import compare_stage
from sdlora.pipeline.layout import COMPARE_DIR, COMPARE_RESULTS
from sdlora.pipeline.pretrain import pretrain_stage

PARAMS = """\
data: {dataset: digits, init_cls: 5, increment: 5, image_size: 16}
backbone:
  name: vit_tiny_patch16_224
  weights: null
  kwargs: {img_size: 16, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}
model: {rank: 2}
train: {epochs: 1, batch_size: 64, optimizer: adam, lr: 0.01}
"""
COMPARE = """\
seeds: [0, 1]
methods:
  sdlora: {}
  sdlora_kd: {model.method: sdlora_kd, model.kd_tau: 1.0}
  prototype: {model.method: prototype}
  joint: {model.method: joint}
"""


def _compare(text: str = COMPARE) -> Path:
    path = Path("compare/params.yaml")
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.slow
def test_compare_runs_every_method_over_seeds_into_one_table(
    write_params: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    write_params(PARAMS, tasks=2)
    cfg = load_config("params.yaml")
    pretrain_stage(cfg)
    compare_stage(cfg, load_compare(_compare()))
    out = capsys.readouterr().out
    assert "compare: 8 runs (4 methods x 2 seeds) on digits" in out
    assert out.count("compare [") == 8 and "compare [8/8] joint seed 1: final" in out

    results = Path(COMPARE_RESULTS)
    table = (results / "table.md").read_text().splitlines()
    rows = {line.split(" | ")[0].strip("| "): line for line in table if line.startswith("| ")}
    assert set(rows) == {"method", "---", "sdlora", "sdlora_kd", "prototype", "joint"}
    assert "2/2 at τ=1" in rows["sdlora_kd"]  # tau 1 folds task 1 of both seeds
    assert rows["joint"].count("—") == 4  # forgetting, BWT, NCM drop, KD: not defined
    assert "(+0)" in rows["sdlora"]  # merged: no parameter beyond backbone and head
    with open(results / "table.csv") as f:
        by_label = {r["method"]: r for r in csv.DictReader(f)}
    assert by_label["joint"]["forgetting_mean"] == "" and by_label["sdlora"]["seeds"] == "0 1"
    stored = {k: float(v["stored_params_mean"]) for k, v in by_label.items()}
    assert stored["sdlora_kd"] < stored["sdlora"]  # folds store nothing new
    assert stored["prototype"] < stored["sdlora_kd"]
    metrics = json.loads((results / "metrics.json").read_text())
    assert set(metrics) == set(by_label) and metrics["joint"]["forgetting"] is None
    with open(results / "kd_residuals.csv") as f:
        kd = list(csv.DictReader(f))
    assert [(r["seed"], r["task"], r["folded"]) for r in kd] == [
        ("0", "1", "True"),
        ("1", "1", "True"),
    ]
    assert all(r["accuracy_before_fold"] and r["accuracy_after_fold"] for r in kd)
    names = ("accuracy_curve.png", "kd_residual.png", "ncm_drift.png", "low_loss_path.png",
             "magnitudes.png")  # fmt: skip
    for name in names:
        assert (results / name).read_bytes().startswith(b"\x89PNG")
    assert len(list(Path(COMPARE_DIR, "runs").glob("*.json"))) == 8
    # Finding 3's path: 11 points per (label, seed) of a sequence; its end is the model after
    # task 1 (merged, so up to one test image of floating-point ties), its start task 0's deltas
    with open(results / "low_loss_path.csv") as f:
        path = list(csv.DictReader(f))
    assert {(r["label"], r["seed"]) for r in path} == {
        (m, s) for m in ("sdlora", "sdlora_kd", "prototype") for s in ("0", "1")}  # fmt: skip
    assert [r["lam"] for r in path[:11]] == [f"{i / 10:.1f}" for i in range(11)]
    run = json.loads(Path(COMPARE_DIR, "runs", "sdlora-s0.json").read_text())
    end = [run["low_loss_path"]["task_0"][-1], run["low_loss_path"]["task_1"][-1]]
    counts = run["test_counts"]
    for got, want, n in zip(end, run["tasks"][1]["accuracy"], counts, strict=True):
        assert abs(got - want) <= 100.0 / n + 1e-9
    proto = json.loads(Path(COMPARE_DIR, "runs", "prototype-s0.json").read_text())
    assert len(set(proto["low_loss_path"]["task_0"])) == 1  # no delta moves: a flat line
    joint_run = json.loads(Path(COMPARE_DIR, "runs", "joint-s0.json").read_text())
    assert joint_run["low_loss_path"] is None

    client = MlflowClient(tracking_uri=f"sqlite:///{Path('mlflow.db').resolve()}")  # absolute:
    # MLflow caches a store per URI, so a relative one would reach another test's database
    exp = client.get_experiment_by_name("sdlora")
    runs = client.search_runs([exp.experiment_id])
    tagged = {(r.data.tags["sdlora.compare"], r.data.tags.get("sdlora.seed")) for r in runs}
    assert tagged == {(m, s) for m in ("sdlora", "sdlora_kd", "prototype", "joint")
                      for s in ("0", "1")} | {("summary", None)}  # fmt: skip
    joint = next(r for r in runs if r.data.tags["sdlora.compare"] == "joint")
    assert joint.data.metrics["final_accuracy"] == joint.data.metrics["accuracy"]
    assert "forgetting" not in joint.data.metrics
    summary = next(r for r in runs if r.data.tags["sdlora.compare"] == "summary")
    files = {a.path for a in client.list_artifacts(summary.info.run_id)}
    assert {"table.md", "table.csv", "accuracy_curve.png", "kd_residual.png"} <= files


def test_a_bad_method_entry_is_refused_before_anything_runs(
    write_params: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    write_params(PARAMS, tasks=2)
    _compare(COMPARE.replace("prototype: {model.method: prototype}",
                             "proto: {model.methd: prototype}"))  # fmt: skip
    assert stage_main("compare", ["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert "methods.proto changes {'model.methd': 'prototype'}" in err
    assert "model.methd: unknown key" in err
    assert not Path(COMPARE_DIR).exists() and not Path("mlflow.db").exists()


def test_a_method_entry_cannot_change_the_shared_splits(write_params: Callable[..., Path]) -> None:
    write_params(PARAMS, tasks=2)
    path = _compare(COMPARE.replace("sdlora: {}", "sdlora: {data.increment: 2}"))
    with pytest.raises(ConfigError, match=r"compare/params.yaml: invalid configuration\n  "
                       r"methods = .*sdlora: data.increment: every method of a comparison "
                       r"shares it with the pipeline"):  # fmt: skip
        load_compare(path)
