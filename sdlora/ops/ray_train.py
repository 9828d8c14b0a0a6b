"""Train one task of the sequence on Ray Train (data parallel, DDP over gloo or nccl).

:func:`train_task_distributed` starts (or attaches to) Ray and runs :func:`train_loop_per_worker`
on ``num_workers`` workers through a ``TorchTrainer``. Each worker runs the library's one loop,
:func:`sdlora.core.train.fit_task`, at its rank and world size:

- every worker builds the same model (seeded), loads the previous task's adapter and begins the
  task (:func:`sdlora.core.train.begin_task`, seeded: the same new pair on every rank);
- if Ray hands it a checkpoint (``ray.train.get_checkpoint()``: a worker restart after a failure,
  or a rerun with the same ``storage_path`` and ``name``), the adapter state (current pair
  included), the optimizer state and the epoch log are restored and training continues at the
  next epoch: resume is the normal path;
- rank 0 reports metrics and a checkpoint (adapter + optimizer + epoch log) every epoch and, at
  the end, calls ``end_task`` and writes the task's adapter to ``out_dir/adapter.safetensors``.

What the user sees (:func:`train_task_distributed`): Ray's own output (its start-up, the
controller's and workers' logs) goes to a log file, and the console shows the epochs' progress,
which rank 0 writes to ``out_dir/.progress.jsonl`` (:class:`sdlora.ops.console.FileProgress`) and
the driver draws (:class:`sdlora.ops.console.ProgressRelay`). Failures are split in two: an error
while the workers set the task up (a bad input the driver's checks missed: every rank reads the
same files) is agreed on by all ranks, which then stop without an error, so Ray does not retry
it, and the driver raises :class:`TaskInputError`; an error during training (a worker that dies)
is retried by Ray Train up to ``max_failures`` times, then raised as :class:`TrainingFailed`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from sdlora.config import Config
from sdlora.core.checkpoint import load_adapter, save_adapter
from sdlora.core.evaluate import evaluate, finish_task
from sdlora.core.model import SDLoRAViT
from sdlora.core.records import task_record
from sdlora.core.train import (
    World,
    begin_task,
    build_model,
    fit_task,
    local_batch_size,
    resolve_device,
    task_classes,
)
from sdlora.files import atomic_path
from sdlora.ops.console import FileProgress, ProgressRelay, redirect_output
from sdlora.ops.ray_session import ensure_ray
from sdlora.progress import ConsoleProgress

ADAPTER = "adapter.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "state.json"
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_LOG = "train.json"  # written beside the adapter: every epoch's loss, seconds, samples/s
PROGRESS = ".progress.jsonl"  # rank 0's progress, drawn by the driver; removed after training
SETUP_ERROR = ".setup_error.rank{rank}.json"  # a rank's set-up failure, read by the driver
ATTEMPT = ".attempt.json"  # the epoch this call's training started at; read by the driver


class TaskInputError(RuntimeError):
    """The workers could not set the task up (an input the driver's checks let through)."""


class TrainingFailed(RuntimeError):
    """Training failed on the workers after Ray Train's retries; the message says where to look."""


@dataclass
class DistributedResult:
    """What :func:`train_task_distributed` produced."""

    adapter: Path  # out_dir / adapter.safetensors: the task's state after end_task
    metrics: dict[str, Any]  # the last report that carried a checkpoint
    epochs: list[dict[str, float]]  # every epoch's train_loss, epoch_seconds, samples_per_second
    checkpoint: Path | None  # the last reported checkpoint's folder
    run_path: str  # Ray's run folder (storage_path / name)
    start_epoch: int  # the epoch this call's training started at (> 0: resumed)
    restored: bool  # Ray restored a finished run: no epoch trained in this call


# ---- the worker ----------------------------------------------------------------------------------


def load_task_model(cfg: Config, task: int, prev_adapter: str | Path | None) -> SDLoRAViT:
    """The model after tasks ``0..task-1``: built (seeded) and the previous adapter loaded."""
    model = build_model(cfg)
    if prev_adapter is not None:
        load_adapter(model, prev_adapter)
    if model.num_tasks != task:
        raise ValueError(
            f"task {task} needs the adapter of tasks 0..{task - 1}; "
            f"the previous adapter holds {model.num_tasks} tasks"
        )
    return model


def _write_checkpoint(
    folder: Path,
    model: SDLoRAViT,
    opt: torch.optim.Optimizer,
    epochs: list[dict[str, float]],
    fingerprint: dict,
) -> None:
    save_adapter(model, folder / ADAPTER, extra={"epoch": len(epochs) - 1})
    torch.save(opt.state_dict(), folder / OPTIMIZER)
    state = {"epoch": len(epochs) - 1, "epochs": epochs, **fingerprint}
    (folder / STATE).write_text(json.dumps(state))


def _read_state(folder: Path, fingerprint: dict) -> tuple[int, list[dict[str, float]]]:
    """The checkpoint's epoch and epoch log, after checking it belongs to this task and run
    (``fingerprint``: the task and the identity key of tasks 0..task, :func:`identity_key`)."""
    state = json.loads((folder / STATE).read_text())
    if {k: state.get(k) for k in fingerprint} != fingerprint:
        raise ValueError(
            f"checkpoint {folder} is from task {state.get('task')} of run "
            f"{state.get('identity')}, not task {fingerprint['task']} of run "
            f"{fingerprint['identity']} (another configuration, data, backbone or DDP width); "
            "use another run name or storage_path to start afresh"
        )
    return int(state["epoch"]), list(state.get("epochs", []))


def _any_rank(flag: bool, world: World) -> bool:
    """Whether ``flag`` is true on any rank (an all-reduce; no collective at world size 1)."""
    if world.size == 1:
        return flag
    t = torch.tensor([int(flag)], device=world.device)  # nccl reduces device tensors only
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: train task ``config["task"]`` (see the module docstring).

    ``config``: ``cfg`` (Config, paths as in params), ``weights`` (the backbone file's absolute
    path or None), ``task``, ``identity`` (the key of what tasks 0..task depend on, which a
    checkpoint must carry to be resumed), ``prev_adapter`` (str or None), ``prepared`` (folder),
    ``out_dir``,
    ``progress`` (whether rank 0 writes its progress for the driver).
    """
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    task: int = config["task"]
    out_dir = Path(config["out_dir"])
    cfg: Config = config["cfg"].for_task(task)  # the task's epochs/lr overrides, if any
    ctx = ray.train.get_context()
    world = World(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    torch.set_num_threads(cfg.train.threads)  # as sdlora run does: the same float results

    # Set-up reads the same files on every rank: a failure here is a bad input, which a retry
    # would only repeat. The ranks agree on it and stop cleanly; the driver reports it.
    failure: BaseException | None = None
    try:
        build_cfg = cfg
        if config.get("weights"):  # workers run in their own folders: the file's absolute path
            backbone = cfg.backbone.model_copy(update={"weights": config["weights"]})
            build_cfg = cfg.model_copy(update={"backbone": backbone})
        model = load_task_model(build_cfg, task, config["prev_adapter"])
        begin_task(model, cfg, task, task_classes(config["prepared"], task)[1])

        fingerprint = {"task": task, "identity": config["identity"]}
        start_epoch, opt_state, epoch_log = 0, None, []
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                last, epoch_log = _read_state(Path(folder), fingerprint)
                start_epoch = last + 1
                load_adapter(model, Path(folder) / ADAPTER)  # the current pair included
                opt_state = torch.load(Path(folder) / OPTIMIZER, map_location="cpu")
    except Exception as err:  # every set-up error is reported, none retried
        failure = err
        traceback.print_exc()  # into Ray's log, for the full story
    if _any_rank(failure is not None, world):
        if failure is not None:
            error = {"rank": world.rank, "type": type(failure).__name__, "message": str(failure)}
            with atomic_path(out_dir / SETUP_ERROR.format(rank=world.rank)) as tmp:
                tmp.write_text(json.dumps(error))
        return
    model.to(world.device)
    # Only the method's trainable set requires grad; DDP registers hooks for exactly those, and
    # all of them are used in every forward. The frozen backbone is identical on every rank.
    # A method that trains nothing by gradient (prototype) needs no DDP (which refuses it).
    trains = any(p.requires_grad for p in model.parameters())
    ddp = ray.train.torch.prepare_model(model, move_to_device=world.device) if trains else model

    def report(epoch: int, log: list[dict[str, float]], opt: torch.optim.Optimizer) -> None:
        metrics = {
            "task": task, "epoch": epoch, **log[-1], "world_size": world.size,
            "start_epoch": start_epoch,  # the epoch this attempt started at (resume: > 0)
        }  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if world.rank == 0:
                _write_checkpoint(Path(tmp), model, opt, log, fingerprint)
                ckpt = Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)

    progress = FileProgress(out_dir / PROGRESS) if config.get("progress") else None
    epoch_log = fit_task(
        model, config["prepared"], task, cfg, world, forward=ddp, start_epoch=start_epoch,
        optimizer_state=opt_state, on_epoch=report, epoch_log=epoch_log, progress=progress,
    )  # fmt: skip

    if world.rank == 0:
        finish_task(model, config["prepared"], task, cfg, world.device)  # KD: + fold accuracy
        model.cpu()
        save_adapter(model, out_dir / ADAPTER, extra={"task": task})  # atomic
        log = {"task": task, "epochs": epoch_log}  # the same bytes when Ray restores the run
        with atomic_path(out_dir / TRAIN_LOG) as tmp_log:
            tmp_log.write_text(json.dumps(log, indent=1) + "\n")
        (out_dir / ATTEMPT).write_text(json.dumps({"start_epoch": start_epoch}))


# ---- the driver ----------------------------------------------------------------------------------


def train_task_distributed(
    cfg: Config,
    task: int,
    prev_adapter: str | Path | None,
    prepared: str | Path,
    out_dir: str | Path,
    *,
    num_workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    max_failures: int = 0,
    storage_path: str | Path = "runs/ray",
    name: str | None = None,
    identity: str,
    address: str | None = None,
    poll_interval_s: float | None = None,
    log_path: str | Path | None = None,
    progress: bool = False,
    console: TextIO | None = None,
) -> DistributedResult:
    """Train task ``task`` on ``num_workers`` Ray Train workers; write ``out_dir/adapter...``.

    ``prev_adapter``: the adapter file after task ``task - 1`` (None for task 0). ``prepared``:
    the prepare stage's folder. Ray starts in-process unless ``address`` or ``RAY_ADDRESS``
    names a cluster (:func:`sdlora.ops.ray_session.ensure_ray`: Ray's own rule says which wins). A
    rerun with the same ``storage_path`` and ``name`` (default ``task{task}``) resumes from that
    run's last checkpoint (Ray Train V2) if the checkpoint carries ``identity``
    (:func:`sdlora.config.identity_key` of tasks 0..task); one of another identity is refused.
    ``poll_interval_s`` sets how often Ray Train's
    controller polls the workers (Ray propagates the variable).

    ``log_path``: where everything Ray prints goes (appended; None: the console, as Ray does by
    itself). ``progress``: draw the epochs on ``console`` (default stderr). A Ray instance
    started here is shut down before returning. Raises :class:`TaskInputError` when the
    workers cannot set the task up and :class:`TrainingFailed` when training fails for good.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    if task < 0 or (task == 0) != (prev_adapter is None):
        raise ValueError("give prev_adapter for every task after the first, and only then")
    local_batch_size(cfg.train.batch_size, num_workers)  # fail before starting Ray
    task_classes(prepared, task)  # the task exists: fail before starting Ray
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = cfg.backbone.weights
    weights = None if weights in (None, "timm") else str(Path(weights).resolve())
    if poll_interval_s is not None:
        os.environ[POLL_ENV] = str(poll_interval_s)  # read when the controller starts
    storage = Path(storage_path).resolve()  # Ray 2.60 requires an absolute storage_path
    run_name = name or f"task{task}"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg,
            "weights": weights,
            "task": task,
            "identity": identity,
            "prev_adapter": None if prev_adapter is None else str(Path(prev_adapter).resolve()),
            "prepared": str(Path(prepared).resolve()),
            "out_dir": str(out_dir),
            "progress": progress,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    where = nullcontext(console or sys.stderr) if log_path is None else redirect_output(log_path)
    with where as shown:
        started = not ray.is_initialized()
        try:
            ensure_ray(address)
            relay = ProgressRelay(out_dir / PROGRESS, ConsoleProgress(progress, shown))
            with relay if progress else nullcontext():  # no thread polling a file never written
                result = trainer.fit()
        except ray.train.TrainingFailedError as err:
            failed: BaseException | None = err
        else:
            failed = None
        finally:
            if started and ray.is_initialized():
                ray.shutdown()  # no Ray instance left behind for the next stage
    (out_dir / PROGRESS).unlink(missing_ok=True)
    _raise_setup_error(out_dir, task, log_path)
    if failed is not None:
        see = f"Ray's log: {log_path}" if log_path is not None else "Ray's output above"
        raise TrainingFailed(
            f"task {task} failed on the Ray workers after {max_failures} retr"
            f"{'y' if max_failures == 1 else 'ies'} ({_first_line(failed)}). {see}"
        ) from failed
    epochs = json.loads((out_dir / TRAIN_LOG).read_text())["epochs"]
    start_epoch = int(json.loads((out_dir / ATTEMPT).read_text())["start_epoch"])
    (out_dir / ATTEMPT).unlink()
    return DistributedResult(
        adapter=out_dir / ADAPTER,
        metrics=dict(result.metrics or {}),
        epochs=epochs,
        checkpoint=Path(result.checkpoint.path) if result.checkpoint is not None else None,
        run_path=str(result.path),
        start_epoch=start_epoch,
        restored=bool(epochs) and start_epoch >= len(epochs),
    )


def evaluated_record(
    cfg: Config, task: int, adapter: str | Path, prepared: str | Path, epochs: list[dict]
) -> dict[str, Any]:
    """Task ``task``'s record from the adapter its workers wrote: the driver's evaluation of
    every task seen so far on ``cfg.device`` (what ``train@k`` and a tune trial record)."""
    model = build_model(cfg)
    load_adapter(model, adapter)
    accs, counts = evaluate(model, prepared, range(task + 1), cfg, resolve_device(cfg.device))
    num_classes = task_classes(prepared, task)[1]
    return task_record(model, task, num_classes, accs, counts, epochs)


def _first_line(err: BaseException) -> str:
    """The worker's own error, in one line, from Ray's TrainingFailedError."""
    failures = getattr(err, "worker_failures", None) or {}
    inner = next(iter(failures.values()), None) if failures else None
    shown = inner if inner is not None else err
    cause = getattr(shown, "cause", None) or shown
    lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}".strip()


def _raise_setup_error(out_dir: Path, task: int, log_path: str | Path | None) -> None:
    """Raise :class:`TaskInputError` with what the ranks that failed to set up wrote."""
    files = list(out_dir.glob(SETUP_ERROR.format(rank="*")))
    if not files:
        return
    errors = sorted((json.loads(p.read_text()) for p in files), key=lambda e: e["rank"])
    for p in files:
        p.unlink()
    first = errors[0]
    ranks = ", ".join(str(e["rank"]) for e in errors)
    where = f"; the traceback is in {log_path}" if log_path is not None else ""
    raise TaskInputError(
        f"task {task} could not be set up on the Ray workers (rank {ranks}): "
        f"{first['type']}: {first['message']} (not retried: a retry would read the same "
        f"inputs{where})"
    )
