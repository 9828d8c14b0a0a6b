"""Train one task of the sequence on Ray Train (data parallel, DDP over gloo or nccl).

:func:`train_task_distributed` starts (or attaches to) Ray and runs :func:`train_loop_per_worker`
on ``num_workers`` workers through a ``TorchTrainer``. Each worker runs the library's one loop,
:func:`sdlora.train.fit_task`, at its rank and world size:

- every worker builds the same model (seeded), loads the previous task's adapter and begins the
  task (:func:`sdlora.train.begin_task`, seeded: the same new pair on every rank);
- if Ray hands it a checkpoint (``ray.train.get_checkpoint()``: a worker restart after a failure,
  or a rerun with the same ``storage_path`` and ``name``), the adapter state (current pair
  included), the optimizer state and the epoch log are restored and training continues at the
  next epoch: resume is the normal path;
- rank 0 reports metrics and a checkpoint (adapter + optimizer + epoch log) every epoch and, at
  the end, calls ``end_task`` and writes the task's adapter to ``out_dir/adapter.safetensors``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdlora.atomic import atomic_path
from sdlora.checkpoint import load_adapter, save_adapter
from sdlora.config import Config
from sdlora.model import SDLoRAViT
from sdlora.ray_session import ensure_ray
from sdlora.train import World, begin_task, build_model, fit_task, local_batch_size, task_classes

ADAPTER = "adapter.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "state.json"
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_LOG = "train.json"  # written beside the adapter: every epoch's loss, seconds, samples/s


@dataclass
class DistributedResult:
    """What :func:`train_task_distributed` produced."""

    adapter: Path  # out_dir / adapter.safetensors: the task's state after end_task
    metrics: dict[str, Any]  # the last report that carried a checkpoint
    epochs: list[dict[str, float]]  # every epoch's train_loss, epoch_seconds, samples_per_second
    checkpoint: Path | None  # the last reported checkpoint's folder
    run_path: str  # Ray's run folder (storage_path / name)


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


# Settings a checkpoint need not share with the run resuming it: where and how wide it runs,
# where it is tracked, and the other tasks' entries.
_NOT_FINGERPRINTED = {"progress", "ray", "mlflow", "tasks", "final_task"}


def _fingerprint(cfg: Config, task: int) -> dict[str, Any]:
    """What a checkpoint must share with the run resuming it (``cfg``: task overrides applied).

    Paths stay as params give them (relative to the project), so a moved project resumes.
    """
    raw = cfg.model_dump(mode="json", exclude=_NOT_FINGERPRINTED)
    return {"task": task, "rank": cfg.rank_for_task(task), "cfg": raw}


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
    """The checkpoint's epoch and epoch log, after checking it belongs to this task and config."""
    state = json.loads((folder / STATE).read_text())
    if {k: state.get(k) for k in fingerprint} != fingerprint:
        raise ValueError(
            f"checkpoint {folder} is from task {state.get('task')} or another configuration, "
            "not this run's; use another run name or storage_path to start afresh"
        )
    return int(state["epoch"]), list(state.get("epochs", []))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: train task ``config["task"]`` (see the module docstring).

    ``config``: ``cfg`` (Config, paths as in params), ``weights`` (the backbone file's absolute
    path or None), ``task``, ``prev_adapter`` (str or None), ``prepared`` (folder), ``out_dir``.
    """
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    task: int = config["task"]
    cfg: Config = config["cfg"].for_task(task)  # the task's epochs/lr overrides, if any
    ctx = ray.train.get_context()
    world = World(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    torch.set_num_threads(cfg.train.threads)  # as sdlora run does: the same float results

    build_cfg = cfg
    if config.get("weights"):  # workers run in their own folders: the file's absolute path
        backbone = cfg.backbone.model_copy(update={"weights": config["weights"]})
        build_cfg = cfg.model_copy(update={"backbone": backbone})
    model = load_task_model(build_cfg, task, config["prev_adapter"])
    begin_task(model, cfg, task, task_classes(config["prepared"], task)[1])

    fingerprint = _fingerprint(cfg, task)
    start_epoch, opt_state, epoch_log = 0, None, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            last, epoch_log = _read_state(Path(folder), fingerprint)
            start_epoch = last + 1
            load_adapter(model, Path(folder) / ADAPTER)  # the current pair included
            opt_state = torch.load(Path(folder) / OPTIMIZER, map_location="cpu")
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

    epoch_log = fit_task(
        model, config["prepared"], task, cfg, world, forward=ddp, start_epoch=start_epoch,
        optimizer_state=opt_state, on_epoch=report, epoch_log=epoch_log,
    )  # fmt: skip

    if world.rank == 0:
        out_dir = Path(config["out_dir"])
        model.cpu().end_task()
        save_adapter(model, out_dir / ADAPTER, extra={"task": task})  # atomic
        with atomic_path(out_dir / TRAIN_LOG) as tmp_log:
            tmp_log.write_text(json.dumps({"task": task, "epochs": epoch_log}, indent=1) + "\n")


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
    address: str | None = None,
    poll_interval_s: float | None = None,
) -> DistributedResult:
    """Train task ``task`` on ``num_workers`` Ray Train workers; write ``out_dir/adapter...``.

    ``prev_adapter``: the adapter file after task ``task - 1`` (None for task 0). ``prepared``:
    the prepare stage's folder. Ray starts in-process unless ``address`` or ``RAY_ADDRESS``
    names a cluster (:func:`sdlora.ray_session.ensure_ray`: Ray's own rule says which wins). A
    rerun with the same ``storage_path`` and ``name`` (default ``task{task}``) resumes from that
    run's last checkpoint (Ray Train V2). ``poll_interval_s`` sets how often Ray Train's
    controller polls the workers (Ray propagates the variable).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    if task < 0 or (task == 0) != (prev_adapter is None):
        raise ValueError("give prev_adapter for every task after the first, and only then")
    local_batch_size(cfg.train.batch_size, num_workers)  # fail before starting Ray
    task_classes(prepared, task)  # the task exists: fail before starting Ray
    weights = cfg.backbone.weights
    weights = None if weights in (None, "timm") else str(Path(weights).resolve())
    if poll_interval_s is not None:
        os.environ[POLL_ENV] = str(poll_interval_s)  # read when the controller starts
    ensure_ray(address)
    storage = Path(storage_path).resolve()  # Ray 2.60 requires an absolute storage_path
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg,
            "weights": weights,
            "task": task,
            "prev_adapter": None if prev_adapter is None else str(Path(prev_adapter).resolve()),
            "prepared": str(Path(prepared).resolve()),
            "out_dir": str(Path(out_dir).resolve()),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name or f"task{task}",
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    log = json.loads((Path(out_dir) / TRAIN_LOG).read_text())
    return DistributedResult(
        adapter=Path(out_dir).resolve() / ADAPTER,
        metrics=dict(result.metrics or {}),
        epochs=log["epochs"],
        checkpoint=Path(result.checkpoint.path) if result.checkpoint is not None else None,
        run_path=str(result.path),
    )
