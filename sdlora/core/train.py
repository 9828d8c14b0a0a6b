"""The one training loop: every entry point trains a task through :func:`fit_task`.

``sdlora run`` calls it in its own process (world size 1, no Ray), each pipeline ``train@k``
stage calls it inside Ray Train workers (world size N, DDP), and pre-training calls its epoch,
:func:`run_epoch`, on the full model. Data always comes from prepared Parquet splits through
:func:`task_stream`, with one preprocessing per dataset (SPEC §6).

Data parallelism: the global batch is ``train.batch_size`` whatever the world size. The stream
cuts every epoch into the same global batches for every world size and each rank takes its
part (:class:`sdlora.data.stream.ParquetStream`); the loss of a step is scaled so that DDP's
gradient average is the gradient of the mean loss over the whole global batch. So N workers
compute what one process computes, up to float rounding.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdlora.config import Config, ConfigError, TrainConfig
from sdlora.core.backbone import check_architecture, create_backbone, data_config
from sdlora.core.model import SDLoRAViT, check_blocks
from sdlora.data.prepare import PreparedLike, open_prepared
from sdlora.data.stream import ParquetStream, make_loader, open_task
from sdlora.progress import Progress

LossFn = Callable[[Tensor, Tensor], Tensor]  # (logits, labels) -> summed loss


@dataclass(frozen=True)
class World:
    """Where this process trains: its rank among ``size`` data-parallel workers, its device."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass
class EpochStats:
    """One epoch: mean training loss over every rank's samples, wall time, throughput."""

    train_loss: float
    epoch_seconds: float
    samples_per_second: float


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (``train.threads``), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """``train.precision``: bf16 autocast on ``device`` for ``bf16``, a no-op for ``fp32``."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda[:N]`` or ``auto`` (CUDA when available); a missing GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device = {name!r} but CUDA is not available here; use device: cpu")
    return torch.device(name)


def build_model(cfg: Config, device: torch.device | None = None) -> SDLoRAViT:
    """Backbone from params plus the configured adapter (seeded: random weights are the same
    in every process that builds it)."""
    torch.manual_seed(cfg.seed)
    backbone = create_backbone(cfg.backbone)
    model = SDLoRAViT.from_config(backbone, cfg.backbone.name, cfg.model)
    return model if device is None else model.to(device)


def check_settings(cfg: Config, world_size: int = 1) -> None:
    """What params alone decide, checked before any data or weights are read: the device exists
    here, ``train.batch_size`` splits over ``world_size`` workers, timm builds the backbone from
    ``backbone.name`` and ``backbone.kwargs`` (on the meta device), and ``model.blocks`` fit it.
    Raises a bad-input error naming the key."""
    try:
        resolve_device(cfg.device)
        local_batch_size(cfg.train.batch_size, world_size)
    except ValueError as err:
        raise ConfigError(f"params: {err}") from None
    check_blocks(cfg.model.blocks, len(check_architecture(cfg.backbone).blocks))


def task_seed(seed: int, task: int) -> int:
    """The torch seed set before task ``task`` begins (its new pair's and head rows' init)."""
    return seed * 1000 + task


def begin_task(model: SDLoRAViT, cfg: Config, task: int, num_classes: int) -> None:
    """Seeded ``model.begin_task``: the same new component in every process and entry point."""
    torch.manual_seed(task_seed(cfg.seed, task))
    model.begin_task(num_classes, cfg.rank_for_task(task))


def input_norm(cfg: Config, backbone: nn.Module) -> tuple[tuple[float, ...] | None, ...]:
    """``(mean, std)`` of the input transform: the backbone's, or None for raw [0, 1] pixels."""
    if cfg.data.input_norm == "none":
        return None, None
    dc = data_config(backbone)
    return tuple(dc["mean"]), tuple(dc["std"])


def task_stream(
    prepared: PreparedLike,
    task: int | list[int],
    split: str,
    cfg: Config,
    backbone: nn.Module,
    world: World | None = None,
    *,
    plain: bool = False,
) -> ParquetStream:
    """The prepared ``split`` of ``task`` with the dataset's one preprocessing (SPEC §6).

    Training streams shuffle with ``(seed, task, epoch)``, augment per ``data.augment`` and are
    cut into global batches of ``train.batch_size`` shared over ``world``; test streams keep
    the file order. Training on a list of tasks (joint) shuffles all their rows together, so
    batches mix every task's classes (a reader then holds the whole split's encoded images).
    ``plain``: training images as test images are read (no augmentation, file order), for
    statistics of their features.
    """
    world = world or World()
    mean, std = input_norm(cfg, backbone)
    train = split == "train" and not plain
    first = task if isinstance(task, int) else task[0]
    return open_task(
        prepared, task, split, cfg.data.image_size, mean, std,
        augment=train and cfg.data.augment == "crop_flip", shuffle=train,
        seed=[cfg.seed, first], rank=world.rank, world_size=world.size,
        batch_size=cfg.train.batch_size if train else None,
        mix_groups=None if train and isinstance(task, list) else 1,  # joint: one shuffle
    )  # fmt: skip


def loader_workers(cfg: Config, world: World) -> int:
    """``data.workers`` for this process: ``auto`` is 0 on CPU (decoding would take the cores
    the step uses) and on a GPU up to 8 of the CPUs this process may use, shared by the
    processes of this world."""
    if cfg.data.workers != "auto":
        return int(cfg.data.workers)
    if world.device.type == "cpu":
        return 0
    return max(1, min(8, len(os.sched_getaffinity(0)) // world.size - 1))


def task_loader(
    stream: ParquetStream, cfg: Config, world: World, batch_size: int
) -> torch.utils.data.DataLoader:
    """The DataLoader of ``stream`` with this process's ``data.workers``."""
    return make_loader(stream, batch_size, loader_workers(cfg, world), world.device)


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the public code's protocol) or Adam (the paper's)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def local_batch_size(global_batch: int, world_size: int) -> int:
    """Per-worker batch; the global batch must split evenly over the workers."""
    if global_batch % world_size:
        raise ValueError(
            f"train.batch_size = {global_batch} does not divide over {world_size} workers; "
            f"use a multiple of {world_size}"
        )
    return global_batch // world_size


def _steps(
    stream: ParquetStream, loader: torch.utils.data.DataLoader
) -> Iterator[tuple[Tensor, Tensor, int]]:
    """``(x, y, global batch rows)`` for every global batch of the epoch, on this rank.

    A rank whose part of the last global batch is empty gets an empty batch for it: it
    contributes zero loss and gradient but stays in DDP's all-reduce and the optimizer step,
    so every replica takes every step.
    """
    empty: tuple[Tensor, Tensor] | None = None
    step = 0
    for x, y in loader:
        y = torch.as_tensor(y)
        empty = (x[:0], y[:0])
        yield x, y, stream.batch_rows(step)
        step += 1
    if empty is None:
        raise ValueError("this rank's share of the epoch is empty: fewer training rows than ranks")
    for rest in range(step, stream.num_batches()):
        yield *empty, stream.batch_rows(rest)


def train_step(
    forward: nn.Module,
    x: Tensor,
    y: Tensor,
    rows: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    world: World,
    precision: str = "fp32",
) -> Tensor:
    """One optimisation step on this rank's part of a global batch of ``rows`` rows; returns
    the detached summed loss. The step every entry point (and ``benchmarks/step_cost.py``)
    times: forward (under ``precision``'s :func:`autocast`), scaled loss, backward, optimizer."""
    x, y = x.to(world.device, non_blocking=True), y.to(world.device, non_blocking=True)
    with autocast(precision, world.device):
        logits = forward(x)
    loss_sum = loss_fn(logits.float(), y)
    loss = loss_sum * (world.size / rows)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss_sum.detach()


def run_epoch(
    forward: nn.Module,
    stream: ParquetStream,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    world: World,
    *,
    scheduler: Any | None = None,
    desc: str = "",
    progress: Progress | None = None,
    loader: torch.utils.data.DataLoader | None = None,
    precision: str = "fp32",
) -> EpochStats:
    """One pass over ``stream``'s global batches: forward, scaled loss, backward, step.

    ``forward`` is the model, or its DDP wrapper when ``world.size > 1``. ``loss_fn`` returns
    the summed loss of a batch; it is divided by the global batch's rows (times the world size,
    which DDP's gradient average undoes). ``progress`` (rank 0 only) gets every step.
    ``loader``: ``stream``'s DataLoader at the local batch (:func:`task_loader`; kept across
    epochs for its persistent workers); None reads in this process. ``precision``:
    ``train.precision`` (:func:`autocast`).
    """
    local_batch = local_batch_size(stream.batch_size or 1, world.size)
    if loader is None:
        loader = make_loader(stream, local_batch, 0, world.device)
    forward.train()
    start = time.perf_counter()
    total = torch.zeros(2, dtype=torch.float64)  # loss sum, samples (this rank)
    show = progress is not None and world.rank == 0
    bar = progress.epoch(desc, stream.num_batches()) if show else None
    for steps, (x, y, rows) in enumerate(_steps(stream, loader), 1):
        loss_sum = train_step(forward, x, y, rows, optimizer, loss_fn, world, precision)
        if scheduler is not None:
            scheduler.step()
        total += torch.tensor([loss_sum.item(), y.numel()], dtype=torch.float64)
        if bar is not None:  # this rank's loss and samples, times the world size
            samples = int(total[1]) * world.size
            loss_mean = float(total[0] / max(total[1], 1))
            bar.update(steps, loss_mean, samples, time.perf_counter() - start)
    if world.size > 1:
        summed = total.to(world.device)  # nccl reduces device tensors only
        torch.distributed.all_reduce(summed)
        total = summed.cpu()
    seconds = time.perf_counter() - start
    if bar is not None:  # the epoch's own figures, over every rank
        loss_mean = float(total[0] / max(total[1], 1))
        bar.update(stream.num_batches(), loss_mean, int(total[1]), seconds)
        bar.close()
    return EpochStats(
        train_loss=float(total[0] / max(total[1], 1)),
        epoch_seconds=seconds,
        samples_per_second=float(total[1]) / max(seconds, 1e-9),
    )


def fit_task(
    model: SDLoRAViT,
    prepared: PreparedLike,
    task: int | list[int],
    cfg: Config,
    world: World | None = None,
    *,
    forward: nn.Module | None = None,
    start_epoch: int = 0,
    optimizer_state: dict[str, Any] | None = None,
    on_epoch: Callable[[int, list[dict[str, float]], torch.optim.Optimizer], None] | None = None,
    epoch_log: list[dict[str, float]] | None = None,
    progress: Progress | None = None,
) -> list[dict[str, float]]:
    """Train task ``task`` (already begun) for ``cfg.train.epochs``; return the epoch log.

    ``task`` may list consecutive tasks: joint training reads their data as one task.
    The loss is cross-entropy on the task's own logits with targets shifted to its local class
    index (SPEC §2). Only what the method leaves trainable trains; a method whose head comes
    from features (``head_from_features``) then gets the task's class means
    (:func:`class_means`). ``cfg`` must already carry the task's overrides (``Config.for_task``).
    Resuming: ``start_epoch``, ``optimizer_state`` and ``epoch_log`` from a checkpoint;
    ``on_epoch(epoch, log, optimizer)`` after each epoch (the Ray worker reports its checkpoint
    there).
    """
    world = world or World()
    prepared = open_prepared(prepared)  # the manifest once, for the stream and the classes
    lo, num_classes = prepared.task_classes(task)
    hi = lo + num_classes
    params = [p for p in model.parameters() if p.requires_grad]
    log = list(epoch_log or [])
    if params:  # a method may train nothing by gradient (prototype)
        optimizer = make_optimizer(params, cfg.train)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        stream = task_stream(prepared, task, "train", cfg, model.backbone, world)
        local_batch = local_batch_size(cfg.train.batch_size, world.size)
        loader = task_loader(stream, cfg, world, local_batch)  # one per task: workers persist
        forward = forward or model
        if cfg.train.compile:  # one compilation per task (the model grows between tasks)
            forward = torch.compile(forward)

        def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
            return F.cross_entropy(logits[:, lo:hi], y - lo, reduction="sum")

        for epoch in range(start_epoch, cfg.train.epochs):
            stream.set_epoch(epoch)
            stats = run_epoch(
                forward, stream, optimizer, loss_fn, world, precision=cfg.train.precision,
                desc=f"{_name(task)} epoch {epoch + 1}/{cfg.train.epochs}", progress=progress,
                loader=loader,
            )  # fmt: skip
            log.append(asdict(stats))
            if on_epoch is not None:
                on_epoch(epoch, log, optimizer)
    if model.policy.head_from_features:
        model.policy.fit_head(model, class_means(model, prepared, task, cfg, world))
    model.eval()
    return log


def _name(task: int | list[int]) -> str:
    """``task 3``, or ``tasks 0-4`` for joint training."""
    return f"task {task}" if isinstance(task, int) else f"tasks {task[0]}-{task[-1]}"


@torch.no_grad()
def class_means(
    model: SDLoRAViT,
    prepared: PreparedLike,
    task: int | list[int],
    cfg: Config,
    world: World | None = None,
) -> Tensor:
    """(C_task, d) mean pooled feature of each of the task's classes over its training images.

    Each rank sums the features of its share of the images (read as test images are); the sums
    and counts are all-reduced, so every rank gets the means of the whole split.
    """
    world = world or World()
    prepared = open_prepared(prepared)
    lo, num_classes = prepared.task_classes(task)
    stream = task_stream(prepared, task, "train", cfg, model.backbone, world, plain=True)
    loader = task_loader(stream, cfg, world, cfg.train.eval_batch_size)
    model.eval()
    f64 = {"dtype": torch.float64, "device": world.device}
    sums = torch.zeros(num_classes, model.head.in_features, **f64)  # (C_task, d)
    counts = torch.zeros(num_classes, **f64)
    for x, y in loader:
        with autocast(cfg.train.precision, world.device):
            f = model.forward_features(x.to(world.device, non_blocking=True))
        f = f.double()
        local = torch.as_tensor(y).to(world.device) - lo
        sums.index_add_(0, local, f)
        counts.index_add_(0, local, torch.ones_like(local, dtype=torch.float64))
    if world.size > 1:
        torch.distributed.all_reduce(sums)
        torch.distributed.all_reduce(counts)
    if (counts == 0).any():
        missing = (torch.flatnonzero(counts == 0) + lo).tolist()
        raise ValueError(f"{prepared}: task {task} has no training image of classes {missing}")
    return (sums / counts[:, None]).to(model.head.weight.dtype)
