"""Accuracy of a model on prepared test splits, streamed from Parquet (no task id given)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from sdlora.backbone import data_config
from sdlora.config import Config
from sdlora.data.stream import open_task
from sdlora.model import SDLoRAViT


def stream_norm(cfg: Config, backbone: nn.Module) -> tuple[tuple[float, ...] | None, ...]:
    """``(mean, std)`` for the streaming transform: the backbone's, or None for raw [0, 1]."""
    if cfg.data.input_norm == "none":
        return None, None
    dc = data_config(backbone)
    return tuple(dc["mean"]), tuple(dc["std"])


@torch.no_grad()
def evaluate_prepared(
    model: SDLoRAViT,
    prepared: str | Path,
    tasks: Sequence[int],
    cfg: Config,
    device: torch.device,
) -> tuple[list[float], list[int]]:
    """Percent accuracy and test-row count of each task in ``tasks``, arg-max over all classes."""
    mean, std = stream_norm(cfg, model.backbone)
    model.eval().to(device)
    accs, counts = [], []
    size = cfg.data.image_size
    for t in tasks:
        stream = open_task(prepared, t, "test", size, mean, std, rank=0, world_size=1)
        loader = torch.utils.data.DataLoader(stream, batch_size=cfg.train.eval_batch_size)
        right = seen = 0
        for x, y in loader:
            pred = model(x.to(device)).argmax(1).cpu()
            right += int((pred == torch.as_tensor(y)).sum())
            seen += len(y)
        if seen == 0:
            raise ValueError(f"{prepared}: task {t} has no test rows")
        accs.append(100.0 * right / seen)
        counts.append(seen)
    return accs, counts
