"""The sequence's identity and its MLflow run: one run per sequence, found again by its key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sdlora.config import Config
from sdlora.data.prepare import read_manifest
from sdlora.plan import BACKBONE_DIR, OVERRIDES, PREPARED_DIR
from sdlora.stages.records import read_backbone_record, task_metrics
from sdlora.tracking import SequenceTracker, flatten_params


def sequence_key(
    cfg: Config,
    upto: int | None = None,
    *,
    prepared: str | Path = PREPARED_DIR,
    backbone: str | Path = BACKBONE_DIR,
) -> str:
    """Hash of what tasks ``0..upto`` (default all) depend on: config, data, backbone weights.

    The data and weights hashes come from ``prepared``'s manifest and ``backbone``'s record.
    Not included: where and how wide it runs (``ray``), where it is tracked (``mlflow``),
    progress bars, and the entries of later tasks. ``device`` is included: results may differ.
    """
    raw = cfg.model_dump(mode="json", exclude={"progress", "ray", "mlflow", "final_task"})
    if upto is not None:
        raw["tasks"] = {k: v for k, v in (raw["tasks"] or {}).items() if int(k) <= upto}
    raw["data_hash"] = read_manifest(prepared)["content_hash"]
    raw["backbone_sha256"] = read_backbone_record(backbone).get("sha256")
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def run_params(
    cfg: Config, *, prepared: str | Path = PREPARED_DIR, backbone: str | Path = BACKBONE_DIR
) -> dict[str, str]:
    """The MLflow run's params: the config (flat keys), task overrides, data and weights hashes."""
    raw = cfg.model_dump(mode="json", exclude={"progress", "ray", "mlflow", "tasks", "final_task"})
    params = flatten_params(raw)
    for k, entry in (cfg.tasks or {}).items():
        for name in OVERRIDES:
            if getattr(entry, name) is not None:
                params[f"tasks.{k}.{name}"] = str(getattr(entry, name))
    params["data.content_hash"] = read_manifest(prepared)["content_hash"]
    params["backbone.sha256"] = str(read_backbone_record(backbone).get("sha256"))
    return params


def open_run(
    cfg: Config,
    records: list[dict[str, Any]],
    backfill: int,
    *,
    prepared: str | Path = PREPARED_DIR,
    backbone: str | Path = BACKBONE_DIR,
) -> SequenceTracker:
    """Open (or reopen) the sequence's MLflow run; a new run gets tasks ``0..backfill-1``.

    ``prepared`` and ``backbone``: the prepare and pretrain stages' outputs (manifest, record).
    """
    manifest = read_manifest(prepared)
    record = read_backbone_record(backbone)
    tracker = SequenceTracker()
    tracker.open(
        cfg.mlflow.tracking_uri,
        cfg.mlflow.experiment,
        run_name=f"{cfg.model.method}-{cfg.data.dataset}-{len(cfg.tasks or {})}tasks-s{cfg.seed}",
        key=sequence_key(cfg, prepared=prepared, backbone=backbone),
        params=run_params(cfg, prepared=prepared, backbone=backbone),
        tags={
            "sdlora.method": cfg.model.method,
            "sdlora.dataset": manifest["dataset"],
            "sdlora.backbone": cfg.backbone.name,
            "sdlora.backbone_weights": record.get("weights"),
            "sdlora.num_tasks": len(cfg.tasks or {}),
        },
    )
    if tracker.created:
        for j in range(backfill):
            tracker.log_task(j, task_metrics(records, j))
    return tracker
