"""What every pipelines/<stage>.py shares: bad input exits 2 (matched by name), results printed."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import pytest

from sdlora.config import ConfigError
from sdlora.ops.ray_train import TrainingFailed
from sdlora.pipeline.cli import BAD_INPUT, FAILED, is_one_of, run_stage, stage_parser


@pytest.mark.parametrize("name", BAD_INPUT + FAILED)
def test_bad_input_and_failed_name_exception_classes(name: str) -> None:
    module, _, cls = name.rpartition(".")
    kind = getattr(importlib.import_module(module), cls)
    assert isinstance(kind, type) and issubclass(kind, Exception)
    assert is_one_of(kind("x"), BAD_INPUT + FAILED)
    assert is_one_of(kind("x"), BAD_INPUT) != (name in FAILED)


def test_run_stage_reports_bad_input_and_keeps_other_tracebacks(
    capsys: pytest.CaptureFixture[str], write_params: Callable[..., Path]
) -> None:
    write_params("seed: 5\n", 1)

    def run(cfg: object, args: object) -> dict:
        raise ConfigError("data.root: nope")

    assert run_stage("demo", stage_parser("demo", "d"), [], run) == 2
    assert capsys.readouterr().err == "demo: error: data.root: nope\n"
    assert (
        run_stage("demo", stage_parser("demo", "d"), [], lambda c, a: {"seed": c.seed}, show=dict)
        == 0
    )
    assert '"seed": 5' in capsys.readouterr().out
    with pytest.raises(ZeroDivisionError):
        run_stage("demo", stage_parser("demo", "d"), [], lambda c, a: 1 / 0)

    def fails(cfg: object, args: object) -> dict:
        raise TrainingFailed("task 1 failed on the Ray workers after 2 retries (...)")

    assert run_stage("demo", stage_parser("demo", "d"), [], fails) == 1
    assert capsys.readouterr().err == (
        "demo: failed: task 1 failed on the Ray workers after 2 retries (...)\n"
    )
    assert run_stage("demo", stage_parser("demo", "d"), ["--params", "missing.yaml"], run) == 2
    assert "missing.yaml: params file not found" in capsys.readouterr().err
