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

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from sdlora.model import SDLoRAViT
    from sdlora.train import TaskTensors


@torch.no_grad()
def features(model: SDLoRAViT, x: Tensor, device: torch.device, batch: int) -> Tensor:
    """Pooled features (N, d) of images (N, 3, S, S), on the CPU."""
    model.eval()
    return torch.cat(
        [
            model.forward_features(x[i : i + batch].to(device)).cpu()
            for i in range(0, x.shape[0], batch)
        ]
    )


def ncm_accuracy(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor) -> float:
    """Cosine nearest-class-mean accuracy (percent) among the classes present in ``train_y``."""
    classes = train_y.unique()  # sorted
    means = torch.stack([F.normalize(train_f[train_y == c], dim=1).mean(0) for c in classes])
    sims = F.normalize(test_f, dim=1) @ F.normalize(means, dim=1).T  # (N_test, C_task)
    pred = classes[sims.argmax(1)]
    return 100.0 * (pred == test_y).float().mean().item()


@torch.no_grad()
def task_known_accuracy(
    model: SDLoRAViT, seen: Sequence[TaskTensors], device: torch.device, batch: int
) -> tuple[list[float], list[float]]:
    """Per seen task, with its id given: (NCM accuracy on current features, head accuracy).

    One feature pass over each task's test images serves both; the head's logits are restricted
    to the task's own classes.
    """
    ncm, head = [], []
    for t in seen:
        test_f = features(model, t.test_x, device, batch)
        train_f = features(model, t.train_x, device, batch)
        ncm.append(ncm_accuracy(train_f, t.train_y, test_f, t.test_y))
        lo, hi = t.label_offset, t.label_offset + t.num_classes
        logits = model.forward_head(test_f.to(device))[:, lo:hi].cpu()
        head.append(100.0 * (logits.argmax(1) + lo == t.test_y).float().mean().item())
    return ncm, head
