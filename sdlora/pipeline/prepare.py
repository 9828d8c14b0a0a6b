"""Stage ``prepare``: the benchmark into per-task Parquet splits, after checking the task plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdlora.config import Config
from sdlora.pipeline.layout import (
    PREPARED_DIR,
    check_data_root,
    check_known_num_tasks,
    count_tasks,
    known_num_tasks,
    require_plan,
)


def prepare_stage(cfg: Config, *, out: str | Path = PREPARED_DIR) -> dict[str, Any]:
    """Write ``out`` (``data/prepared``, see :mod:`sdlora.data.prepare`) after checking the plan."""
    from sdlora.data.prepare import prepare

    require_plan(cfg)
    check_data_root(cfg)  # a missing folder is named as such, not as a task-count mismatch
    check_known_num_tasks(cfg, "data.*")  # fail before reading anything when the count is known
    manifest = prepare(cfg.data, seed=cfg.seed, out=out, progress=cfg.progress)
    cfg.check_num_tasks(len(manifest["tasks"]), f"{out}/manifest.json")
    return manifest


def num_tasks_of(cfg: Config) -> int:
    """How many tasks ``data.*`` makes (the on-disk folder is listed if its class count varies)."""
    known = known_num_tasks(cfg)
    if known is not None:
        return known
    from sdlora.data.benchmarks import open_source

    total = open_source(cfg.data).num_classes
    return count_tasks(total, cfg.data.init_cls, cfg.data.increment)
