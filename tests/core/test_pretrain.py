"""Pre-training runs as a task trains: ``train.threads`` torch threads, progress within an epoch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import sdlora.core.pretrain as pretrain
from sdlora.config import Config, parse_config


def _cfg(threads: int = 1, batch_size: int = 64) -> Config:
    """The tiny backbone of tests/core/test_train.py, a few letters each, one epoch."""
    return parse_config({
        "progress": False,
        "data": {"dataset": "digits", "image_size": 16, "augment": "none"},
        "backbone": {"name": "vit_tiny_patch16_224", "weights": None, "kwargs": {
            "img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2,
            "global_pool": "avg"}},
        "pretrain": {"per_class": 4, "epochs": 1, "batch_size": batch_size},
        "train": {"threads": threads},
    })  # fmt: skip


def test_pretraining_uses_train_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    threads = before + 1  # not the default, so the test sees it applied
    seen: list[tuple[str, int]] = []

    def spy(name: str):  # the thread count each call of ``name`` runs with
        real = getattr(pretrain, name)

        def call(*args, **kwargs):
            seen.append((name, torch.get_num_threads()))
            return real(*args, **kwargs)

        return call

    for name in ("run_epoch", "evaluate"):  # training and its validation
        monkeypatch.setattr(pretrain, name, spy(name))
    pretrain.pretrain_backbone(_cfg(threads), tmp_path / "b.safetensors", progress=False)
    assert seen == [("run_epoch", threads), ("evaluate", threads)]
    assert torch.get_num_threads() == before  # restored


def test_pretraining_shows_progress_within_an_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Off a terminal (a log), a line each tenth of the epoch before the epoch's own line."""
    out = tmp_path / "b.safetensors"
    pretrain.pretrain_backbone(_cfg(batch_size=8), out, progress=True)  # 52 * 4 / 8 = 26 batches
    lines = capsys.readouterr().err.splitlines()
    batch = re.compile(r"pretrain epoch 1/1: batch (\d+)/26, loss ")
    within = [int(m[1]) for m in map(batch.match, lines) if m]
    assert within == [3, 6, 9, 12, 15, 18, 21, 24]  # every ceil(26 / 10) batches, not the last
    assert re.match(r"pretrain epoch 1/1: loss .* validation accuracy", lines[-1])
    pretrain.pretrain_backbone(_cfg(batch_size=8), out, progress=False)
    assert capsys.readouterr() == ("", "")
