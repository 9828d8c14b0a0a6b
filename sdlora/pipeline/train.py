"""Stage ``train@k``: task k on Ray Train, evaluated on every task seen, tracked, recorded.

Ray's run folder is named after a hash of everything task k depends on, so a killed stage
resumes from its last epoch checkpoint when re-run, and a re-run of a finished stage restores
the finished state instead of training again (the output is then bit-identical).

The console shows the epochs' progress and one line for the task; everything Ray prints goes to
``runs/logs/train@<k>.log`` (:data:`LOG`), shown on the console when training fails, or all
along with ``--verbose`` (or ``SDLORA_VERBOSE=1``)."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sdlora.config import Config, ConfigError, RunInputs, identity_key
from sdlora.core.checkpoint import load_adapter
from sdlora.core.loop import assess_task
from sdlora.core.records import task_metrics
from sdlora.core.train import resolve_device
from sdlora.data.prepare import open_tasks
from sdlora.files import atomic_directory, write_json
from sdlora.ops.console import tail
from sdlora.ops.ray_train import (
    ADAPTER,
    STATE,
    WORKERS_LOCK,
    TrainingFailed,
    train_task_distributed,
    wait_for_earlier_workers,
)
from sdlora.pipeline.layout import (
    BACKBONE_DIR,
    PREPARED_DIR,
    RECORD,
    StageError,
    read_inputs,
    read_record,
    require_plan,
    task_output,
)
from sdlora.pipeline.mlflow_run import open_run, run_key
from sdlora.pipeline.preflight import check_task_inputs
from sdlora.progress import VERBOSE_ENV

LOG = "runs/logs/train@{task}.log"  # everything Ray prints while task k trains (appended)


def _say(stage: str, text: str) -> None:
    print(f"{stage}: {text}", file=sys.stderr, flush=True)


def _start_log(path: Path, stage: str) -> None:
    """Open ``path``'s next section: which stage, when."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(f"\n===== {stage} {datetime.now().isoformat(timespec='seconds')} =====\n")


def _ray_run_note(run_folder: Path, epochs: int) -> str | None:
    """What Ray Train will do with the run in ``run_folder``: resume, restore, or nothing (None).
    Read from Ray's own record of the run (``Result.from_path``): a checkpoint folder a kill left
    before Ray registered it is not the run's."""
    import ray.train

    quiet = logging.getLogger("ray.train")  # from_path logs 3 INFO lines about the snapshot
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        checkpoint = ray.train.Result.from_path(str(run_folder.resolve())).checkpoint
        state = json.loads((Path(checkpoint.path) / STATE).read_text()) if checkpoint else None
    except (RuntimeError, OSError, ValueError):  # no run there, or Ray registered nothing yet
        return None
    finally:
        quiet.setLevel(level)
    if state is None:
        return None
    if state.get("finished"):
        return (
            f"{run_folder} holds this task's finished run: restoring it instead of training "
            "again (delete that folder to train anew)"
        )
    where = f"from the checkpoints in {run_folder}"
    return f"resuming at epoch {int(state['epoch']) + 2} of {epochs} {where}"


def task_run(cfg: Config, task: int, inputs: RunInputs) -> tuple[str, str]:
    """Ray's run name for task ``task`` and the identity its checkpoints carry: the key of what
    tasks 0..task depend on (:func:`sdlora.config.identity_key`). A re-run with the same
    identity resumes or restores that run; any other (DDP width and device included) trains
    anew in a folder of its own."""
    key = identity_key(cfg, inputs, upto=task)
    return f"{key}-task{task:02d}", key


def train_stage(
    cfg: Config,
    task: int,
    *,
    prepared: str | Path = PREPARED_DIR,
    backbone: str | Path = BACKBONE_DIR,
    prev: str | Path | None = None,
    out: str | Path | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Stage ``train@task``: train, evaluate tasks 0..task, track, write ``out``.

    ``prepared``: the prepare stage's output; ``backbone``: the pretrain stage's (its record);
    ``prev``: what the task starts from, the backbone folder for task 0, else task - 1's output
    (default ``tasks.<task>.prev``); ``out``: default ``runs/pipeline/task_<task>``.
    ``verbose``: Ray's output on the console instead of in ``runs/logs/train@<task>.log``.
    """
    began = time.perf_counter()
    plan = require_plan(cfg)
    if task not in plan:
        raise ConfigError(f"tasks: no entry {task} (params.yaml lists tasks 0..{len(plan) - 1})")
    prepared = open_tasks(cfg, task + 1, prepared)  # tasks 0..task, read once: all it uses
    records: list[dict[str, Any]] = []
    prev_adapter = None
    if task > 0:
        prev = Path(plan[task].prev if prev is None else prev)
        records = read_record(prev)["tasks"]
        if len(records) != task:
            raise StageError(f"{prev}/{RECORD} holds {len(records)} tasks, expected {task}")
        prev_adapter = prev / ADAPTER
    model = check_task_inputs(cfg, task, prepared, prev_adapter)  # before Ray or any write
    device = resolve_device(cfg.device)  # a device this machine lacks fails here, before Ray
    ray = cfg.ray
    inputs = read_inputs(prepared, backbone)
    run_name, key = task_run(cfg, task, inputs)
    stage = f"train@{task}"
    log_path = None if verbose else Path(LOG.format(task=task))
    workers = f"{ray.num_workers} Ray Train worker{'s' if ray.num_workers > 1 else ''}"
    _say(stage, f"task {task} of {len(plan)} ({cfg.model.method}) on {workers}")
    run_folder = Path(ray.storage_path) / run_name
    wait_for_earlier_workers(run_folder / WORKERS_LOCK, task, lambda text: _say(stage, text))
    note = _ray_run_note(run_folder, cfg.for_task(task).train.epochs)
    if note is not None:
        _say(stage, note)
    if log_path is not None:
        _say(stage, f"Ray's output goes to {log_path} (--verbose or {VERBOSE_ENV}=1 shows it)")
        _start_log(log_path, stage)
    with atomic_directory(task_output(task) if out is None else out, marker=RECORD) as tmp:
        start = time.perf_counter()
        try:
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
                name=run_name,
                identity=key,
                address=ray.address,
                poll_interval_s=ray.poll_interval_s,
                log_path=log_path,
                progress=cfg.progress,
            )
        except TrainingFailed:
            if log_path is not None:
                print(f"--- the end of {log_path} ---\n{tail(log_path)}\n---", file=sys.stderr)
            raise
        train_seconds = time.perf_counter() - start
        load_adapter(model, tmp / ADAPTER)  # the stage's model, now after task `task`
        records.append(assess_task(model, prepared, task, cfg, device, result.epochs))
        with open_run(cfg, records, backfill=task, stage=f"train@{task}", inputs=inputs) as tracker:
            # a restored finished run trained nothing: its time is not a training time
            seconds = "restore_seconds" if result.restored else "train_seconds"
            tracker.log_task(task, {**task_metrics(records, task), seconds: train_seconds})
            run_id = tracker.run_id
            if task < len(plan) - 1:
                tracker.close("RUNNING")  # the sequence goes on in the next stage
        payload = {
            "key": run_key(cfg, inputs),
            "mlflow_run_id": run_id,
            "tasks": records,
        }
        write_json(tmp / RECORD, payload)
    _say(stage, _summary(records, result, time.perf_counter() - began))
    return payload


def _summary(records: list[dict[str, Any]], result: Any, seconds: float) -> str:
    """The task's line: accuracy on every class seen, forgetting, how long training took."""
    task = len(records) - 1
    m = task_metrics(records, task)
    seen = sum(r["num_classes"] for r in records)
    line = f"accuracy {m['accuracy']:.2f}% on the {seen} classes seen"
    if task > 0:
        line += f", forgetting {m['forgetting']:.2f}"
    epochs = len(result.epochs)
    if result.restored:
        line += f"; {epochs} epochs, restored from Ray's finished run"
    elif epochs:
        trained = sum(e["epoch_seconds"] for e in result.epochs[result.start_epoch :])
        resumed = f" (resumed at epoch {result.start_epoch + 1})" if result.start_epoch else ""
        line += f"; {epochs} epochs{resumed}, {trained:.1f} s training"
    return f"{line}; {seconds:.1f} s in all"
