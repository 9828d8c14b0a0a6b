"""Train one task of the sequence on Ray Train (data parallel, DDP over gloo or nccl).

:func:`train_task_distributed` starts (or attaches to) Ray and runs :func:`train_loop_per_worker`
on ``num_workers`` workers through a ``TorchTrainer``. The loop is the one-process
:func:`sdlora.train.train_task` made data parallel:

- every worker builds the same model (seeded), loads the previous task's adapter, ``begin_task``;
- if Ray hands it a checkpoint (``ray.train.get_checkpoint()``: a worker restart after a failure,
  or a rerun with the same ``storage_path`` and ``name``), the adapter state (current pair
  included), the optimizer state and the epoch are restored and training continues at the next
  epoch: resume is the normal path;
- the global batch is ``train.batch_size`` whatever the worker count; each step, every rank
  computes its part of the global batch and the loss is scaled so that DDP's gradient average
  equals the gradient of the mean loss over the whole global batch (exact, even for a short
  last batch);
- rank 0 reports metrics and a checkpoint (adapter + optimizer + epoch) every epoch and, at the
  end, calls ``end_task`` and writes the task's adapter to ``out_dir/adapter.safetensors``.

Data: in-memory :class:`~sdlora.train.TaskTensors` (every rank permutes the indices with the same
``(seed, task, epoch)`` generator and takes its contiguous part of each global batch, so the
global batches are those of one process) or a prepared Parquet folder (each rank streams its
own shard with :class:`~sdlora.data.stream.ParquetStream`).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sdlora.atomic import atomic_path
from sdlora.checkpoint import load_adapter, save_adapter
from sdlora.config import Config
from sdlora.data.stream import shard_bounds
from sdlora.model import SDLoRAViT
from sdlora.train import TaskTensors, build_model, make_optimizer

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


# ---- pure helpers (tested without Ray) -----------------------------------------------------------


def local_batch_size(global_batch: int, world_size: int) -> int:
    """Per-worker batch; the global batch must split evenly over the workers."""
    if global_batch % world_size:
        raise ValueError(
            f"train.batch_size = {global_batch} does not divide over {world_size} workers; "
            f"use a multiple of {world_size}"
        )
    return global_batch // world_size


def epoch_permutation(n: int, seed: int, task: int, epoch: int) -> Tensor:
    """The epoch's sample order, identical on every rank."""
    seed_ = int(np.random.SeedSequence([seed, task, epoch]).generate_state(1)[0])
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed_))


def tensor_batches(
    data: TaskTensors, global_batch: int, rank: int, world: int, perm: Tensor
) -> Iterator[tuple[Tensor, Tensor, int]]:
    """``(x, y, global_count)`` of this rank's part of every global batch of the epoch.

    Global batch ``i`` is ``perm[i * B : (i + 1) * B]``; rank ``r`` takes its contiguous
    ``shard_bounds`` slice of it. A part may be empty (a last batch shorter than the worker
    count): it is still yielded, so every rank takes every optimizer step (see
    :func:`stream_batches`).
    """
    n = perm.numel()
    for i in range(0, n, global_batch):
        idx = perm[i : i + global_batch]
        lo, hi = shard_bounds(idx.numel(), rank, world)
        yield data.train_x[idx[lo:hi]], data.train_y[idx[lo:hi]], idx.numel()


def stream_batches(
    loader: Any, shard_sizes: list[int], local_batch: int
) -> Iterator[tuple[Tensor, Tensor, int]]:
    """``(x, y, global_count)`` from a rank's DataLoader; the global count sums every rank's.

    Ranks' shards differ by up to one row, so a rank may run out one step early: it then
    yields empty batches up to the longest rank's step count. An empty batch contributes zero
    loss and zero gradient but keeps the rank in DDP's all-reduce *and* in the optimizer step,
    so the replicas stay identical (DDP's ``join`` would shadow the all-reduce only, leaving
    the early rank one update behind).
    """
    steps = max(-(-s // local_batch) for s in shard_sizes)
    empty: tuple[Tensor, Tensor] | None = None
    done = 0
    for x, y in loader:
        empty = (x[:0], torch.as_tensor(y)[:0])
        yield x, torch.as_tensor(y), _global_count(shard_sizes, done, local_batch)
        done += 1
    if empty is None:
        raise ValueError("this rank's shard is empty: fewer training rows than workers")
    for step in range(done, steps):
        yield *empty, _global_count(shard_sizes, step, local_batch)


def _global_count(shard_sizes: list[int], step: int, local_batch: int) -> int:
    start = step * local_batch
    return sum(max(0, min(local_batch, s - start)) for s in shard_sizes)


# ---- the worker loop -----------------------------------------------------------------------------


def _build(cfg: Config, task: int, prev_adapter: str | None) -> SDLoRAViT:
    torch.manual_seed(cfg.seed)  # identical backbone (random weights too) on every rank
    model = build_model(cfg, torch.device("cpu"))  # moved to the worker's device later
    if prev_adapter is not None:
        load_adapter(model, prev_adapter)
    if model.num_tasks != task:
        raise ValueError(
            f"task {task} needs the adapter of tasks 0..{task - 1}; "
            f"the previous adapter holds {model.num_tasks} tasks"
        )
    return model


def _task_meta(data: TaskTensors | str, task: int) -> tuple[int, int]:
    """``(label_offset, num_classes)`` of the task."""
    if isinstance(data, TaskTensors):
        return data.label_offset, data.num_classes
    from sdlora.data.prepare import read_manifest

    entry = read_manifest(data)["tasks"][task]
    return int(entry["label_offset"]), int(entry["num_classes"])


# Settings a checkpoint need not share with the run resuming it: where and how wide it runs, the
# other tasks' entries, and the epoch count (which may grow).
_NOT_FINGERPRINTED = {
    "progress": True,
    "ray": True,
    "mlflow": True,
    "tasks": True,
    "final_task": True,
    "train": {"epochs"},
}


def _fingerprint(cfg: Config, task: int) -> dict[str, Any]:
    """What a checkpoint must share with the run resuming it (``cfg``: task overrides applied)."""
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

    ``config``: ``cfg`` (Config), ``task``, ``prev_adapter`` (str or None), ``data``
    (TaskTensors or a prepared folder), ``out_dir`` (str), ``resume_from`` (a checkpoint
    folder used when Ray has none, or None).
    """
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    task: int = config["task"]
    cfg: Config = config["cfg"].for_task(task)  # the task's epochs/lr overrides, if any
    data: TaskTensors | str = config["data"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    local_batch = local_batch_size(cfg.train.batch_size, world)
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(config.get("threads", 1))))

    model = _build(cfg, task, config["prev_adapter"])
    lo, num_classes = _task_meta(data, task)
    torch.manual_seed(cfg.seed * 1000 + task)  # the new pair's init, same on every rank
    model.begin_task(num_classes, cfg.rank_for_task(task))

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and config.get("resume_from"):
        checkpoint = Checkpoint.from_directory(config["resume_from"])
    fingerprint = _fingerprint(cfg, task)
    start_epoch, opt_state, epoch_log = 0, None, []
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            last, epoch_log = _read_state(Path(folder), fingerprint)
            start_epoch = last + 1
            load_adapter(model, Path(folder) / ADAPTER)  # the current pair included
            opt_state = torch.load(Path(folder) / OPTIMIZER, map_location="cpu")
    model.to(device)
    # Only the current pair, the magnitudes and the new head rows require grad; DDP registers
    # hooks for exactly those and all of them are used in every forward, so no unused-parameter
    # search. The frozen backbone is identical on every rank (seeded) and DDP broadcasts rank 0's.
    ddp = ray.train.torch.prepare_model(model, move_to_device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg.train)
    if opt_state is not None:
        opt.load_state_dict(opt_state)

    stream = None
    if not isinstance(data, TaskTensors):
        from sdlora.data.stream import open_task
        from sdlora.evaluate import stream_norm

        mean, std = stream_norm(cfg, model.backbone)
        stream = open_task(
            data, task, "train", cfg.data.image_size, mean, std,
            augment=cfg.data.augment == "crop_flip", seed=cfg.seed, rank=rank, world_size=world,
        )  # fmt: skip
        shard_sizes = [
            b - a for a, b in (shard_bounds(stream.num_rows, r, world) for r in range(world))
        ]

    hi = lo + num_classes
    for epoch in range(start_epoch, cfg.train.epochs):
        ddp.train()
        start = time.perf_counter()
        total = torch.zeros(2, dtype=torch.float64)  # loss sum, samples (this rank)
        if stream is not None:
            stream.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(stream, batch_size=local_batch)
            batches = stream_batches(loader, shard_sizes, local_batch)
        else:
            perm = epoch_permutation(data.train_x.shape[0], cfg.seed, task, epoch)
            batches = tensor_batches(data, cfg.train.batch_size, rank, world, perm)
        for x, y, global_count in batches:
            x, y = x.to(device), y.to(device)
            loss_sum = F.cross_entropy(ddp(x)[:, lo:hi], y - lo, reduction="sum")
            # DDP averages gradients over ranks: this scaling makes the average the gradient
            # of the mean loss over the whole global batch (SPEC §2 loss, as train_task)
            loss = loss_sum * (world / global_count)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += torch.tensor([loss_sum.item(), y.numel()], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            summed = total.to(device)  # nccl reduces CUDA tensors only
            torch.distributed.all_reduce(summed)
            total = summed.cpu()
        seconds = time.perf_counter() - start
        stats = {
            "train_loss": float(total[0] / max(total[1], 1)),
            "epoch_seconds": seconds,
            "samples_per_second": float(total[1]) / max(seconds, 1e-9),
        }
        epoch_log.append(stats)
        metrics = {
            "task": task,
            "epoch": epoch,
            **stats,
            "world_size": world,
            "start_epoch": start_epoch,  # the epoch this attempt started at (resume: > 0)
        }
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                _write_checkpoint(Path(tmp), model, opt, epoch_log, fingerprint)
                ckpt = Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)

    if rank == 0:
        out_dir = Path(config["out_dir"])
        model.cpu().end_task()
        save_adapter(model, out_dir / ADAPTER, extra={"task": task})  # atomic
        with atomic_path(out_dir / TRAIN_LOG) as tmp_log:
            tmp_log.write_text(json.dumps({"task": task, "epochs": epoch_log}, indent=1) + "\n")


# ---- the driver ----------------------------------------------------------------------------------


def _ensure_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:  # attach to a running cluster
        ray.init(address=address, include_dashboard=False)
    else:  # the embedded default: Ray in this process
        ray.init(include_dashboard=False)


def train_task_distributed(
    cfg: Config,
    task: int,
    prev_adapter: str | Path | None,
    data: TaskTensors | str | Path,
    out_dir: str | Path,
    *,
    num_workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    max_failures: int = 0,
    storage_path: str | Path = "runs/ray",
    name: str | None = None,
    address: str | None = None,
    resume_from: str | Path | None = None,
    threads_per_worker: int = 1,
    poll_interval_s: float | None = None,
) -> DistributedResult:
    """Train task ``task`` on ``num_workers`` Ray Train workers; write ``out_dir/adapter...``.

    ``prev_adapter``: the adapter file after task ``task - 1`` (None for task 0). ``data``: the
    task's :class:`TaskTensors` or a prepared Parquet folder. Ray starts in-process unless
    ``address`` (or ``RAY_ADDRESS``) names a cluster. A rerun with the same ``storage_path`` and
    ``name`` (default ``task{task}``) resumes from that run's last checkpoint (Ray Train V2);
    ``resume_from`` names a checkpoint folder to start from otherwise. ``poll_interval_s`` sets
    how often Ray Train's controller polls the workers (Ray propagates the variable to them).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    if task < 0 or (task == 0) != (prev_adapter is None):
        raise ValueError("give prev_adapter for every task after the first, and only then")
    local_batch_size(cfg.train.batch_size, num_workers)  # fail before starting Ray
    if isinstance(data, TaskTensors) and data.task != task:
        raise ValueError(f"data is task {data.task}, not task {task}")
    weights = cfg.backbone.weights
    if weights not in (None, "timm") and not Path(weights).is_absolute():
        # workers run in their own folders: give them the file's absolute path (on a cluster,
        # a path every node sees, e.g. a shared file system)
        backbone = cfg.backbone.model_copy(update={"weights": str(Path(weights).resolve())})
        cfg = cfg.model_copy(update={"backbone": backbone})
    if poll_interval_s is not None:
        os.environ[POLL_ENV] = str(poll_interval_s)  # read when the controller starts
    _ensure_ray(address)
    storage = Path(storage_path).resolve()  # Ray 2.60 requires an absolute storage_path
    name = name or f"task{task}"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg,
            "task": task,
            "prev_adapter": None if prev_adapter is None else str(Path(prev_adapter).resolve()),
            "data": data if isinstance(data, TaskTensors) else str(Path(data).resolve()),
            "out_dir": str(Path(out_dir).resolve()),
            "resume_from": None if resume_from is None else str(Path(resume_from).resolve()),
            "threads": threads_per_worker,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name,
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
