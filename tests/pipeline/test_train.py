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
    with pytest.raises(ValueError, match=r"manifest\.json"):
        train_stage(cfg, 1)  # nothing prepared yet
    with pytest.raises(ValueError, match=r"elsewhere/manifest\.json not found"):
        train_stage(cfg, 1, prepared="elsewhere")


def test_the_stage_says_what_ray_will_do_with_an_earlier_run(tmp_path: Path) -> None:
    """Checkpoints of the same run name: resume at the next epoch, or restore a finished run."""
    run = tmp_path / "key-task01"
    assert _ray_run_note(run, 10) is None
    run.mkdir()
    (run / "checkpoint_manager_snapshot.json").write_text("{}")  # Ray's own file, not a checkpoint
    assert _ray_run_note(run, 10) is None
    for name, epoch in (
        ("checkpoint_2026-01-01_10-00-00.1", 4),
        ("checkpoint_2026-01-01_10-00-01.2", 5),
    ):
        (run / name).mkdir()
        (run / name / STATE).write_text(json.dumps({"epoch": epoch}))
    assert _ray_run_note(run, 10) == f"resuming at epoch 7 of 10 from the checkpoints in {run}"
    assert "holds this task's finished run: restoring it" in _ray_run_note(run, 6)
