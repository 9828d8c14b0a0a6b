"""Stage ``prepare``: the benchmark into per-task Parquet splits, after checking the task plan."""

from __future__ import annotations

from typing import Any

from sdlora.config import Config
from sdlora.plan import PREPARED_DIR
from sdlora.stages.records import known_num_tasks, require_plan


def prepare_stage(cfg: Config) -> dict[str, Any]:
    """Write ``data/prepared`` (see :mod:`sdlora.data.prepare`) after checking the task plan."""
    from sdlora.data.prepare import prepare

    require_plan(cfg)
    known = known_num_tasks(cfg)
    if known is not None:  # fail before reading anything when the count is known
        cfg.check_num_tasks(known, "data.*")
    manifest = prepare(cfg.data, seed=cfg.seed, out=PREPARED_DIR, progress=cfg.progress)
    cfg.check_num_tasks(len(manifest["tasks"]), f"{PREPARED_DIR}/manifest.json")
    return manifest
