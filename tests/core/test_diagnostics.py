"""Drift diagnostics: NCM on hand-made features; the task-known head ignores other tasks' rows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sdlora.config import DataConfig, parse_config
from sdlora.core.diagnostics import ncm_accuracy, task_known_accuracy
from sdlora.core.evaluate import evaluate
from sdlora.core.model import SDLoRAViT
from sdlora.data.prepare import prepare
from sdlora.data.source import imageset_source
from sdlora.data.tasks import ImageSet


def test_ncm_accuracy_on_hand_made_features() -> None:
    train_f = torch.tensor([[1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.1, 0.8]])
    train_y = torch.tensor([4, 4, 7, 7])
    test_f = torch.tensor([[2.0, 0.3], [0.2, 3.0], [0.1, 1.0]])  # cosine: scale does not matter
    assert ncm_accuracy(train_f, train_y, test_f, torch.tensor([4, 7, 7])) == 100.0
    assert ncm_accuracy(train_f, train_y, test_f, torch.tensor([7, 7, 4])) == pytest.approx(100 / 3)


def _prepared(root: Path) -> Path:
    """Two tasks of 3 classes; each class a noisy constant grey level, so features separate."""
    rng = np.random.default_rng(0)

    def images(per: int) -> ImageSet:
        labels = np.repeat(np.arange(6), per)
        base = (labels * 40 + 20)[:, None, None]
        noise = rng.integers(-10, 10, (labels.size, 16, 16))
        return ImageSet((base + noise).astype(np.uint8), labels, tuple("abcdef"))

    source = imageset_source("grey", images(6), images(3), "test")
    out = root / "prepared"
    prepare(DataConfig(init_cls=3, increment=3), seed=0, out=out, source=source)
    return out


def test_task_known_head_ignores_other_tasks_rows(
    tiny_backbone: Callable[..., nn.Module], tmp_path: Path
) -> None:
    prepared = _prepared(tmp_path)
    cfg = parse_config({"data": {"image_size": 16}, "train": {"eval_batch_size": 5}})
    cpu = torch.device("cpu")
    model = SDLoRAViT(tiny_backbone(), "tiny")
    for _ in range(2):
        model.begin_task(3, 2)
        model.end_task()
    ncm, head = task_known_accuracy(model, prepared, [0, 1], cfg, cpu)
    assert min(ncm) > 50  # grey levels: each class mean is nearest to its own test images
    with torch.no_grad():
        model.head.bias.add_(1e4)  # task 1's rows now win every open arg-max
    ncm_b, head_b = task_known_accuracy(model, prepared, [0, 1], cfg, cpu)
    open_b, _ = evaluate(model, prepared, [0, 1], cfg, cpu)
    assert ncm_b == ncm  # features did not change
    assert head_b == head  # restricted to its own classes, a task ignores the other's rows
    assert open_b[0] == 0.0 and open_b[1] == head_b[1]
