"""Stage train@k: its input checks and notes (it runs end to end in test_pipeline_dvc.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from sdlora.config import ConfigError, load_config
from sdlora.ops.ray_train import STATE
from sdlora.pipeline.train import _ray_run_note, train_stage


def test_train_stage_needs_its_inputs(write_params: Callable[..., Path]) -> None:
    cfg = load_config(write_params("data: {dataset: digits, init_cls: 2, increment: 2}\n", 5))
    with pytest.raises(ConfigError, match=r"tasks: no entry 7 \(params.yaml lists tasks 0..4\)"):
        train_stage(cfg, 7)
    with pytest.raises(ValueError, match=r"data/prepared not found"):
        train_stage(cfg, 1)  # nothing prepared yet
    Path("elsewhere/task_00").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"elsewhere/task_00/task\.json not found: task 0 is "):
        train_stage(cfg, 1, prepared="elsewhere")


def test_no_note_without_a_run_ray_registered(tmp_path: Path) -> None:
    """A checkpoint folder a kill left before Ray registered it is not the run's: no note
    (tests/ops/test_ray_train.py checks the notes on a real run)."""
    run = tmp_path / "key-task01"
    assert _ray_run_note(run, 10) is None
    (run / "checkpoint_2026-01-01_10-00-01.2").mkdir(parents=True)
    (run / "checkpoint_2026-01-01_10-00-01.2" / STATE).write_text(json.dumps({"epoch": 9}))
    assert _ray_run_note(run, 10) is None
