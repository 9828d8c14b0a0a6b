"""The one-process runner: train one task, evaluate on every class seen, run a whole sequence."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from sdlora import metrics
from sdlora.backbone import create_backbone
from sdlora.config import Config, TrainConfig
from sdlora.data.benchmarks import load_task_splits
from sdlora.data.tasks import TaskSplit
from sdlora.diagnostics import task_known_accuracy
from sdlora.model import SDLoRAViT


@dataclass
class TaskTensors:
    """One task's images as model-ready tensors (B, 3, S, S) with global labels."""

    task: int
    label_offset: int
    num_classes: int
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


@dataclass
class TaskStats:
    """What training one task cost and reached."""

    task: int
    train_loss: float
    epoch_seconds: list[float]
    samples_per_second: float


@dataclass
class SequenceResult:
    """Everything a sequence run measured. ``matrix[i][j]``: percent, NaN above the diagonal.

    Matrices are T x T from the start; only the first ``completed`` rows are filled.
    """

    matrix: np.ndarray
    counts: list[int]
    summary: dict
    completed: int = 0
    tasks: list[TaskStats] = field(default_factory=list)
    storage: list[dict[str, int]] = field(default_factory=list)
    ncm_matrix: np.ndarray | None = None
    head_known_matrix: np.ndarray | None = None


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda[:N]`` or ``auto`` (CUDA when available); a missing GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device = {name!r} but CUDA is not available here; use device: cpu")
    return torch.device(name)


def images_to_tensor(
    images: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    """uint8 (N, H, W) grey images -> float (N, 3, size, size), resized and normalised."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    x = x.expand(-1, 3, -1, -1)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


def tensor_norm(cfg: Config, backbone: torch.nn.Module) -> tuple[Sequence[float], ...]:
    """``(mean, std)`` for :func:`images_to_tensor`: ``input_norm``'s, identity for ``none``."""
    from sdlora.evaluate import stream_norm

    mean, std = stream_norm(cfg, backbone)
    return (mean, std) if mean is not None else ((0.0,) * 3, (1.0,) * 3)


def to_tensors(
    splits: Sequence[TaskSplit], size: int, mean: Sequence[float], std: Sequence[float]
) -> list[TaskTensors]:
    """Convert every task split once, so epochs reuse the tensors."""
    out = []
    for s in splits:
        out.append(
            TaskTensors(
                task=s.task,
                label_offset=s.label_offset,
                num_classes=len(s.classes),
                train_x=images_to_tensor(s.train_images, size, mean, std),
                train_y=torch.from_numpy(s.train_labels).long(),
                test_x=images_to_tensor(s.test_images, size, mean, std),
                test_y=torch.from_numpy(s.test_labels).long(),
            )
        )
    return out


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the public code's protocol) or Adam (the paper's)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_task(
    model: SDLoRAViT,
    data: TaskTensors,
    cfg: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
    progress: bool = True,
) -> TaskStats:
    """Train the current task: cross-entropy on its own logits, targets shifted (SPEC §2)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg)
    n = data.train_x.shape[0]
    lo, hi = data.label_offset, data.label_offset + data.num_classes
    model.train()
    epoch_seconds, last_loss = [], float("nan")
    bar = tqdm(
        range(cfg.epochs), desc=f"task {data.task}", unit="epoch", disable=not progress, leave=False
    )
    for _ in bar:
        start, total, seen = time.perf_counter(), 0.0, 0
        perm = torch.randperm(n, generator=generator)
        for i in tqdm(
            range(0, n, cfg.batch_size), desc="batches", leave=False, disable=not progress
        ):
            idx = perm[i : i + cfg.batch_size]
            x, y = data.train_x[idx].to(device), data.train_y[idx].to(device)
            logits = model(x)[:, lo:hi]
            loss = F.cross_entropy(logits, y - lo)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        epoch_seconds.append(time.perf_counter() - start)
        last_loss = total / seen
        bar.set_postfix(loss=f"{last_loss:.4f}")
    model.eval()
    return TaskStats(
        task=data.task,
        train_loss=last_loss,
        epoch_seconds=epoch_seconds,
        samples_per_second=n * cfg.epochs / max(sum(epoch_seconds), 1e-9),
    )


@torch.no_grad()
def predict(model: torch.nn.Module, x: Tensor, device: torch.device, batch: int) -> Tensor:
    """Arg-max over every class the model has (no task id)."""
    model.eval()
    return torch.cat(
        [model(x[i : i + batch].to(device)).argmax(1).cpu() for i in range(0, x.shape[0], batch)]
    )


def evaluate(
    model: torch.nn.Module, seen: Sequence[TaskTensors], device: torch.device, batch: int
) -> list[float]:
    """Accuracy (percent) on each seen task's test set, choosing among all classes seen."""
    return [
        100.0 * (predict(model, t.test_x, device, batch) == t.test_y).float().mean().item()
        for t in seen
    ]


def build_model(cfg: Config, device: torch.device) -> SDLoRAViT:
    """Backbone from params plus the configured adapter, on ``device``."""
    backbone = create_backbone(cfg.backbone)
    return SDLoRAViT.from_config(backbone, cfg.backbone.name, cfg.model).to(device)


def run_sequence(
    cfg: Config,
    tasks: Sequence[TaskTensors] | None = None,
    model: SDLoRAViT | None = None,
    ncm: bool = False,
    on_task_end: Callable[[int, SDLoRAViT, SequenceResult], None] | None = None,
) -> SequenceResult:
    """Train every task in order; after each, evaluate all tasks seen so far.

    ``ncm=True`` also records the drift diagnostics of :mod:`sdlora.diagnostics`: a nearest-
    class-mean classifier on the current features and the head, each with the task id given.
    """
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = model if model is not None else build_model(cfg, device)
    if tasks is None:
        mean, std = tensor_norm(cfg, model.backbone)
        tasks = to_tensors(load_task_splits(cfg.data, cfg.seed), cfg.data.image_size, mean, std)
    generator = torch.Generator().manual_seed(cfg.seed)
    T = len(tasks)
    matrix = np.full((T, T), np.nan)
    ncm_matrix = np.full((T, T), np.nan) if ncm else None
    head_known = np.full((T, T), np.nan) if ncm else None
    counts = [int(t.test_y.numel()) for t in tasks]
    result = SequenceResult(
        matrix=matrix,
        counts=counts,
        summary={},
        ncm_matrix=ncm_matrix,
        head_known_matrix=head_known,
    )
    for t, data in enumerate(tqdm(tasks, desc="tasks", unit="task", disable=not cfg.progress)):
        model.begin_task(data.num_classes, cfg.rank_for_task(t))
        train_cfg = cfg.for_task(t).train  # per-task overrides from the tasks section, if any
        result.tasks.append(train_task(model, data, train_cfg, device, generator, cfg.progress))
        model.end_task()
        matrix[t, : t + 1] = evaluate(model, tasks[: t + 1], device, cfg.train.eval_batch_size)
        if ncm_matrix is not None and head_known is not None:
            ncm_row, head_row = task_known_accuracy(
                model, tasks[: t + 1], device, cfg.train.eval_batch_size
            )
            ncm_matrix[t, : t + 1] = ncm_row
            head_known[t, : t + 1] = head_row
        result.storage.append(model.storage())
        result.completed = t + 1
        result.summary = metrics.summarize(matrix[: t + 1, : t + 1], counts[: t + 1])
        if on_task_end is not None:
            on_task_end(t, model, result)
    return result
