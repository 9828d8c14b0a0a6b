"""One experiment identity: every consumer (the Ray run folder and the checkpoint it resumes,
the MLflow run's key and params, the tune sweep, the compare runs) changes exactly when a key
that decides the numbers changes, and never for a key that only says where or how it runs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from sdlora.config import (
    RUNTIME_KEYS,
    TUNE_RUNTIME_KEYS,
    RunInputs,
    TuneSettings,
    identity,
    load_tune,
    parse_config,
    read_params,
)
from sdlora.pipeline.compare import summary_key
from sdlora.pipeline.mlflow_run import data_tags, run_key, run_params
from sdlora.pipeline.train import task_run
from sdlora.pipeline.tune import sweep_name
from sdlora.report.compare import Variant

REPO = Path(__file__).resolve().parents[1]
RAW = read_params(REPO / "params.yaml")
TUNE_RAW = read_params(REPO / "tune" / "params.yaml")
TUNE = load_tune(REPO / "tune" / "params.yaml")
INPUTS = RunInputs(("task-0", "task-1", "task-2", "task-3", "task-4"), "weights-sha")
LAST = len(RAW["tasks"]) - 1
# values to try where a key's own type gives no valid change (None, a fixed choice)
OTHER: dict[str, list[Any]] = {
    "device": ["auto"], "data.dataset": ["digits"], "data.input_norm": ["none"],
    "data.augment": ["crop_flip"], "data.workers": [2], "data.root": ["/data"],
    "backbone.name": ["vit_small_patch16_224"], "backbone.weights": ["timm"],
    "model.method": ["seq_lora"], "model.rank_schedule": [[[0, 4]]], "model.blocks": [[0]],
    "model.targets": [["q"]], "model.magnitude_scope": ["matrix"],
    "model.compat": ["reference_code"], "model.kd_fold": ["paper"], "train.optimizer": ["sgd"],
    "train.precision": ["bf16"], "ray.address": ["auto"], "ray.storage_path": ["/tmp/ray"],
    "mlflow.tracking_uri": ["sqlite:///other.db"], "mlflow.experiment": ["other"],
    "backbone.kwargs.patch_size": [8], "data.image_size": [32],  # +-1: not a patch multiple
    "objective": ["average_anytime_accuracy"], "trial_mode": ["ray_train"],
    "storage_path": ["/tmp/tune"], "storage_budget": [1000], "max_concurrent_trials": [1],
    "space": [{"train.lr": {"uniform": [0.1, 0.2]}}], "fixed": [{}],
}  # fmt: skip


def _leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [k for key, v in node.items() for k in _leaves(v, f"{prefix}{key}.")]
    return [prefix[:-1]]


def _set(raw: dict, key: str, value: Any) -> dict:
    out = copy.deepcopy(raw)
    *parents, leaf = key.split(".")
    node = out
    for p in parents:
        node = node[p]
    node[leaf] = value
    return out


def _candidates(key: str, value: Any) -> list[Any]:
    return [v for v in _tries(key, value) if v != value]


def _tries(key: str, value: Any) -> list[Any]:
    if key in OTHER:
        return OTHER[key]
    if key.endswith(".classes"):  # a task entry's class names (parse_config takes any list)
        return [["alpha", "beta"]]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1]
    if isinstance(value, float):
        return [value * 0.5, value + 0.1]
    if value is None:
        return [1, 0.5, "x"]
    if isinstance(value, str):
        return [value + "_other"]
    return []


def _consumers(cfg: Any, inputs: RunInputs) -> dict[str, Any]:
    ray_run, checkpoint = task_run(cfg, LAST, inputs)
    return {
        "ray run folder": ray_run,
        "checkpoint identity": checkpoint,
        # found by its key among the runs whose data tags agree (the data by content)
        "mlflow run": (run_key(cfg, inputs), data_tags(inputs)),
        "mlflow run params": run_params(cfg, inputs),
        "tune sweep": sweep_name(cfg, TUNE, inputs),
        "compare runs": summary_key([Variant("m", cfg.seed, cfg)], {cfg.seed: inputs}),
    }


def _runtime(key: str) -> bool:
    if key.startswith("tasks."):
        return key.split(".")[-1] in ("split", "prev")  # the layout's folders
    if any(key.startswith(f"{k}.") for k in RUNTIME_KEYS):  # inside a runtime section (mlflow.gate)
        return True
    return key in RUNTIME_KEYS or (key == "backbone.weights")  # a file counts by its SHA-256


SEQUENCE_KEYS = _leaves(RAW)


def test_every_params_key_is_covered() -> None:
    assert len(SEQUENCE_KEYS) > 40 and "ray.num_workers" in SEQUENCE_KEYS


@pytest.mark.parametrize("key", SEQUENCE_KEYS)
def test_all_consumers_agree_on_whether_a_key_changes_the_identity(key: str) -> None:
    base = _consumers(parse_config(RAW), INPUTS)
    eval_value = None
    for value in _candidates(key, _get(RAW, key)):
        try:
            cfg = parse_config(_set(RAW, key, value))
        except Exception:
            continue
        eval_value = value
        break
    else:
        pytest.fail(f"{key}: no valid other value to try; add one to OTHER")
    changed = {name: got != base[name] for name, got in _consumers(cfg, INPUTS).items()}
    expected = not _runtime(key)
    assert changed == dict.fromkeys(changed, expected), (key, eval_value, changed)


def _get(raw: dict, key: str) -> Any:
    node: Any = raw
    for p in key.split("."):
        node = node[p]
    return node


OTHER_DATA = RunInputs(("task-0", "task-1", "task-2", "task-3", "other"), "weights-sha")


@pytest.mark.parametrize("inputs", [OTHER_DATA, RunInputs(INPUTS.task_hashes, None)])
def test_other_data_or_weights_change_every_consumer(inputs: RunInputs) -> None:
    cfg = parse_config(RAW)
    base, other = _consumers(cfg, INPUTS), _consumers(cfg, inputs)
    changed = {k: other[k] != base[k] for k in base}
    if inputs is OTHER_DATA:  # the run's params hold the data by their params, not content
        assert changed.pop("mlflow run params") is False
    assert all(changed.values()), changed


def test_a_later_tasks_data_leaves_earlier_tasks_runs_alone() -> None:
    cfg = parse_config(RAW)
    assert task_run(cfg, LAST - 1, OTHER_DATA) == task_run(cfg, LAST - 1, INPUTS)
    assert task_run(cfg, LAST, OTHER_DATA) != task_run(cfg, LAST, INPUTS)
    with pytest.raises(ValueError, match=r"tasks 0\.\.4"):
        task_run(cfg, LAST, RunInputs(INPUTS.task_hashes[:2], None))  # data of every task


def test_a_task_appended_to_data_tasks_leaves_earlier_tasks_runs_alone() -> None:
    from sdlora.pipeline.layout import plan_tasks, task_spans

    names = [["Alpha", "Beta"], ["Gamma", "Delta"]]

    def named(tasks: list[list[str]]) -> Any:
        raw = _set(RAW, "data.tasks", tasks)
        cfg = parse_config({k: v for k, v in raw.items() if k not in ("tasks", "final_task")})
        plan = plan_tasks(len(tasks), None, task_spans(cfg, len(tasks)))
        return parse_config(
            {**raw, "tasks": plan, "final_task": f"runs/pipeline/task_{len(tasks) - 1}"}
        )

    two, three = named(names), named([*names, ["Epsilon"]])
    inputs = RunInputs(("h0", "h1", "h2"), None)
    assert task_run(three, 1, inputs) == task_run(two, 1, inputs)
    assert run_key(three, inputs) != run_key(two, inputs)  # a new sequence: a run of its own


def test_the_ddp_width_is_identity_and_the_cpus_are_not() -> None:
    cfg = parse_config(RAW)
    wider = parse_config(_set(RAW, "ray.num_workers", 2))
    assert task_run(wider, 0, INPUTS) != task_run(cfg, 0, INPUTS)  # a new folder: trains anew
    more_cpus = parse_config(_set(RAW, "ray.cpus_per_worker", RAW["ray"]["cpus_per_worker"] + 1))
    assert task_run(more_cpus, 0, INPUTS) == task_run(cfg, 0, INPUTS)


def test_a_later_task_setting_leaves_earlier_tasks_runs_alone() -> None:
    cfg = parse_config(RAW)
    later = parse_config(_set(RAW, f"tasks.{LAST}.rank", 3))
    assert task_run(later, LAST - 1, INPUTS) == task_run(cfg, LAST - 1, INPUTS)
    assert task_run(later, LAST, INPUTS) != task_run(cfg, LAST, INPUTS)
    assert "tasks" in identity(cfg, INPUTS, upto=0) and len(identity(cfg, INPUTS, 0)["tasks"]) == 1


@pytest.mark.parametrize("key", list(TUNE_RAW))
def test_a_sweep_setting_changes_only_the_sweep_name_unless_it_is_runtime(key: str) -> None:
    cfg = parse_config(RAW)
    (value, *_) = _candidates(key, TUNE_RAW[key])
    other = TuneSettings.model_validate({**TUNE_RAW, key: value})
    renamed = sweep_name(cfg, other, INPUTS) != sweep_name(cfg, TUNE, INPUTS)
    assert renamed == (key not in TUNE_RUNTIME_KEYS), key
