"""The sequence's identity and its MLflow run: one run per sequence, found again by its key."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from sdlora.config import Config
from sdlora.core.records import task_metrics
from sdlora.data.prepare import read_manifest
from sdlora.ops.tracking import SequenceTracker, flatten_params
from sdlora.pipeline.layout import BACKBONE_DIR, OVERRIDES, PREPARED_DIR, read_backbone_record


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
    progress bars, the compare and tune stages' settings, and the entries of later tasks.
    ``device`` is included: results may differ.
    """
    raw = cfg.model_dump(
        mode="json", exclude={"progress", "ray", "mlflow", "compare", "tune", "final_task"}
    )
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
    raw = cfg.model_dump(
        mode="json", exclude={"progress", "ray", "mlflow", "compare", "tune", "tasks", "final_task"}
    )
    params = flatten_params(raw)
    for k, entry in (cfg.tasks or {}).items():
        for name in OVERRIDES:
            if getattr(entry, name) is not None:
                params[f"tasks.{k}.{name}"] = str(getattr(entry, name))
    params["data.content_hash"] = read_manifest(prepared)["content_hash"]
    params["backbone.sha256"] = str(read_backbone_record(backbone).get("sha256"))
    return params


def run_name(cfg: Config, key: str) -> str:
    """What the run list shows: method, dataset, tasks, seed, then the key's first 8 characters.

    The key hashes everything else the sequence depends on (:func:`sequence_key`), so two runs
    differing only in, say, ``train.lr`` or a task's rank get different names.
    """
    tasks = len(cfg.tasks or {})
    return f"{cfg.model.method}-{cfg.data.dataset}-{tasks}tasks-s{cfg.seed}-{key[:8]}"


def command_tag(stage: str) -> str:
    """The run tag holding ``stage``'s command line, e.g. ``sdlora.command.train_3``."""
    return "sdlora.command." + re.sub(r"[^A-Za-z0-9_.-]+", "_", stage)


def open_run(
    cfg: Config,
    records: list[dict[str, Any]],
    backfill: int,
    *,
    stage: str,
    prepared: str | Path = PREPARED_DIR,
    backbone: str | Path = BACKBONE_DIR,
    name: str | None = None,
    tags: dict[str, Any] | None = None,
) -> SequenceTracker:
    """Open (or reopen) the sequence's MLflow run; a new run gets tasks ``0..backfill-1``.

    ``stage`` (``train@3``, ``report``): its command line (``sys.argv``, as DVC ran it) is
    recorded in the tag :func:`command_tag` names. ``prepared`` and ``backbone``: the prepare
    and pretrain stages' outputs (manifest, record). ``name``: the run's name when it is
    created (default :func:`run_name`); ``tags``: more tags.
    """
    manifest = read_manifest(prepared)
    record = read_backbone_record(backbone)
    key = sequence_key(cfg, prepared=prepared, backbone=backbone)
    tracker = SequenceTracker()
    tracker.open(
        cfg.mlflow.tracking_uri,
        cfg.mlflow.experiment,
        run_name=name or run_name(cfg, key),
        key=key,
        params=run_params(cfg, prepared=prepared, backbone=backbone),
        tags={
            "sdlora.method": cfg.model.method,
            "sdlora.dataset": manifest["dataset"],
            "sdlora.backbone": cfg.backbone.name,
            "sdlora.backbone_weights": record.get("weights"),
            "sdlora.num_tasks": len(cfg.tasks or {}),
            command_tag(stage): shlex.join(sys.argv),
            **(tags or {}),
        },
    )
    if tracker.created:
        for j in range(backfill):
            tracker.log_task(j, task_metrics(records, j))
    return tracker
