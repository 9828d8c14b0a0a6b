"""Stage ``prepare``: the benchmark into per-task Parquet splits, after checking the task plan."""

from __future__ import annotations

from typing import Any

from sdlora.config import EMBEDDED_DATASETS, ON_DISK_DATASETS, Config
from sdlora.plan import PREPARED_DIR, count_tasks
from sdlora.stages.records import require_plan


def prepare_stage(cfg: Config) -> dict[str, Any]:
    """Write ``data/prepared`` (see :mod:`sdlora.data.prepare`) after checking the task plan."""
    from sdlora.data.prepare import prepare

    require_plan(cfg)
    total = {**EMBEDDED_DATASETS, **ON_DISK_DATASETS}.get(cfg.data.dataset)
    if total is not None:  # fail before reading anything when the count is known
        cfg.check_num_tasks(count_tasks(total, cfg.data.init_cls, cfg.data.increment), "data.*")
    manifest = prepare(cfg.data, seed=cfg.seed, out=PREPARED_DIR, progress=cfg.progress)
    cfg.check_num_tasks(len(manifest["tasks"]), f"{PREPARED_DIR}/manifest.json")
    return manifest
