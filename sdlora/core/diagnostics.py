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

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from sdlora.core.evaluate import evaluate, outputs
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


PATH_STEPS = 11  # lam = 0, 0.1, ..., 1 (Finding 3's path)


@torch.no_grad()
def interpolation_path(
    first: torch.nn.Module,
    second: torch.nn.Module,
    prepared: PreparedLike,
    cfg: Config,
    device: torch.device,
    steps: int = PATH_STEPS,
) -> dict[str, list[float]]:
    """Finding 3's low-loss path: accuracy of tasks 0 and 1 along W(lam) = W0 + (1 - lam) dW_1
    + lam dW_2 between two merged models, ``first`` after task 0 and ``second`` after task 1.

    Both are plain timm ViTs (:meth:`SDLoRAViT.merge`) on the same frozen W0, so interpolating
    their weights interpolates the deltas. Every point uses ``second``'s head (the classes of
    both tasks) and predicts over all of them, as after task 1. Returns ``lam`` and the
    accuracy (%) of ``task_0`` and ``task_1`` at each.
    """
    a, b = first.state_dict(), second.state_dict()
    moving = [k for k in b if not k.startswith("head.") and not torch.equal(a[k], b[k])]
    net = copy.deepcopy(second)
    lams = [i / (steps - 1) for i in range(steps)]
    task_0, task_1 = [], []
    for lam in lams:
        net.load_state_dict({k: torch.lerp(a[k], b[k], lam) for k in moving}, strict=False)
        (acc_0, acc_1), _ = evaluate(net, prepared, [0, 1], cfg, device)
        task_0.append(acc_0)
        task_1.append(acc_1)
    return {"lam": lams, "task_0": task_0, "task_1": task_1}
