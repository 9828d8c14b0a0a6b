"""The command line: errors are told apart by class (bad input exits 2 with one line, a
failure 1 with its message), anything else keeps its traceback; usage errors exit 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
import pytest

from sdlora.cli import _invoke, main, stage_main
from sdlora.config import ConfigError
from sdlora.core.checkpoint import AdapterMismatchError
from sdlora.core.records import RecordError
from sdlora.data.source import DataError
from sdlora.errors import BadInput, Failed
from sdlora.ops.ray_session import ClusterUnreachable
from sdlora.ops.ray_train import TaskInputError, TrainingFailed
from sdlora.ops.tracking import TrackingError
from sdlora.pipeline.layout import StageError
from sdlora.report.tune import SweepError


@pytest.mark.parametrize(
    ("kind", "base"),
    [(ConfigError, BadInput), (StageError, BadInput), (DataError, BadInput),
     (TrackingError, BadInput), (AdapterMismatchError, BadInput), (TaskInputError, BadInput),
     (RecordError, BadInput), (TrainingFailed, Failed), (ClusterUnreachable, Failed),
     (SweepError, Failed)],
)  # fmt: skip
def test_every_stage_error_is_bad_input_or_a_failure(kind: type, base: type) -> None:
    assert issubclass(kind, base) and not issubclass(kind, ({BadInput, Failed} - {base}).pop())


def _demo(raised: BaseException | None) -> click.Command:
    @click.command()
    def demo() -> None:
        if raised is not None:
            raise raised

    return demo


def test_bad_input_is_one_line_and_other_errors_keep_their_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = (BadInput, FileExistsError)
    assert _invoke(_demo(ConfigError("data.root: nope")), [], "demo", "demo", bad) == 2
    assert capsys.readouterr().err == "demo: error: data.root: nope\n"
    assert _invoke(_demo(None), [], "demo", "demo", bad) == 0
    failed = TrainingFailed("task 1 failed on the Ray workers after 2 retries (...)")
    assert _invoke(_demo(failed), [], "demo", "demo", bad) == 1
    assert capsys.readouterr().err == (
        "demo: failed: task 1 failed on the Ray workers after 2 retries (...)\n"
    )
    with pytest.raises(ZeroDivisionError):
        _invoke(_demo(ZeroDivisionError()), [], "demo", "demo", bad)
    assert _invoke(_demo(None), ["--bogus"], "demo", "demo", bad) == 2  # a usage error


def test_a_stage_names_its_params_file_when_it_is_missing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert stage_main("validate", ["--params", "missing.yaml"]) == 2
    assert capsys.readouterr().err == "validate: error: missing.yaml: params file not found\n"


def test_every_stage_of_the_pipelines_has_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("validate", "prepare", "pretrain", "train", "evaluate", "report", "compare",
                 "tune"):  # fmt: skip
        assert stage_main(name, ["--help"]) == 0
        assert capsys.readouterr().out.startswith(f"Usage: pipelines/{name}.py [OPTIONS]")


def test_sdlora_reports_bad_input_with_its_command_name(
    capsys: pytest.CaptureFixture[str], write_params: Callable[..., Path] | None = None
) -> None:
    assert main(["metrics", "nothere.csv"]) == 2
    assert capsys.readouterr().err.startswith("sdlora metrics: error: nothere.csv")
    assert main(["--help"]) == 0


def test_ctrl_c_in_a_stage_says_how_to_resume_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sdlora.pipeline.validate as validate

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(validate, "validate_stage", interrupted)
    assert stage_main("validate", []) == 130
    err = capsys.readouterr().err
    assert err.strip() == "validate: interrupted: re-run `dvc repro` to resume"


def test_sdlora_run_refuses_a_backbone_timm_cannot_build_before_preparing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("progress: false\nbackbone: {kwargs: {depht: 2}}\n")
    assert main(["run", "--out", "out"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdlora run: error: backbone.kwargs = {'depht': 2}: timm cannot build")
    assert err.count("\n") == 1 and not Path("out").exists()


@pytest.mark.parametrize(
    ("argv", "line"),
    [(["metrics", "m.csv", "--counts", "1,x"], "Invalid value for '--counts': counts entry 1"),
     (["metrics"], "Missing argument 'MATRIX'"),
     (["metrics", "m.csv", "--bogus"], "No such option '--bogus'")],
)  # fmt: skip
def test_a_usage_error_is_one_line_naming_the_option(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sdlora metrics: error: {line}") and err.count("\n") == 1, err
    assert err.endswith("(see `sdlora metrics --help`)\n")
