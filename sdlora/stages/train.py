"""Stage ``train@k``: task k on Ray Train, evaluated on every task seen, tracked, recorded.

Ray's run folder is named after a hash of everything task k depends on, so a killed stage
resumes from its last epoch checkpoint when re-run, and a re-run of a finished stage restores
the finished state instead of training again (the output is then bit-identical)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sdlora.atomic import atomic_directory, write_json
from sdlora.checkpoint import load_adapter
from sdlora.config import Config, ConfigError
from sdlora.data.prepare import read_manifest
from sdlora.distributed import ADAPTER, train_task_distributed
from sdlora.evaluate import evaluate
from sdlora.plan import BACKBONE_DIR, PREPARED_DIR, task_output
from sdlora.records import task_record
from sdlora.stages.cli import add_dir, run_stage, stage_parser
from sdlora.stages.mlflow_run import open_run, sequence_key
from sdlora.stages.records import RECORD, StageError, read_record, require_plan, task_metrics
from sdlora.train import build_model, resolve_device


def train_stage(
    cfg: Config,
    task: int,
    *,
    prepared: str | Path = PREPARED_DIR,
    backbone: str | Path = BACKBONE_DIR,
    prev: str | Path | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Stage ``train@task``: train, evaluate tasks 0..task, track, write ``out``.

    ``prepared``: the prepare stage's output; ``backbone``: the pretrain stage's (its record);
    ``prev``: what the task starts from, the backbone folder for task 0, else task - 1's output
    (default ``tasks.<task>.prev``); ``out``: default ``runs/pipeline/task_<task>``.
    """
    plan = require_plan(cfg)
    if task not in plan:
        raise ConfigError(f"tasks: no entry {task} (params.yaml lists tasks 0..{len(plan) - 1})")
    manifest = read_manifest(prepared)
    cfg.check_num_tasks(len(manifest["tasks"]), f"{prepared}/manifest.json")
    records: list[dict[str, Any]] = []
    prev_adapter = None
    if task > 0:
        prev = Path(plan[task].prev if prev is None else prev)
        records = read_record(prev)["tasks"]
        if len(records) != task:
            raise StageError(f"{prev}/{RECORD} holds {len(records)} tasks, expected {task}")
        prev_adapter = prev / ADAPTER
    device = resolve_device(cfg.device)
    ray = cfg.ray
    key = sequence_key(cfg, upto=task, prepared=prepared, backbone=backbone)
    with atomic_directory(task_output(task) if out is None else out, marker=RECORD) as tmp:
        start = time.perf_counter()
        result = train_task_distributed(
            cfg,
            task,
            prev_adapter,
            prepared,
            tmp,
            num_workers=ray.num_workers,
            use_gpu=ray.use_gpu,
            cpus_per_worker=ray.cpus_per_worker,
            max_failures=ray.max_failures,
            storage_path=ray.storage_path,
            name=f"{key}-task{task:02d}",
            address=ray.address,
            poll_interval_s=ray.poll_interval_s,
        )
        train_seconds = time.perf_counter() - start
        model = build_model(cfg)
        load_adapter(model, tmp / ADAPTER)
        accs, counts = evaluate(model, prepared, range(task + 1), cfg, device)
        num_classes = int(manifest["tasks"][task]["num_classes"])
        records.append(task_record(model, task, num_classes, accs, counts, result.epochs))
        with open_run(cfg, records, backfill=task, prepared=prepared, backbone=backbone) as tracker:
            tracker.log_task(task, {**task_metrics(records, task), "train_seconds": train_seconds})
            run_id = tracker.run_id
            if task < len(plan) - 1:
                tracker.close("RUNNING")  # the sequence goes on in the next stage
        payload = {
            "key": sequence_key(cfg, prepared=prepared, backbone=backbone),
            "mlflow_run_id": run_id,
            "tasks": records,
        }
        write_json(tmp / RECORD, payload)
    return payload


def main(argv: list[str] | None = None) -> int:
    """``pipelines/train.py --task K [--params P] [--prepared DIR] [--backbone DIR] [--prev DIR]
    [--out DIR]``."""
    parser = stage_parser("train", "Task K on Ray Train, evaluated on every task seen, tracked.")
    parser.add_argument("--task", type=int, required=True, help="the task index K")
    add_dir(parser, "--prepared", "the prepare stage's output", PREPARED_DIR)
    add_dir(parser, "--backbone", "the pretrain stage's output (its record)", BACKBONE_DIR)
    what = "what task K starts from: the backbone folder (K = 0) or task K-1's output"
    add_dir(parser, "--prev", what, None, "tasks.K.prev")
    add_dir(parser, "--out", "output folder", None, "runs/pipeline/task_K")
    return run_stage(
        "train",
        parser,
        argv,
        lambda cfg, args: train_stage(
            cfg,
            args.task,
            prepared=args.prepared,
            backbone=args.backbone,
            prev=args.prev,
            out=args.out,
        ),
    )
