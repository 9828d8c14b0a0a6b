"""The one evaluator: accuracy on prepared test splits, arg-max over every class seen (no task id).

Every entry point (``sdlora run``, the pipeline's ``train@k`` stages, pre-training's validation,
the diagnostics) reads test images through :func:`sdlora.core.train.task_stream`, the same
preprocessing training uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from sdlora.config import Config
from sdlora.core.train import World, autocast, loader_workers, task_stream
from sdlora.data.prepare import PreparedLike, open_prepared
from sdlora.data.stream import ParquetStream, make_loader

if TYPE_CHECKING:
    from sdlora.core.model import SDLoRAViT


def backbone_of(model: nn.Module) -> nn.Module:
    """The timm model whose data config sets the input normalisation."""
    return getattr(model, "backbone", model)


@torch.no_grad()
def outputs(
    fn: nn.Module | object,
    stream: ParquetStream,
    device: torch.device,
    batch: int,
    workers: int = 0,
    precision: str = "fp32",
) -> tuple[Tensor, Tensor]:
    """``(fn(x), labels)`` over a whole stream, concatenated on the CPU in fp32 (in file order
    only without workers: DataLoader workers interleave their batches);
    ``workers``: its DataLoader's (``data.workers``, :func:`sdlora.core.train.loader_workers`);
    ``precision``: ``train.precision`` (:func:`sdlora.core.train.autocast`)."""
    loader = make_loader(stream, batch, workers, device)
    outs, labels = [], []
    for x, y in loader:
        with autocast(precision, device):
            out = fn(x.to(device, non_blocking=True))
        outs.append(out.float().cpu())
        labels.append(torch.as_tensor(y))
    if not outs:
        raise ValueError(f"{stream.files}: no rows to evaluate")
    return torch.cat(outs), torch.cat(labels)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    prepared: PreparedLike,
    tasks: Iterable[int],
    cfg: Config,
    device: torch.device,
) -> tuple[list[float], list[int]]:
    """Percent accuracy and test-row count of each task in ``tasks``, arg-max over all classes.

    ``model`` maps images to logits over every class seen: an :class:`SDLoRAViT` or its merged
    plain timm ViT.
    """
    model.eval().to(device)
    tasks = list(tasks)
    if not tasks:
        return [], []
    prepared = open_prepared(prepared)
    # every task's test split in one stream (one DataLoader); rows are told apart by their
    # labels, since each task owns a range of classes (DataLoader workers interleave batches)
    stream = task_stream(prepared, tasks, "test", cfg, backbone_of(model))
    workers = loader_workers(cfg, World(device=device))
    logits, y = outputs(
        model, stream, device, cfg.train.eval_batch_size, workers, cfg.train.precision
    )
    hits = logits.argmax(1) == y
    entries = prepared.tasks  # each task's classes (the stream checked the task indices)
    accs, counts = [], []
    for t in tasks:
        lo, num_classes = int(entries[t]["label_offset"]), int(entries[t]["num_classes"])
        mine = (y >= lo) & (y < lo + num_classes)
        if not bool(mine.any()):
            raise ValueError(f"{prepared}: task {t} has no test image to evaluate")
        accs.append(100.0 * hits[mine].double().mean().item())
        counts.append(int(mine.sum()))
    return accs, counts


def finish_task(
    model: SDLoRAViT, prepared: PreparedLike, task: int, cfg: Config, device: torch.device
) -> None:
    """``model.end_task()`` in every entry point; when the method's end may change the function
    (SD-LoRA-KD's fold, SPEC §3) the current task's test accuracy just before and just after it
    goes to the method's log (evaluated only when needed: no fold, no second pass)."""
    policy = model.policy
    if not policy.end_may_change_function:
        model.end_task()
        return
    before = evaluate(model, prepared, [task], cfg, device)[0][0]
    model.end_task()
    changed = policy.end_changed_function(model)
    after = evaluate(model, prepared, [task], cfg, device)[0][0] if changed else before
    policy.note_end_accuracy(model, before, after)
