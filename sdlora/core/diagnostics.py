"""Diagnostics that separate backbone drift from classifier bias.

After each task, a nearest-class-mean (NCM) classifier is built on the *current* features of each
earlier task's training images and scored on that task's test images *with its task known*
(choosing only among that task's classes). The head plays no part, so a drop in this score can
only come from the features drifting; a drop in the ordinary accuracy without one here comes from
the head. The head's own task-known accuracy (its logits restricted to the task's classes) splits
that further: old rows that no longer fit the drifted features lower it, while a bias towards the
newest classes lowers only the ordinary, task-agnostic accuracy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from sdlora.core.evaluate import outputs
from sdlora.core.train import World, loader_workers, task_stream
from sdlora.data.prepare import PreparedLike, open_prepared

if TYPE_CHECKING:
    from sdlora.config import Config
    from sdlora.core.model import SDLoRAViT


def ncm_accuracy(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor) -> float:
    """Cosine nearest-class-mean accuracy (percent) among the classes present in ``train_y``."""
    classes = train_y.unique()  # sorted
    means = torch.stack([F.normalize(train_f[train_y == c], dim=1).mean(0) for c in classes])
    sims = F.normalize(test_f, dim=1) @ F.normalize(means, dim=1).T  # (N_test, C_task)
    pred = classes[sims.argmax(1)]
    return 100.0 * (pred == test_y).float().mean().item()


@torch.no_grad()
def task_known_accuracy(
    model: SDLoRAViT,
    prepared: PreparedLike,
    tasks: Iterable[int],
    cfg: Config,
    device: torch.device,
) -> tuple[list[float], list[float]]:
    """Per task, with its id given: (NCM accuracy on current features, head accuracy).

    One feature pass over each task's test images serves both; the head's logits are restricted
    to the task's own classes. Class means come from the task's training images read as test
    images are (no augmentation).
    """
    model.eval().to(device)
    prepared = open_prepared(prepared)
    batch, workers = cfg.train.eval_batch_size, loader_workers(cfg, World(device=device))
    precision = cfg.train.precision
    ncm, head = [], []
    for t in tasks:
        test = task_stream(prepared, t, "test", cfg, model.backbone)
        train = task_stream(prepared, t, "train", cfg, model.backbone, plain=True)
        test_f, test_y = outputs(model.forward_features, test, device, batch, workers, precision)
        train_f, train_y = outputs(model.forward_features, train, device, batch, workers, precision)
        ncm.append(ncm_accuracy(train_f, train_y, test_f, test_y))
        lo, n = prepared.task_classes(t)
        logits = model.forward_head(test_f.to(device))[:, lo : lo + n].cpu()
        head.append(100.0 * (logits.argmax(1) + lo == test_y).float().mean().item())
    return ncm, head
