"""The one task loop: begin -> fit -> finish -> evaluate -> record, for every entry point.

- :func:`learn_task` trains task t into the model in this process: seeded
  :func:`sdlora.core.train.begin_task`, :func:`sdlora.core.train.fit_task` with the task's
  overrides under ``train.threads``, then :func:`sdlora.core.evaluate.finish_task` (``end_task``).
- :func:`assess_task` evaluates every task seen so far and builds the task's record
  (:func:`sdlora.core.records.task_record`).
- :func:`run_sequence` runs both for every task: ``sdlora run``, the compare stage and Tune's
  process trials call it as it is; Tune's ``ray_train`` trials give it a learner that trains
  each task on Ray Train (:func:`sdlora.ops.ray_train.ray_learner`). A pipeline ``train@k``
  stage is one step of it: its Ray Train workers run :func:`learn_task`'s pieces (rank 0
  finishes the task; every rank may resume from a checkpoint between begin and fit), its driver
  :func:`assess_task`.

So for the same params and seed every entry point gives the same accuracy matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sdlora.config import Config, ConfigError
from sdlora.core import metrics
from sdlora.core.diagnostics import task_known_accuracy
from sdlora.core.evaluate import evaluate, finish_task
from sdlora.core.model import SDLoRAViT
from sdlora.core.records import task_record
from sdlora.core.train import (
    World,
    begin_task,
    build_model,
    fit_task,
    resolve_device,
    torch_threads,
)
from sdlora.data.prepare import Prepared, PreparedLike, open_prepared
from sdlora.progress import ConsoleProgress, Progress

Epochs = list[dict[str, float]]  # one entry per epoch: train_loss, epoch_seconds, samples/s
Learner = Callable[[SDLoRAViT, Prepared, int], Epochs]  # trains task t into the model


def learn_task(
    model: SDLoRAViT,
    prepared: Prepared,
    task: int | list[int],
    cfg: Config,
    world: World,
    progress: Progress | None = None,
) -> Epochs:
    """Train ``task`` into ``model`` here (a list of tasks: joint training, as one task with
    task 0's settings); return the epoch log."""
    first = task if isinstance(task, int) else task[0]
    begin_task(model, cfg, first, prepared.task_classes(task)[1])
    with torch_threads(cfg.train.threads):  # as a Ray worker trains: the same floats
        epochs = fit_task(model, prepared, task, cfg.for_task(first), world, progress=progress)
        finish_task(model, prepared, first, cfg, world.device)
    return epochs


def assess_task(
    model: SDLoRAViT,
    prepared: Prepared,
    task: int,
    cfg: Config,
    device: Any,
    epochs: Epochs,
    tasks: list[int] | None = None,
) -> dict[str, Any]:
    """Task ``task``'s record: accuracy on every task seen (0..task, or ``tasks``) on ``device``,
    test counts, rank, epochs, storage, magnitudes."""
    seen = list(range(task + 1)) if tasks is None else tasks
    accs, counts = evaluate(model, prepared, seen, cfg, device)
    return task_record(model, task, model.task_classes[task], accs, counts, epochs)


@dataclass
class SequenceResult:
    """Every task's record; with ``ncm``, the task-known diagnostics' rows too.

    ``joint``: one record, trained on every task at once, whose accuracy row covers every task.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    ncm_rows: list[list[float]] = field(default_factory=list)
    head_known_rows: list[list[float]] = field(default_factory=list)
    joint: bool = False

    @property
    def matrix(self) -> np.ndarray:
        """T x T lower-triangular accuracy matrix; joint training: its one row, 1 x T."""
        if self.joint:
            return np.asarray([self.records[0]["accuracy"]], dtype=np.float64)
        return metrics.lower_triangular([r["accuracy"] for r in self.records])

    @property
    def counts(self) -> list[int]:
        return self.records[-1]["counts"]

    @property
    def summary(self) -> dict[str, Any]:
        if self.joint:
            return metrics.summarize_joint(self.records[0]["accuracy"], self.counts)
        return metrics.summarize(self.matrix, self.counts)


def check_prepared(prepared: PreparedLike, cfg: Config, num_tasks: int | None = None) -> Prepared:
    """``prepared`` opened (tasks ``0..num_tasks-1``; default: every task there), refused
    unless it was prepared from ``cfg.data`` and seed and its files are intact."""
    prepared = open_prepared(prepared, num_tasks)
    manifest = prepared.manifest
    p = manifest["params"]
    want = {"seed": cfg.seed, "init_cls": cfg.data.init_cls, "increment": cfg.data.increment}
    diffs = [f"{k}: {p.get(k)!r} there, {v!r} in params" for k, v in want.items() if p.get(k) != v]
    if manifest["dataset"] != cfg.data.dataset:
        diffs.insert(0, f"dataset: {manifest['dataset']!r} there, {cfg.data.dataset!r} in params")
    named = [t["class_names"] for t in prepared.tasks]
    if cfg.data.tasks is not None and named != cfg.data.tasks[: len(named)]:
        diffs.append(f"tasks: {named} there, {cfg.data.tasks} in data.tasks")
    if diffs:
        raise ConfigError(
            f"{prepared} was prepared from other settings ({'; '.join(diffs)}); "
            "prepare it again or point at the matching folder"
        )
    prepared.verify()  # every split's bytes, as the prepare stage wrote them
    return prepared


def run_sequence(
    cfg: Config,
    prepared: PreparedLike,
    *,
    learn: Learner | None = None,
    ncm: bool = False,
    on_task_end: Callable[[int, SDLoRAViT, SequenceResult], None] | None = None,
) -> SequenceResult:
    """Train every task of ``prepared`` in order; after each, evaluate every task seen so far.

    ``learn`` trains a task into the model (default :func:`learn_task`, in this process);
    ``ncm=True`` also records the drift diagnostics of :mod:`sdlora.core.diagnostics`;
    ``on_task_end(task, model, result)`` after each task.
    """
    prepared = check_prepared(prepared, cfg)
    device = resolve_device(cfg.device)
    model = build_model(cfg, device)
    world = World(device=device)
    progress = ConsoleProgress(enabled=cfg.progress)
    tasks = list(range(prepared.num_tasks))
    if model.policy.trains_jointly:  # SPEC §4: every task's data as one task, one row
        if learn is not None:
            raise ConfigError(f"model.method = {cfg.model.method!r} trains in one process only")
        epochs = learn_task(model, prepared, tasks, cfg, world, progress)
        result = SequenceResult([assess_task(model, prepared, 0, cfg, device, epochs, tasks)],
                                joint=True)  # fmt: skip
        if on_task_end is not None:
            on_task_end(0, model, result)
        return result
    learn = learn or (lambda m, p, t: learn_task(m, p, t, cfg, world, progress))
    result = SequenceResult()
    for t in tqdm(tasks, desc="tasks", unit="task", disable=not cfg.progress):
        epochs = learn(model, prepared, t)
        result.records.append(assess_task(model, prepared, t, cfg, device, epochs))
        if ncm:
            ncm_row, head_row = task_known_accuracy(model, prepared, range(t + 1), cfg, device)
            result.ncm_rows.append(ncm_row)
            result.head_known_rows.append(head_row)
        if on_task_end is not None:
            on_task_end(t, model, result)
    return result
