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


def ncm_task_accuracy(
    model: SDLoRAViT, seen: Sequence[TaskTensors], device: torch.device, batch: int
) -> list[float]:
    """Task-known NCM accuracy on each seen task with the model's current features."""
    return [
        ncm_accuracy(
            features(model, t.train_x, device, batch),
            t.train_y,
            features(model, t.test_x, device, batch),
            t.test_y,
        )
        for t in seen
    ]


@torch.no_grad()
def head_task_known_accuracy(
    model: SDLoRAViT, seen: Sequence[TaskTensors], device: torch.device, batch: int
) -> list[float]:
    """Accuracy (percent) of the head with each task's id given: arg-max over its own classes."""
    model.eval()
    out = []
    for t in seen:
        lo, hi = t.label_offset, t.label_offset + t.num_classes
        pred = torch.cat(
            [
                model(t.test_x[i : i + batch].to(device))[:, lo:hi].argmax(1).cpu()
                for i in range(0, t.test_x.shape[0], batch)
            ]
        )
        out.append(100.0 * (pred + lo == t.test_y).float().mean().item())
    return out
