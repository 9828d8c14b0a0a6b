"""Ray Tune over whole task sequences: the tune stage's library (issue 11).

A trial is one task sequence on the pipeline's prepared splits and backbone, with params
changed by the sampled values (``space`` in tune/params.yaml) and the fixed ones (``fixed``). It
reports
after every task, with ``task`` (1..T) as Tune's time attribute, so
:class:`ray.tune.schedulers.ASHAScheduler` stops weak trials after early tasks. The metrics are
the pipeline's own (:func:`sdlora.pipeline.layout.task_metrics`: ``accuracy`` on all seen
classes, ``forgetting`` so far, ``stored_params``, ...) plus the running
``average_anytime_accuracy``.

Two trial modes (``trial_mode``), both through the pipeline's functions:

- ``process``: :func:`sdlora.core.loop.run_sequence` in the trial's own process, world size 1
  (``sdlora run``'s loop; one trial holds ``cpus_per_trial`` CPUs);
- ``ray_train``: the same loop with a learner that runs each task as the ``train@k`` stages
  do, with a ``TorchTrainer`` of ``ray.num_workers`` workers
  (:func:`sdlora.ops.ray_train.ray_learner`), under a deterministic run name per trial and
  task, so a restored trial finds its finished tasks and resumes the cut one from its last
  epoch checkpoint. The driver reports to Tune itself after evaluating each task:
  Ray's ``TuneReportCallback`` would forward the workers' per-epoch reports, which carry no
  task and so no time attribute for ASHA.

The deadlock rule (:func:`concurrency`): Train workers ask for their CPUs after their trial
has started, so trials running at once must leave room for all their workers, or every trial
waits forever for CPUs the others hold. A trial's need is its own CPUs plus its workers'; the
sweep runs at most floor(cluster CPUs / need) trials at once and refuses to start when one
trial does not fit.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from pydantic import ValidationError
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.result import AUTO_RESULT_KEYS
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from sdlora.config import (
    SPACE_KINDS,
    ConfigError,
    RayConfig,
    RunInputs,
    TuneSettings,
    identity_key,
    load_config,
)
from sdlora.core import metrics
from sdlora.core.loop import run_sequence
from sdlora.core.methods import method_class
from sdlora.core.records import accuracy_matrix, task_metrics
from sdlora.data.prepare import read_manifest
from sdlora.ops.ray_train import ray_learner
from sdlora.ops.tracking import SequenceTracker

_SAMPLERS = {
    "loguniform": tune.loguniform,
    "uniform": tune.uniform,
    "choice": tune.choice,
    "grid": tune.grid_search,  # every value, times num_samples
}
SWEEP_TAG = "sdlora.tune"  # MLflow tag: "sweep" on the parent run, "trial" on its children
NAME_TAG = "sdlora.tune.name"  # MLflow tag: the sweep's name (the parent's key is the name too)
QUIET_ENV = "RAY_AIR_NEW_OUTPUT"  # "0" (with verbose=0): Tune prints no tables of its own
STATE_ENV = "TUNE_GLOBAL_CHECKPOINT_S"  # how often Tune saves the experiment's state
STATE_PERIOD_S = 1  # ... and (SyncConfig.sync_period) copies it to storage_path


def search_space(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Tune's ``param_space`` from ``{key: {kind: arguments}}`` (``space`` in tune/params.yaml);
    a bad entry raises :class:`ConfigError` naming its key."""
    try:
        TuneSettings(space=dict(spec))
    except ValidationError as err:
        raise ConfigError(
            "tune/params.yaml: space: "
            + "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
        ) from None
    space = {}
    for key, entry in spec.items():
        ((kind, args),) = entry.items()
        space[key] = _SAMPLERS[kind](*args) if SPACE_KINDS[kind] else _SAMPLERS[kind](args)
    return space


def check_trials(params: str | Path, settings: TuneSettings) -> None:
    """Refuse, before anything starts, a value some trial could get that params.yaml would
    not accept: every choice/grid value and both ends of every range, with ``fixed``.
    The message names the ``space`` (tune/params.yaml) key and the value."""
    fixed = dict(settings.fixed)
    for key, entry in [(None, None), *settings.space.items()]:
        values = [None] if entry is None else next(iter(entry.values()))
        for value in values:
            change = {} if key is None else {key: value}
            where = "fixed" if key is None else f"space.{key} = {value!r}"
            where = f"tune/params.yaml: {where}"
            try:
                cfg = load_config(params, {**fixed, **change})
            except ConfigError as err:
                lines = str(err).splitlines()  # "<params>: invalid configuration", then the keys
                why = "; ".join(ln.strip() for ln in lines[1:]) or lines[0]
                raise ConfigError(f"{where} gives an invalid trial: {why}") from None
            if method_class(cfg.model.method).trains_jointly:
                raise ConfigError(
                    f"{where}: joint training reports once, not after every task, and "
                    "cannot be applied to the per-task pipeline; tune a per-task method"
                )


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares: the params file, the splits, the fixed changes, and where a
    ``ray_train`` trial runs its tasks (``work``: per-trial adapters and Ray Train runs)."""

    params: str
    prepared: str
    inputs: RunInputs  # the splits' and weights' hashes: with a trial's config, its identity
    changes: dict[str, Any]
    mode: str
    ray: RayConfig
    work: str


def task_report(records: list[dict[str, Any]], task: int) -> dict[str, float]:
    """What a trial reports after ``task``: what a ``train@k`` stage logs to MLflow
    (:func:`sdlora.pipeline.layout.task_metrics`), the running AAA, and ``task`` counted from
    1 (Tune's time attribute: tasks done); ``task_train_seconds``: the task's epochs' time."""
    R = accuracy_matrix(records[: task + 1])
    return {
        "task": task + 1,
        **task_metrics(records, task),
        "average_anytime_accuracy": metrics.average_anytime_accuracy(R, records[task]["counts"]),
        "task_train_seconds": sum(e["epoch_seconds"] for e in records[task]["epochs"]),
    }


def sequence_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Tune function trainable: one whole sequence with the sampled params, a report per task."""
    import ray

    cfg = load_config(setup.params, {**setup.changes, **config, "progress": False})
    node = ray.get_runtime_context().get_node_id()  # where it ran (not an MLflow metric)

    def report(records: list[dict[str, Any]], task: int) -> None:
        tune.report({**task_report(records, task), "node": node})

    learn = None  # process: every task in this trial's process (``sdlora run``'s loop)
    if setup.mode == "ray_train":  # a TorchTrainer per task, as the train@k stages run them;
        # run names are the trial's id and the task: a restored trial restores finished tasks
        work = Path(setup.work) / tune.get_context().get_trial_id()
        learn = ray_learner(cfg, work, lambda t: identity_key(cfg, setup.inputs, upto=t), setup.ray)
    run_sequence(cfg, setup.prepared, learn=learn,
                 on_task_end=lambda t, _, result: report(result.records, t))  # fmt: skip


def trial_need(settings: TuneSettings, ray: RayConfig, device: str = "cpu") -> dict[str, float]:
    """CPUs and GPUs one trial holds while it runs: its own (a GPU when ``device`` is CUDA: it
    trains or evaluates there), plus its Train workers' in ``ray_train`` mode."""
    need = {"CPU": settings.cpus_per_trial, "GPU": 1.0 if device.startswith("cuda") else 0.0}
    if settings.trial_mode == "ray_train":
        need["CPU"] += ray.num_workers * ray.cpus_per_worker
        need["GPU"] += ray.num_workers if ray.use_gpu else 0
    return need


def concurrency(
    settings: TuneSettings, ray: RayConfig, cluster: Mapping[str, float], device: str = "cpu"
) -> int:
    """How many trials may run at once on ``cluster`` (``ray.cluster_resources()``) without the
    Train workers of running trials waiting forever for CPUs other trials hold (module
    docstring). Raises :class:`ConfigError` when one trial does not fit, or when
    ``max_concurrent_trials`` asks for more than fit."""
    need = trial_need(settings, ray, device)
    fit = min(math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0)
    what = f"{settings.cpus_per_trial} (cpus_per_trial in tune/params.yaml)"
    if settings.trial_mode == "ray_train":
        what += (
            f" + {ray.num_workers} Train worker(s) x {ray.cpus_per_worker} (ray.num_workers x "
            "ray.cpus_per_worker)"
        )
    has = f"{cluster.get('CPU', 0.0):g} CPUs"
    if fit < 1:
        gpus = ""
        if need["GPU"]:
            gpus = f" and {need['GPU']:g} GPU(s)"
            has += f" and {cluster.get('GPU', 0.0):g} GPUs"
        raise ConfigError(
            f"one trial needs {need['CPU']:g} CPUs{gpus} = {what}, but the Ray cluster has "
            f"{has}: it would wait forever. Lower ray.cpus_per_worker (fractions such as 0.5 "
            "are fine), ray.num_workers or cpus_per_trial, use trial_mode: process "
            "(tune/params.yaml), "
            "or add nodes"
        )
    wanted = settings.max_concurrent_trials
    if settings.trial_mode == "ray_train" and wanted is not None and wanted > fit:
        raise ConfigError(
            f"max_concurrent_trials = {wanted} (tune/params.yaml), but {fit} trial(s) of "
            f"{need['CPU']:g} CPUs "
            f"({what}) fit the cluster's {has}: more would leave Train workers waiting forever "
            f"for CPUs; set it to {fit} or less, or null"
        )
    return min(fit, wanted) if wanted is not None else fit


_NOT_LOGGED = {*AUTO_RESULT_KEYS, "task", "done", "trial_id", "node"}  # Tune's, or the step


class TaskStepMLflowLogger(MLflowLoggerCallback):
    """Ray's MLflow callback, logging each report at step = task index (0-based, as the
    pipeline's runs do) and only the trial's own metrics (not Tune's timestamps and pids)."""

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        ours = {k: v for k, v in result.items() if k not in _NOT_LOGGED}
        step = int(result["task"]) - 1
        self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=ours, step=step)


class ConsoleLines(tune.Callback):
    """One line per trial event on stdout: a task's result, ASHA's stop, the end, an error.
    Also times, in this driver, each trial's start to its first report (``first_report_s``:
    the actor's start, set-up and task 0), which the trial itself cannot see whole."""

    def __init__(self, num_tasks: int, keys: list[str]) -> None:
        self.num_tasks, self.keys = num_tasks, keys
        self.started: dict[str, float] = {}
        self.first_report_s: dict[str, float] = {}

    def _name(self, trial: Any) -> str:
        sampled = ", ".join(f"{k}={_short(trial.config.get(k))}" for k in self.keys)
        return f"trial {trial.trial_id} ({sampled})"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started[trial.trial_id] = time.monotonic()
        _say(f"{self._name(trial)} started")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        first = ""
        if trial.trial_id in self.started and trial.trial_id not in self.first_report_s:
            took = time.monotonic() - self.started[trial.trial_id]
            self.first_report_s[trial.trial_id] = took
            first = f" ({took:.1f} s after its start, {took - result['task_train_seconds']:.1f} s "
            first += "of them not training)"
        _say(
            f"trial {trial.trial_id} task {int(result['task'])}/{self.num_tasks}: accuracy "
            f"{result['accuracy']:.2f}%, {int(result['stored_params']):,} stored params{first}"
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = int((trial.last_result or {}).get("task", 0))
        if done < self.num_tasks:
            _say(f"trial {trial.trial_id} stopped by ASHA after task {done} of {self.num_tasks}")
        else:
            _say(f"trial {trial.trial_id} finished all {self.num_tasks} tasks")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _say(f"trial {trial.trial_id} FAILED: see {Path(trial.local_path) / 'error.txt'}")


def _say(text: str) -> None:
    print(f"tune: {text}", flush=True)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value)


@dataclass
class Sweep:
    """A finished sweep: Tune's results, the MLflow parent run (None without tracking), and
    whether it continued an earlier, cut sweep of the same name."""

    grid: tune.ResultGrid
    parent_run_id: str | None
    restored: bool
    first_report_s: dict[str, float]  # trial id: start to first report, seen by the driver


def run_sweep(
    params: str | Path,
    prepared: str | Path,
    settings: TuneSettings,
    *,
    name: str,
    inputs: RunInputs,
    ray: RayConfig | None = None,
    experiment: str | None = None,
    tracking_uri: str | None = None,
) -> Sweep:
    """Run (or, when ``settings.storage_path/name`` holds a cut sweep, restore with
    ``Tuner.restore``) the sweep of ``settings`` over the sequence in ``prepared``.

    Ray must be initialised (:func:`sdlora.ops.ray_session.ensure_ray`). Paths are made absolute:
    trials run in their own folders, possibly on other nodes (which then need them, and the
    storage path, on a shared file system). ASHA maximises the objective's per-task metric
    (``accuracy`` for ``final_accuracy``, the running AAA for ``average_anytime_accuracy``).

    With ``experiment``, MLflow gets one parent run named ``name`` and each trial as its child
    run (params, metrics at step = task index), all written by this driver process through
    :class:`TaskStepMLflowLogger` (Ray's MLflow callback): one writer, so the default SQLite
    store is safe whatever process or node a trial runs in. ``tracking_uri`` as
    ``mlflow.tracking_uri`` (None: the project's SQLite file).
    """
    import ray as ray_module

    ray = ray or RayConfig()
    params, prepared = Path(params).resolve(), Path(prepared).resolve()
    check_trials(params, settings)
    base = load_config(params, settings.fixed)
    changes = dict(settings.fixed)
    weights = base.backbone.weights
    if weights not in (None, "timm") and not Path(weights).is_absolute():
        changes["backbone.weights"] = str(Path(weights).resolve())
    num_tasks = len(read_manifest(prepared)["tasks"])
    storage = Path(settings.storage_path).resolve()
    setup = TrialSetup(
        str(params), str(prepared), inputs, changes, settings.trial_mode, ray,
        str(storage / name / "work"),
    )  # fmt: skip
    metric = "accuracy" if settings.objective == "final_accuracy" else settings.objective
    own = trial_need(settings.model_copy(update={"trial_mode": "process"}), ray, base.device)
    trainable = tune.with_resources(  # what the trial's own process holds (not its workers)
        tune.with_parameters(sequence_trial, setup=setup), {"cpu": own["CPU"], "gpu": own["GPU"]}
    )
    restored = tune.Tuner.can_restore(storage / name)
    callbacks: list[tune.Callback] = [ConsoleLines(num_tasks, sorted(settings.space))]
    parent = None
    if experiment is not None:  # restored: the parent the cut sweep left; else a new one
        parent = SequenceTracker()
        tags = {SWEEP_TAG: "sweep", NAME_TAG: name}
        parent.open(tracking_uri, experiment, name, params=settings.fixed, tags=tags, key=name,
                    reopen=restored)  # fmt: skip
        parent.end_children("KILLED")  # the trials that were running start again
        children = {MLFLOW_PARENT_RUN_ID: parent.run_id, SWEEP_TAG: "trial", NAME_TAG: name}
        callbacks.append(TaskStepMLflowLogger(
            tracking_uri=parent.tracking_uri, experiment_name=experiment, tags=children
        ))  # fmt: skip
    limit = concurrency(settings, ray, ray_module.cluster_resources(), base.device)
    os.environ.setdefault(QUIET_ENV, "0")  # Tune's tables off: ConsoleLines says what happens
    # the experiment's state (which trials finished) reaches storage_path within seconds, so a
    # killed sweep restores every trial that finished (Tune's default: every 10 s and more)
    os.environ.setdefault(STATE_ENV, str(STATE_PERIOD_S))
    logging.getLogger("ray.tune").setLevel(logging.WARNING)  # "Wrote the latest version ..."
    if restored:
        tuner = tune.Tuner.restore(str(storage / name), trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(settings.space),
            tune_config=tune.TuneConfig(
                metric=metric,
                mode="max",
                num_samples=settings.num_samples,
                scheduler=ASHAScheduler(
                    time_attr="task",
                    max_t=num_tasks,
                    grace_period=min(settings.grace_period, num_tasks),
                    reduction_factor=settings.reduction_factor,
                ),
                # the same trials for the same seed; at most `limit` at once (the deadlock rule)
                search_alg=BasicVariantGenerator(max_concurrent=limit, random_state=settings.seed),
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(storage),
                callbacks=callbacks,
                verbose=0,
                sync_config=tune.SyncConfig(sync_period=STATE_PERIOD_S),
            ),
        )
    try:
        grid = tuner.fit()
    except BaseException:
        if parent is not None:
            parent.close("FAILED")
        raise
    parent_id = None if parent is None else parent.run_id
    if parent is not None:
        done = [r for r in grid if r.error is None and r.metrics.get("task") == num_tasks]
        if done:  # a trial ASHA stopped was scored on fewer classes: not comparable
            parent.log_task(0, {f"best_{metric}": max(r.metrics[metric] for r in done)})
        parent.close("FAILED" if grid.errors else "FINISHED")
    return Sweep(grid, parent_id, restored, callbacks[0].first_report_s)


def trial_rows(
    grid: tune.ResultGrid,
    num_tasks: int,
    keys: list[str],
    first_report_s: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per trial, sorted by trial id: its sampled params (``keys``), how it ended
    (``finished``, ``stopped`` by ASHA, ``error``), the tasks it reached, and at its last
    report accuracy on all seen classes, AAA so far, forgetting and stored parameters; with
    the time from its start to its first report (``first_report_s``: as this driver saw it
    when given, which includes the trial process's start; else Tune's ``time_total_s``) and how
    much of that was not task 0's training (``overhead_s``: start, set-up, evaluation, Ray
    Train's start in ``ray_train`` mode),
    and the Ray node it ran on."""
    rows = []
    for r in grid:
        history = r.metrics_dataframe
        n = 0 if history is None or "task" not in history else int(history["task"].iloc[-1])
        last = history.iloc[-1] if n else {}
        first = history.iloc[0] if n else {}
        status = "error" if r.error is not None else "finished" if n == num_tasks else "stopped"
        row: dict[str, Any] = {
            "trial": str((r.metrics or {}).get("trial_id") or Path(r.path).name),
            "path": r.path,
            **{k: r.config.get(k) for k in keys},
            "status": status,
            "tasks": n,
            "accuracy": float(last["accuracy"]) if n else None,
            "average_anytime_accuracy": float(last["average_anytime_accuracy"]) if n else None,
            "forgetting": float(last["forgetting"]) if n else None,
            "stored_params": int(last["stored_params"]) if n else None,
            "first_report_s": float(first["time_total_s"]) if n else None,
            "overhead_s": None,
            "seconds": float(last["time_total_s"]) if n else None,
            "node": str(last["node"]) if n else None,
        }
        if n and row["trial"] in (first_report_s or {}):
            row["first_report_s"] = float(first_report_s[row["trial"]])  # type: ignore[index]
        if n:
            row["overhead_s"] = row["first_report_s"] - float(first["task_train_seconds"])
        rows.append(row)
    return sorted(rows, key=lambda row: row["trial"])
