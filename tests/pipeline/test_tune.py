"""Stage tune on a tiny project (digits, a tiny ViT, 3 tasks, 1 epoch): the sweep, its outputs,
its MLflow runs, a re-run that restores instead of training, a killed sweep that resumes
without losing a finished trial, and trials spread over a real two-node Ray cluster."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from sdlora.cli import stage_main
from sdlora.config import RunInputs, load_config, load_tune
from sdlora.data.prepare import open_prepared
from sdlora.pipeline.layout import TUNE_RESULTS, read_inputs, write_tasks
from sdlora.pipeline.tune import sweep_name, tune_stage
from sdlora.report.tune import read_best

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _project(tiny: Callable[[str | None], dict], tune: dict, tmp: Path) -> Path:
    """params.yaml and tune/params.yaml here (the cwd), the prepared splits and the backbone
    record in the pipeline's folders (the prepare and pretrain stages' functions)."""
    from sdlora.pipeline.prepare import prepare_stage
    from sdlora.pipeline.pretrain import pretrain_stage

    raw = tiny("artifacts/backbone/tiny.safetensors")
    params = Path("params.yaml")
    params.write_text(yaml.safe_dump(raw))
    Path("tune").mkdir(exist_ok=True)
    Path("tune/params.yaml").write_text(yaml.safe_dump(tune))
    write_tasks(params, 3)  # the pipeline's stage list: 4 + 3 + 3 classes
    cfg = load_config(params)
    prepare_stage(cfg)
    pretrain_stage(cfg)
    return params


def _client() -> MlflowClient:
    """The project's store, by absolute path: MLflow caches a store per URI, so a relative
    one would reach an earlier test's database."""
    return MlflowClient(f"sqlite:///{Path('mlflow.db').resolve()}")


def _trials() -> list[dict[str, str]]:
    with Path(f"{TUNE_RESULTS}/trials.csv").open() as f:
        return list(csv.DictReader(f))


SPACE = {"train.lr": {"grid": [0.02, 0.004, 0.0005]}}


def test_the_stage_writes_the_front_the_best_params_and_mlflow_runs(
    tiny_sweep_params: Callable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _project(tiny_sweep_params, {"space": SPACE, "num_samples": 1, "grace_period": 1,
                                 "fixed": {"model.rank": 2}}, tmp_path)  # fmt: skip
    cfg = load_config("params.yaml")
    settings = load_tune()
    out = tune_stage(cfg, settings)
    console = capsys.readouterr().out
    best = out["best"]
    table = _trials()
    assert len(table) == 3 and {r["status"] for r in table} <= {"finished", "stopped"}
    finished = [r for r in table if r["status"] == "finished"]
    assert best["trial"] == max(finished, key=lambda r: float(r["accuracy"]))["trial"]
    assert read_best(f"{TUNE_RESULTS}/best_params.yaml") == {
        "model.rank": 2, "train.lr": best["train.lr"]
    }  # fmt: skip
    metrics = json.loads(Path(f"{TUNE_RESULTS}/metrics.json").read_text())
    assert metrics["best_final_accuracy"] == best["accuracy"] and metrics["trials"] == 3
    assert metrics["stopped_early"] == sum(r["status"] == "stopped" for r in table)
    assert Path(f"{TUNE_RESULTS}/pareto.png").stat().st_size > 10_000
    name = sweep_name(
        cfg, settings, read_inputs(open_prepared("data/prepared"), "artifacts/backbone")
    )
    assert f"tune: sweep {name}: 3 trials of 3 tasks over 1 searched key(s) (train.lr)" in console
    assert len(re.findall(r"tune: trial \w+ task 1/3: accuracy", console)) == 3
    assert "tune: apply it to the pipeline: python -m sdlora exp-run results/tune/best_params" in (
        console
    )
    assert "Configuration for experiment" not in console  # Tune's own tables stay off
    # MLflow: the sweep's parent run, a child per trial with one point per task it ran
    client = _client()
    runs = client.search_runs([client.get_experiment_by_name("sdlora").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sdlora.tune") == "sweep"]
    assert parent.info.run_name == name and parent.data.params["model.rank"] == "2"
    assert parent.data.metrics["best_accuracy"] == best["accuracy"]  # finished trials only
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    for c in children:
        row = next(r for r in table if float(r["train.lr"]) == float(c.data.params["train.lr"]))
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "accuracy")]
        assert steps == list(range(int(row["tasks"])))  # step = task index
    # the same sweep again: Tuner.restore finds it finished, nothing trains
    again = tune_stage(cfg, settings)
    console = capsys.readouterr().out
    assert again["best"]["trial"] == best["trial"] and "(restored" in console
    assert "started" not in console
    assert len(client.search_runs([parent.info.experiment_id])) == len(runs)  # no new runs


def test_a_bad_sweep_stops_with_one_line_before_ray_starts(
    tiny_sweep_params: Callable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_sweep_params(None)
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    Path("tune").mkdir()
    Path("tune/params.yaml").write_text("space: {train.lr: {choice: [0.1, -1.0]}}\n")
    assert stage_main("tune", ["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert "tune: error: tune/params.yaml: space.train.lr = -1.0 gives an invalid trial" in err
    Path("tune/params.yaml").unlink()
    assert stage_main("tune", ["--params", "params.yaml"]) == 2
    assert "tune: error: tune/params.yaml: params file not found" in capsys.readouterr().err


def _stage(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "pipelines" / "tune.py"), "--params", "params.yaml"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: the kill takes Ray's processes too
    )  # fmt: skip


def _wait_until_saved(trial: str, timeout: float = 30.0) -> None:
    """Until the sweep's state in storage_path says ``trial`` finished (Tune saves it every
    second: sdlora.ops.ray_tune.STATE_PERIOD_S)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for state in Path("runs/tune/ray").glob("tune-*/experiment_state-*.json"):
            try:
                trials = json.loads(state.read_text())["trial_data"]
            except (json.JSONDecodeError, OSError):
                continue  # being replaced
            status = {json.loads(t)["trial_id"]: json.loads(t)["status"] for t, _ in trials}
            if status.get(trial) == "TERMINATED":
                return
        time.sleep(0.2)
    raise AssertionError(f"trial {trial} not saved as finished within {timeout} s")


def test_a_killed_sweep_resumes_without_losing_a_finished_trial(
    tiny_sweep_params: Callable, tmp_path: Path
) -> None:
    """kill -9 of the stage's whole process group once a trial has finished; the stage run
    again restores the sweep: the finished trial is not trained again, the rest complete."""
    space = {"train.lr": {"grid": [0.02, 0.002]}}
    tune = {"space": space, "num_samples": 1, "grace_period": 3, "cpus_per_trial": 2}
    _project(tiny_sweep_params, tune, tmp_path)  # 2 CPUs a trial: one at a time (a trial
    # finishing within the second before the kill, before Tune saved it, would run again)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = _stage(env)
    seen = []
    for line in proc.stdout:  # type: ignore[union-attr]
        seen.append(line)
        done = re.match(r"tune: trial (\w+) finished all 3 tasks", line)
        if done:
            first = done.group(1)
            _wait_until_saved(first)
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    (first_dir,) = [p.parent for p in Path("runs/tune/ray").glob("tune-*/*/result.json")
                    if first in p.parent.name]  # fmt: skip
    before = (first_dir / "result.json").read_text()
    assert len(before.splitlines()) == 3  # a report per task
    assert not Path(TUNE_RESULTS).exists()  # nothing written for a cut sweep
    again = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "tune.py"), "--params", "params.yaml"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    output = again.stdout + again.stderr
    assert again.returncode == 0, output
    assert "(restored: finished trials were kept)" in output
    assert f"tune: trial {first} started" not in output  # not trained again
    assert (first_dir / "result.json").read_text() == before
    table = _trials()
    assert len(table) == 2 and all(r["status"] == "finished" for r in table)
    client = _client()
    runs = client.search_runs([client.get_experiment_by_name("sdlora").experiment_id])
    assert len([r for r in runs if r.data.tags.get("sdlora.tune") == "sweep"]) == 1  # the same
    children = [r for r in runs if r.data.tags.get("sdlora.tune") == "trial"]
    assert sorted(c.info.status for c in children).count("FINISHED") == 2
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}  # the cut trial's run


def test_trials_land_on_both_nodes_of_a_two_node_cluster(
    sweep_project: tuple[Path, Path], tmp_path: Path
) -> None:
    """A real two-node Ray cluster on this machine (ray.cluster_utils.Cluster: a head and a
    worker node, 1 CPU each): the sweep attaches by address, two trials run at once, one on
    each node, and both finish."""
    import ray
    from ray.cluster_utils import Cluster

    from sdlora.config import RayConfig, TuneSettings
    from sdlora.ops.ray_session import ensure_ray
    from sdlora.ops.ray_tune import run_sweep, trial_rows

    params, prepared = sweep_project
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ensure_ray(cluster.address)  # as ray.address in params.yaml
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(nodes) == 2
        settings = TuneSettings(space={"train.lr": {"grid": [0.01, 0.002]}}, num_samples=1,
                                grace_period=2, storage_path=str(tmp_path / "tune"))  # fmt: skip
        sweep = run_sweep(params, prepared, settings, name="two-nodes", ray=RayConfig(),
                          inputs=RunInputs("data", None))  # fmt: skip
        rows = trial_rows(sweep.grid, 2, ["train.lr"])
        assert [r["status"] for r in rows] == ["finished", "finished"]
        assert {r["node"] for r in rows} == nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
