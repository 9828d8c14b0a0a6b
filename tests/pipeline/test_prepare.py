"""Stage prepare: the splits, a stale task list refused, bad input exits 2, paths as given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sdlora.cli import stage_main
from sdlora.config import load_config
from sdlora.pipeline.layout import PREPARED_DIR
from sdlora.pipeline.prepare import prepare_stage

REPO = Path(__file__).resolve().parents[2]


def test_prepare_stage_writes_the_splits(write_params: Callable[..., Path]) -> None:
    write_params("seed: 3\ndata: {dataset: digits, init_cls: 4, increment: 3}\n", tasks=3)
    assert stage_main("prepare", ["--params", "params.yaml"]) == 0
    manifest = json.loads((Path(PREPARED_DIR) / "manifest.json").read_text())
    assert [t["num_classes"] for t in manifest["tasks"]] == [4, 3, 3]
    assert manifest["params"]["seed"] == 3


def test_prepare_refuses_a_stale_task_list(
    capsys: pytest.CaptureFixture[str], write_params: Callable[..., Path]
) -> None:
    write_params("data: {dataset: digits, init_cls: 4, increment: 3}\n", tasks=5)
    assert stage_main("prepare", ["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert "tasks: params.yaml lists 5 task(s) but data.* has 3" in err
    assert "run `python -m sdlora tasks --write`" in err
    assert not Path(PREPARED_DIR).exists()


@pytest.mark.parametrize(
    ("text", "tasks", "message"),
    [
        ("data: {dataset: imagenet-r}\n", None, "data.root is required"),
        ("data: {dataset: digits}\n", None, "params.yaml has no tasks section"),
        ("data: {dataset: imagenet-r, root: /no/x}\n", 1, "'/no/x': no such folder"),
    ],
)
def test_bad_input_exits_2(
    capsys: pytest.CaptureFixture[str],
    text: str,
    tasks: int | None,
    message: str,
    write_params: Callable[..., Path],
) -> None:
    write_params(text, tasks)
    assert stage_main("prepare", ["--params", "params.yaml"]) == 2
    assert message in capsys.readouterr().err
    assert not Path(PREPARED_DIR).exists()


def test_prepare_writes_where_it_is_told(write_params: Callable[..., Path]) -> None:
    """The command docs/data.md shows, run as DVC runs it; and the library call."""
    write_params("data: {dataset: digits, init_cls: 4, increment: 3}\n", tasks=3)
    done = subprocess.run(
        [sys.executable, str(REPO / "pipelines/prepare.py"), "--params", "params.yaml",
         "--out", "elsewhere/prepared"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (Path("elsewhere/prepared/manifest.json")).is_file()
    assert not Path(PREPARED_DIR).exists()
    manifest = prepare_stage(load_config("params.yaml"), out="other")
    assert json.loads(Path("other/manifest.json").read_text()) == manifest
