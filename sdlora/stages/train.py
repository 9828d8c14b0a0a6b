"""Stage ``train@k``: task k on Ray Train, evaluated on every task seen, tracked, recorded.

Ray's run folder is named after a hash of everything task k depends on, so a killed stage
resumes from its last epoch checkpoint when re-run, and a re-run of a finished stage restores
the finished state instead of training again (the output is then bit-identical)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from sdlora.atomic import atomic_directory
from sdlora.checkpoint import load_adapter
from sdlora.config import Config, ConfigError
from sdlora.data.prepare import read_manifest
from sdlora.distributed import ADAPTER, train_task_distributed
from sdlora.evaluate import evaluate_prepared
from sdlora.plan import PREPARED_DIR, task_output
from sdlora.report import write_json
from sdlora.stages.mlflow_run import open_run, sequence_key
from sdlora.stages.records import RECORD, StageError, read_record, require_plan, task_metrics
from sdlora.train import build_model, resolve_device


def train_stage(cfg: Config, task: int) -> dict[str, Any]:
    """Stage ``train@task``: train, evaluate tasks 0..task, track, write ``task_<k>/``."""
    plan = require_plan(cfg)
    if task not in plan:
        raise ConfigError(f"tasks: no entry {task} (params.yaml lists tasks 0..{len(plan) - 1})")
    manifest = read_manifest(PREPARED_DIR)
    cfg.check_num_tasks(len(manifest["tasks"]), f"{PREPARED_DIR}/manifest.json")
    records: list[dict[str, Any]] = []
    prev_adapter = None
    if task > 0:
        prev = Path(plan[task].prev)
        records = read_record(prev)["tasks"]
        if len(records) != task:
            raise StageError(f"{prev}/{RECORD} holds {len(records)} tasks, expected {task}")
        prev_adapter = prev / ADAPTER
    device = resolve_device(cfg.device)
    ray = cfg.ray
    with atomic_directory(task_output(task), marker=RECORD) as tmp:
        start = time.perf_counter()
        result = train_task_distributed(
            cfg,
            task,
            prev_adapter,
            PREPARED_DIR,
            tmp,
            num_workers=ray.num_workers,
            use_gpu=ray.use_gpu,
            cpus_per_worker=ray.cpus_per_worker,
            max_failures=ray.max_failures,
            storage_path=ray.storage_path,
            name=f"{sequence_key(cfg, upto=task)}-task{task:02d}",
            address=ray.address,
            threads_per_worker=max(1, int(ray.cpus_per_worker)),
            poll_interval_s=ray.poll_interval_s,
        )
        train_seconds = time.perf_counter() - start
        model = build_model(cfg, torch.device("cpu"))
        load_adapter(model, tmp / ADAPTER)
        accs, counts = evaluate_prepared(model, PREPARED_DIR, range(task + 1), cfg, device)
        records.append(
            {
                "task": task,
                "num_classes": int(manifest["tasks"][task]["num_classes"]),
                "rank": cfg.rank_for_task(task),
                "accuracy": accs,
                "counts": counts,
                "epochs": result.epochs,
                "storage": model.storage(),
                "magnitudes": model.magnitudes.alpha.detach().cpu().tolist(),
            }
        )
        with open_run(cfg, records, backfill=task) as tracker:
            tracker.log_task(task, {**task_metrics(records, task), "train_seconds": train_seconds})
            run_id = tracker.run_id
            if task < len(plan) - 1:
                tracker.close("RUNNING")  # the sequence goes on in the next stage
        payload = {"key": sequence_key(cfg), "mlflow_run_id": run_id, "tasks": records}
        write_json(tmp / RECORD, payload)
    return payload
