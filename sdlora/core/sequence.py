"""A whole task sequence in one process (``sdlora run``): world size 1, no Ray, no DVC.

It goes through the pipeline's own functions: :func:`sdlora.core.train.begin_task`,
:func:`sdlora.core.train.fit_task`, ``end_task`` and :func:`sdlora.core.evaluate.evaluate` on the
same
prepared splits, and builds the same per-task records (:func:`sdlora.core.records.task_record`) as
the ``train@k`` stages. So for the same params and seed it gives the accuracy matrix that
``dvc repro`` gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
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
    task_classes,
    torch_threads,
)
from sdlora.data.prepare import read_manifest
from sdlora.progress import ConsoleProgress


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


def check_prepared(prepared: str | Path, cfg: Config) -> dict[str, Any]:
    """The manifest of ``prepared``, refused unless it was prepared from ``cfg.data`` and seed."""
    manifest = read_manifest(prepared)
    p = manifest["params"]
    want = {"seed": cfg.seed, "init_cls": cfg.data.init_cls, "increment": cfg.data.increment}
    diffs = [f"{k}: {p.get(k)!r} there, {v!r} in params" for k, v in want.items() if p.get(k) != v]
    if manifest["dataset"] != cfg.data.dataset:
        diffs.insert(0, f"dataset: {manifest['dataset']!r} there, {cfg.data.dataset!r} in params")
    if diffs:
        raise ConfigError(
            f"{prepared} was prepared from other settings ({'; '.join(diffs)}); "
            "prepare it again or point at the matching folder"
        )
    return manifest


def run_sequence(
    cfg: Config,
    prepared: str | Path,
    *,
    ncm: bool = False,
    on_task_end: Callable[[int, SDLoRAViT, SequenceResult], None] | None = None,
) -> SequenceResult:
    """Train every task of ``prepared`` in order; after each, evaluate every task seen so far.

    ``ncm=True`` also records the drift diagnostics of :mod:`sdlora.core.diagnostics`.
    """
    manifest = check_prepared(prepared, cfg)
    device = resolve_device(cfg.device)
    model = build_model(cfg, device)
    world = World(device=device)
    num_tasks = len(manifest["tasks"])
    progress = ConsoleProgress(enabled=cfg.progress)
    if model.policy.trains_jointly:
        return _run_joint(model, cfg, prepared, num_tasks, world, progress, on_task_end)
    result = SequenceResult()
    for t in tqdm(range(num_tasks), desc="tasks", unit="task", disable=not cfg.progress):
        num_classes = int(manifest["tasks"][t]["num_classes"])
        begin_task(model, cfg, t, num_classes)
        with torch_threads(cfg.train.threads):  # as a Ray worker trains: the same floats
            epochs = fit_task(model, prepared, t, cfg.for_task(t), world, progress=progress)
            finish_task(model, prepared, t, cfg, device)
        accs, counts = evaluate(model, prepared, range(t + 1), cfg, device)
        result.records.append(task_record(model, t, num_classes, accs, counts, epochs))
        if ncm:
            ncm_row, head_row = task_known_accuracy(model, prepared, range(t + 1), cfg, device)
            result.ncm_rows.append(ncm_row)
            result.head_known_rows.append(head_row)
        if on_task_end is not None:
            on_task_end(t, model, result)
    return result


def _run_joint(
    model: SDLoRAViT,
    cfg: Config,
    prepared: str | Path,
    num_tasks: int,
    world: World,
    progress: ConsoleProgress,
    on_task_end: Callable[[int, SDLoRAViT, SequenceResult], None] | None,
) -> SequenceResult:
    """Joint training (SPEC §4): every task's data as one task (task 0's settings), then one
    evaluation of each task's test split: the matrix's one row."""
    tasks = list(range(num_tasks))
    begin_task(model, cfg, 0, task_classes(prepared, tasks)[1])
    with torch_threads(cfg.train.threads):
        epochs = fit_task(model, prepared, tasks, cfg.for_task(0), world, progress=progress)
        finish_task(model, prepared, 0, cfg, world.device)
    accs, counts = evaluate(model, prepared, tasks, cfg, world.device)
    result = SequenceResult(joint=True)
    result.records.append(task_record(model, 0, model.task_classes[0], accs, counts, epochs))
    if on_task_end is not None:
        on_task_end(0, model, result)
    return result
