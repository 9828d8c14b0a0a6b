"""``python -m sdlora tasks``: print or write the task list for data.*."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sdlora.cli import main as cli
from sdlora.config import ConfigError, load_config


def test_tasks_command_prints_and_writes(
    capsys: pytest.CaptureFixture[str], write_params: Callable[..., Path]
) -> None:
    path = write_params("data: {dataset: digits, init_cls: 4, increment: 2}\n", 2)  # stale: 4 tasks
    with pytest.raises(ConfigError, match="lists 2 task"):
        load_config(path).check_num_tasks(4, "data")
    assert cli(["tasks", "--params", str(path)]) == 0
    assert '"3": {split: data/prepared/task_03' in capsys.readouterr().out
    assert cli(["tasks", "--params", str(path), "--write"]) == 0
    assert "lists 4 task(s) (was 2)" in capsys.readouterr().out
    assert sorted(load_config(path).tasks) == [0, 1, 2, 3]
