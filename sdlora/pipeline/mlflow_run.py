"""The sequence's identity and its MLflow run: one run per sequence, found again by its key."""

from __future__ import annotations

import re
import shlex
import sys
from typing import Any

from sdlora.config import Config, RunInputs, identity, identity_key
from sdlora.core.records import task_metrics
from sdlora.ops.tracking import SequenceTracker, flatten_params


def run_key(cfg: Config, inputs: RunInputs) -> str:
    """The sequence's MLflow key (tag ``sdlora_key``): its identity, so a re-run stage reopens
    its run and a sequence that computes anything differently gets a run of its own."""
    return identity_key(cfg, inputs)


def run_params(cfg: Config, inputs: RunInputs) -> dict[str, str]:
    """The MLflow run's params: the sequence's identity (:func:`sdlora.config.identity`) as
    flat keys, so runs that differ in what decides the numbers differ in a param."""
    raw = identity(cfg, inputs)
    tasks = raw.pop("tasks")
    params = flatten_params(raw)
    for k, entry in tasks.items():
        params.update({f"tasks.{k}.{n}": str(v) for n, v in entry.items() if v is not None})
    return params


def run_name(cfg: Config, key: str) -> str:
    """What the run list shows: method, dataset, tasks, seed, then the key's first 8 characters.

    The key hashes everything else the sequence depends on (:func:`sdlora.config.identity_key`), so
    two runs
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
    inputs: RunInputs,
    name: str | None = None,
    tags: dict[str, Any] | None = None,
) -> SequenceTracker:
    """Open (or reopen) the sequence's MLflow run; a new run gets tasks ``0..backfill-1``.

    ``stage`` (``train@3``, ``report``): its command line (``sys.argv``, as DVC ran it) is
    recorded in the tag :func:`command_tag` names. ``inputs``: the data's and weights' hashes
    (the run's key is the sequence's identity). ``name``: the run's name when it is
    created (default :func:`run_name`); ``tags``: more tags.
    """
    key = run_key(cfg, inputs)
    tracker = SequenceTracker()
    tracker.open(
        cfg.mlflow.tracking_uri,
        cfg.mlflow.experiment,
        run_name=name or run_name(cfg, key),
        key=key,
        params=run_params(cfg, inputs),
        tags={
            "sdlora.method": cfg.model.method,
            "sdlora.dataset": cfg.data.dataset,
            "sdlora.backbone": cfg.backbone.name,
            "sdlora.backbone_weights": cfg.backbone.weights,
            "sdlora.num_tasks": len(cfg.tasks or {}),
            command_tag(stage): shlex.join(sys.argv),
            **(tags or {}),
        },
    )
    if tracker.created:
        for j in range(backfill):
            tracker.log_task(j, task_metrics(records, j))
    return tracker
