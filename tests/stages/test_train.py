"""Stage train@k: its input checks (the stage itself runs end to end in test_pipeline_dvc.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sdlora.config import ConfigError, load_config
from sdlora.stages.train import train_stage


def test_train_stage_needs_its_inputs(write_params: Callable[..., Path]) -> None:
    cfg = load_config(write_params("data: {dataset: digits, init_cls: 2, increment: 2}\n", 5))
    with pytest.raises(ConfigError, match=r"tasks: no entry 7 \(params.yaml lists tasks 0..4\)"):
        train_stage(cfg, 7)
    with pytest.raises(ValueError, match=r"manifest\.json"):
        train_stage(cfg, 1)  # nothing prepared yet
    with pytest.raises(ValueError, match=r"elsewhere/manifest\.json not found"):
        train_stage(cfg, 1, prepared="elsewhere")
