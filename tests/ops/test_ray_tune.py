"""Ray Tune over whole sequences (sdlora.ops.ray_tune): the search space from plain data, a report
per
task with the pipeline's metric names, and a real two-trial sweep on Ray in this process."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sdlora.config import ConfigError, RayConfig, RunInputs, TuneSettings
from sdlora.core.metrics import tidy
from sdlora.ops.ray_tune import (
    check_trials,
    concurrency,
    run_sweep,
    search_space,
    trial_rows,
)


def test_search_space_is_plain_data_and_a_bad_entry_names_its_key() -> None:
    from ray import tune

    space = search_space({
        "train.lr": {"loguniform": [1e-4, 1e-2]},
        "model.rank_schedule": {"choice": [[[0, 4]], [[0, 4], [1, 2]]]},
    })  # fmt: skip
    assert isinstance(space["train.lr"], tune.search.sample.Float)
    assert space["model.rank_schedule"].categories == [[[0, 4]], [[0, 4], [1, 2]]]
    with pytest.raises(ConfigError, match=r"space: train.lr: unknown kind 'logunif'"):
        search_space({"train.lr": {"logunif": [1e-4, 1e-2]}})
    with pytest.raises(ConfigError, match=r"model.kd_tau: loguniform takes a list \[low, high\]"):
        search_space({"model.kd_tau": {"loguniform": [0.1]}})
    with pytest.raises(ConfigError, match=r"train.lr: loguniform needs 0 < low < high"):
        search_space({"train.lr": {"loguniform": [0, 0.1]}})
    with pytest.raises(ConfigError, match=r"model.rank: give one of"):
        search_space({"model.rank": 3})
    with pytest.raises(ConfigError, match=r"data.init_cls: every trial shares it with the pipel"):
        search_space({"data.init_cls": {"choice": [2, 4]}})


def test_a_value_params_would_refuse_stops_the_sweep_before_it_starts(
    tmp_path: Path, tiny_sweep_params
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_sweep_params(None)))
    ok = TuneSettings(space={"model.rank": {"choice": [2, 4]}}, fixed={"model.method": "sdlora_kd"})
    check_trials(params, ok)
    bad = TuneSettings(space={"model.rank": {"choice": [2, 0]}})
    with pytest.raises(ConfigError, match=r"space.model.rank = 0 gives an invalid trial: .*"
                       r"model.rank = 0: Input should be greater than or equal to 1"):  # fmt: skip
        check_trials(params, bad)
    typo = TuneSettings(space={"model.rnak": {"choice": [2]}})
    with pytest.raises(ConfigError, match=r"model.rnak: unknown key"):
        check_trials(params, typo)
    joint = TuneSettings(space={"train.lr": {"choice": [0.1]}}, fixed={"model.method": "joint"})
    with pytest.raises(ConfigError, match=r"tune/params.yaml: fixed: joint training reports once"):
        check_trials(params, joint)


def test_trials_never_hold_the_cpus_their_train_workers_wait_for() -> None:
    """The deadlock rule: at most floor(CPUs / (trial + its workers)) trials at once, and a
    trial that cannot fit at all is an error naming the keys, not a hang."""
    space = {"train.lr": {"choice": [0.1]}}
    ray2 = RayConfig(num_workers=2, cpus_per_worker=0.5)
    in_process = TuneSettings(space=space)
    on_train = TuneSettings(space=space, trial_mode="ray_train")
    assert concurrency(in_process, ray2, {"CPU": 2.0}) == 2  # workers unused in process mode
    assert concurrency(on_train, ray2, {"CPU": 2.0}) == 1  # 1 + 2 x 0.5
    assert concurrency(on_train, ray2, {"CPU": 8.0}) == 4
    with pytest.raises(ConfigError, match=r"one trial needs 3 CPUs = 1.0 \(cpus_per_trial in tune/"
                       r"params.yaml\) "
                       r"\+ 2 Train worker\(s\) x 1.0 .* the Ray cluster has 2 CPUs: it would "
                       r"wait forever"):  # fmt: skip
        concurrency(on_train, RayConfig(num_workers=2), {"CPU": 2.0})
    capped = TuneSettings(space=space, trial_mode="ray_train", max_concurrent_trials=3)
    with pytest.raises(
        ConfigError, match=r"concurrent_trials = 3 \(tune/params.yaml\), but 1 trial"
    ):
        concurrency(capped, ray2, {"CPU": 2.0})
    gpu = RayConfig(num_workers=1, use_gpu=True)
    with pytest.raises(ConfigError, match=r"needs 2 CPUs and 2 GPU\(s\) .* has 4 CPUs and 1 GPUs"):
        concurrency(on_train, gpu, {"CPU": 4.0, "GPU": 1.0}, device="cuda")  # driver + worker
    assert concurrency(in_process, ray2, {"CPU": 8.0, "GPU": 2.0}, device="cuda") == 2


@pytest.mark.slow
def test_a_sweep_reports_every_task_to_tune_and_mlflow_in_either_trial_mode(
    ray_session, sweep_project: tuple[Path, Path], tmp_path: Path
) -> None:
    """Two in-process trials report after every task, with MLflow parent and child runs; then
    trial_mode ray_train (a TorchTrainer per task, the train stages' function, one worker)
    computes exactly the floats of the in-process trial of the same lr: one runtime."""
    params, prepared = sweep_project
    settings = TuneSettings(
        space={"train.lr": {"grid": [0.01, 0.005]}}, num_samples=1, grace_period=3,
        storage_path=str(tmp_path / "tune"),
    )  # fmt: skip
    sweep = run_sweep(
        params, prepared, settings, name="sweep", inputs=RunInputs("data", None),
        experiment="tune-test",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )  # fmt: skip
    grid = sweep.grid
    assert len(grid) == 2 and not grid.errors and not sweep.restored
    for r in grid:
        history = r.metrics_dataframe
        assert list(history["task"]) == [1, 2]  # grace 3 of 2 tasks: nobody stopped early
        assert (history["stored_params"].diff().dropna() > 0).all()  # a pair and rows per task
        assert 0 <= history["accuracy"].iloc[-1] <= 100 and "forgetting" in history
    best = grid.get_best_result()
    assert best.metrics["accuracy"] == max(r.metrics["accuracy"] for r in grid)
    # MLflow: one parent run, each trial a child with its params and one point per task
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tune-test")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sdlora.tune") == "sweep"]
    assert parent.info.run_id == sweep.parent_run_id and parent.info.status == "FINISHED"
    assert parent.data.metrics["best_accuracy"] == tidy(best.metrics["accuracy"])  # as logged
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and {c.data.params["train.lr"] for c in children} == {"0.01", "0.005"}
    for c in children:
        history = client.get_metric_history(c.info.run_id, "accuracy")
        assert [m.step for m in history] == [0, 1]  # step = task, as the pipeline's
        assert not {"timestamp", "done", "task"} & set(c.data.metrics)  # only the trial's own
        assert "stored_params" in c.data.metrics
    rows = trial_rows(grid, 2, ["train.lr"])
    assert sorted(r["train.lr"] for r in rows) == [0.005, 0.01]
    assert all(r["tasks"] == 2 and r["status"] == "finished" for r in rows)
    assert all(0 < r["overhead_s"] < r["first_report_s"] for r in rows)
    driver = trial_rows(grid, 2, ["train.lr"], sweep.first_report_s)  # the driver's clock
    assert len(sweep.first_report_s) == 2
    pairs = zip(driver, rows, strict=True)
    assert all(d["first_report_s"] >= r["first_report_s"] for d, r in pairs)
    for row, r in zip(sorted(rows, key=lambda x: x["accuracy"]),
                      sorted(grid, key=lambda x: x.metrics["accuracy"]), strict=True):  # fmt: skip
        assert row["accuracy"] == r.metrics["accuracy"]
        assert row["average_anytime_accuracy"] == r.metrics_dataframe["accuracy"].mean()
    # the same lr in ray_train mode
    on_train = TuneSettings(
        space={"train.lr": {"grid": [0.005]}}, num_samples=1, trial_mode="ray_train",
        storage_path=str(tmp_path / "ray_train"),
    )  # fmt: skip
    one_worker = RayConfig(cpus_per_worker=0.5)
    inputs = RunInputs("data", None)
    (result,) = run_sweep(params, prepared, on_train, name="m", inputs=inputs, ray=one_worker).grid
    assert result.error is None
    columns = ["task", "accuracy", "stored_params"]
    (process,) = [r for r in grid if r.config["train.lr"] == 0.005]
    assert process.metrics_dataframe[columns].equals(result.metrics_dataframe[columns])
    (trial,) = (tmp_path / "ray_train" / "m" / "work").iterdir()  # deterministic names
    assert sorted(p.name for p in trial.iterdir()) == ["ray", "task_0", "task_1"]
    assert sorted(p.name for p in (trial / "ray").iterdir()) == ["task0", "task1"]
