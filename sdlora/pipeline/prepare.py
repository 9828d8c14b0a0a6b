"""Stage ``prepare@k``: task k of the benchmark into its Parquet splits, after checking the plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdlora.config import Config, ConfigError
from sdlora.pipeline.layout import (
    check_data_root,
    check_known_num_tasks,
    count_tasks,
    known_num_tasks,
    require_plan,
    task_split,
)


def prepare_stage(
    cfg: Config, task: int | None = None, *, out: str | Path | None = None
) -> dict[str, Any]:
    """Write task ``task``'s folder ``out`` (default ``tasks.<task>.split``, ``data/prepared/
    task_XX``; see :mod:`sdlora.data.prepare`) after checking the plan. Returns its task.json.
    ``task`` None: every task of the plan in turn, into their default folders (what ``dvc
    repro`` runs stage by stage); returns the last one's."""
    from sdlora.data.prepare import prepare_task

    plan = require_plan(cfg)
    if task is None:
        if out is not None:
            raise ValueError("out names one task's folder: give the task too")
        return [prepare_stage(cfg, k) for k in plan][-1]
    if task not in plan:
        raise ConfigError(f"tasks: no entry {task} (params.yaml lists tasks 0..{len(plan) - 1})")
    check_data_root(cfg)  # a missing folder is named as such, not as a task-count mismatch
    check_known_num_tasks(cfg, "data.*")  # fail before reading anything when the count is known
    if cfg.data.tasks is None and known_num_tasks(cfg) is None:  # the folder decides the count
        cfg.check_num_tasks(num_tasks_of(cfg), f"{describe(cfg)} (its class folders)")
    out = task_split(task) if out is None else out
    return prepare_task(cfg.data, cfg.seed, task, out, progress=cfg.progress)


def describe(cfg: Config) -> str:
    """``dataset 'name' at ROOT``, for messages."""
    from sdlora.data.benchmarks import describe

    return describe(cfg.data)


def num_tasks_of(cfg: Config) -> int:
    """How many tasks ``data.*`` makes (the on-disk folder is listed if its class count varies)."""
    known = known_num_tasks(cfg)
    if known is not None:
        return known
    from sdlora.data.benchmarks import open_source

    total = open_source(cfg.data).num_classes
    return count_tasks(total, cfg.data.init_cls, cfg.data.increment)
