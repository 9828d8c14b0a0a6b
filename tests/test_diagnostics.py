"""Drift diagnostics: NCM on hand-made features; the task-known head can only beat the open one."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from sdlora.diagnostics import ncm_accuracy, task_known_accuracy
from sdlora.model import SDLoRAViT
from sdlora.train import TaskTensors, evaluate


def test_ncm_accuracy_on_hand_made_features() -> None:
    train_f = torch.tensor([[1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.1, 0.8]])
    train_y = torch.tensor([4, 4, 7, 7])
    test_f = torch.tensor([[2.0, 0.3], [0.2, 3.0], [0.1, 1.0]])  # cosine: scale does not matter
    assert ncm_accuracy(train_f, train_y, test_f, torch.tensor([4, 7, 7])) == 100.0
    assert ncm_accuracy(train_f, train_y, test_f, torch.tensor([7, 7, 4])) == pytest.approx(100 / 3)


def test_task_known_scores_bound_the_open_accuracy(
    tiny_backbone: Callable[..., nn.Module],
) -> None:
    g = torch.Generator().manual_seed(0)
    model = SDLoRAViT(tiny_backbone(), "tiny")
    tasks = []
    for t in range(2):
        model.begin_task(3, 2)
        model.end_task()
        y = torch.arange(3 * t, 3 * t + 3).repeat(4)
        x = torch.randn(12, 3, 16, 16, generator=g)
        tasks.append(TaskTensors(t, 3 * t, 3, x, y, x.clone(), y.clone()))
    ncm, head = task_known_accuracy(model, tasks, torch.device("cpu"), batch=5)
    open_acc = evaluate(model, tasks, torch.device("cpu"), batch=5)
    assert len(ncm) == len(head) == 2
    # Restricting the arg-max to the task's own classes can only turn errors into hits.
    assert all(h >= o for h, o in zip(head, open_acc, strict=True))
    # Test images equal to the training images: each class mean is nearest to its own samples
    # far more often than chance (1/3).
    assert min(ncm) > 50
