"""Ray Tune over whole task sequences (issue 11, first step: the library, no stage yet).

A trial is one :func:`sdlora.sequence.run_sequence` (the pipeline's loop, data path and
evaluator, world size 1 in the trial's own process) on the pipeline's prepared splits, with
params changed by the sampled values. It reports after every task, with ``task`` (1..T) as
Tune's time attribute, so :class:`ray.tune.schedulers.ASHAScheduler` stops weak trials after
early tasks. The metrics are the pipeline's own (``accuracy`` on all seen classes,
``forgetting`` so far, ``stored_params``, ``stored_bytes``, ...).

The search space is plain data, ``{dotted params key: {kind: arguments}}`` with the kinds of
:data:`SPACE_KINDS`, e.g. ``{"train.lr": {"loguniform": [1e-4, 1e-2]}, "model.rank_schedule":
{"choice": [[[0, 10]], [[0, 10], [2, 6]]]}}``: any params key can be searched without code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from sdlora.config import ConfigError, load_config
from sdlora.data.prepare import read_manifest
from sdlora.model import SDLoRAViT
from sdlora.sequence import SequenceResult, run_sequence
from sdlora.stages.records import task_metrics
from sdlora.tracking import resolve_tracking_uri

SPACE_KINDS = {
    "loguniform": (tune.loguniform, 2),
    "uniform": (tune.uniform, 2),
    "choice": (tune.choice, 1),
    "grid": (tune.grid_search, 1),  # every value, times num_samples
}
_FIXED = ("params", "prepared")  # what every trial gets besides the sampled keys


def search_space(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Tune's ``param_space`` from ``{key: {kind: arguments}}``; a bad entry names its key."""
    space: dict[str, Any] = {}
    for key, entry in spec.items():
        if not isinstance(entry, Mapping) or len(entry) != 1:
            raise ConfigError(
                f"tune space {key!r}: give one of {sorted(SPACE_KINDS)} as "
                f"{{kind: arguments}}, e.g. {{loguniform: [0.0001, 0.01]}}; got {entry!r}"
            )
        ((kind, args),) = entry.items()
        if kind not in SPACE_KINDS:
            raise ConfigError(
                f"tune space {key!r}: unknown kind {kind!r}; use {sorted(SPACE_KINDS)}"
            )
        make, arity = SPACE_KINDS[kind]
        if not isinstance(args, list) or (arity == 2 and len(args) != 2) or not args:
            shape = "[low, high]" if arity == 2 else "[value, value, ...]"
            raise ConfigError(f"tune space {key!r}: {kind} takes a list {shape}, got {args!r}")
        space[key] = make(*args) if arity == 2 else make(args)
    return space


def task_report(result: SequenceResult, task: int) -> dict[str, float]:
    """What a trial reports after ``task``: what a ``train@k`` stage logs to MLflow
    (:func:`sdlora.stages.records.task_metrics`), with ``task`` counted from 1."""
    return {"task": task + 1, **task_metrics(result.records, task)}


def sequence_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: one whole sequence with the sampled params, a report per task."""
    changes = {k: v for k, v in config.items() if k not in _FIXED}
    cfg = load_config(config["params"], {**changes, "progress": False})

    def report(task: int, model: SDLoRAViT, result: SequenceResult) -> None:
        tune.report(task_report(result, task))

    run_sequence(cfg, config["prepared"], on_task_end=report)


def run_sweep(
    params: str | Path,
    prepared: str | Path,
    space: Mapping[str, Any],
    *,
    num_samples: int,
    storage_path: str | Path,
    name: str,
    metric: str = "accuracy",
    grace_period: int = 1,
    cpus_per_trial: float = 1.0,
    seed: int = 0,
    experiment: str | None = None,
    tracking_uri: str | None = None,
) -> tune.ResultGrid:
    """Sample ``num_samples`` trials of ``space`` over the sequence in ``prepared``; ASHA on
    ``metric`` (maximised) at every task. Paths are made absolute: trials run in their own
    folders, possibly on other nodes (which then need them on a shared file system).

    With ``experiment``, MLflow gets one parent run named ``name`` and each trial as its child
    run (params, metrics at step = task), all written by this driver process through Ray's
    ``MLflowLoggerCallback``: one writer, so the default SQLite store is safe whatever process
    or node a trial runs in. ``tracking_uri`` as ``mlflow.tracking_uri`` (None: the project's
    SQLite file). The parent's id is in the returned grid's ``parent_run_id`` attribute. Like
    :meth:`sdlora.tracking.SequenceTracker.open`, the callback sets the process-wide tracking
    URI (``mlflow.set_tracking_uri``, which exports ``MLFLOW_TRACKING_URI``)."""
    params, prepared = Path(params).resolve(), Path(prepared).resolve()
    base = load_config(params)
    changes: dict[str, Any] = {}
    weights = base.backbone.weights
    if weights not in (None, "timm") and not Path(weights).is_absolute():
        changes["backbone.weights"] = str(Path(weights).resolve())
    num_tasks = len(read_manifest(prepared)["tasks"])
    callbacks, parent = [], None
    if experiment is not None:
        uri = resolve_tracking_uri(tracking_uri)
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
        parent = client.create_run(exp_id, run_name=name, tags={"sdlora.tune": "sweep"})
        children = {MLFLOW_PARENT_RUN_ID: parent.info.run_id, "sdlora.tune": "trial"}
        callbacks.append(
            MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment, tags=children)
        )
    scheduler = ASHAScheduler(time_attr="task", max_t=num_tasks, grace_period=grace_period)
    tuner = tune.Tuner(
        tune.with_resources(sequence_trial, {"cpu": cpus_per_trial}),
        param_space={
            "params": str(params),
            "prepared": str(prepared),
            **changes,
            **search_space(space),
        },
        tune_config=tune.TuneConfig(
            metric=metric,
            mode="max",
            num_samples=num_samples,
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=seed),  # the same samples per seed
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=str(Path(storage_path).resolve()), callbacks=callbacks
        ),
    )
    grid = tuner.fit()
    if parent is not None:
        best = grid.get_best_result()
        client.log_metric(parent.info.run_id, f"best_{metric}", float(best.metrics[metric]))
        client.set_terminated(parent.info.run_id)
    grid.parent_run_id = parent.info.run_id if parent is not None else None
    return grid


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (stored parameters, accuracy) that no other point beats: none has
    at most the storage and at least the accuracy with one of them strictly better. Sorted by
    storage."""
    front = []
    for i, (s_i, a_i) in enumerate(points):
        dominated = any(
            s_j <= s_i and a_j >= a_i and (s_j < s_i or a_j > a_i)
            for j, (s_j, a_j) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def trial_rows(grid: tune.ResultGrid, num_tasks: int) -> list[dict[str, Any]]:
    """One row per trial: its sampled params, the tasks it reached (ASHA may stop it early),
    accuracy on all seen classes and stored parameters at its last report, and its AAA when
    it ran every task."""
    rows = []
    for r in grid:
        history = r.metrics_dataframe
        reached = int(history["task"].iloc[-1]) if history is not None and len(history) else 0
        done = reached == num_tasks
        rows.append({
            "trial": r.metrics.get("trial_id", Path(r.path).name),
            "params": {k: v for k, v in r.config.items() if k not in _FIXED
                       and k != "backbone.weights"},
            "tasks": reached,
            "stopped_early": not done,
            "accuracy": float(history["accuracy"].iloc[-1]) if reached else None,
            "average_anytime_accuracy": float(history["accuracy"].mean()) if done else None,
            "stored_params": float(history["stored_params"].iloc[-1]) if reached else None,
        })  # fmt: skip
    return rows
