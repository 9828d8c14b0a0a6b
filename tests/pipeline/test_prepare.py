"""Stage prepare@k: the splits, a stale task list refused, bad input exits 2, paths as given."""

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
from sdlora.data.prepare import read_manifest, task_dir
from sdlora.pipeline.layout import PREPARED_DIR
from sdlora.pipeline.prepare import prepare_stage

REPO = Path(__file__).resolve().parents[2]


def _prepare_all(n: int, *extra: str) -> int:
    """Every prepare@k stage, as DVC runs them; the first nonzero exit."""
    for k in range(n):
        if code := stage_main("prepare", ["--params", "params.yaml", "--task", str(k), *extra]):
            return code
    return 0


def test_prepare_stage_writes_the_splits(write_params: Callable[..., Path]) -> None:
    write_params("seed: 3\ndata: {dataset: digits, init_cls: 4, increment: 3}\n", tasks=3)
    assert _prepare_all(3) == 0
    manifest = read_manifest(PREPARED_DIR)
    assert [t["num_classes"] for t in manifest["tasks"]] == [4, 3, 3]
    assert manifest["params"]["seed"] == 3
    assert sorted(p.name for p in Path(PREPARED_DIR).iterdir()) == [task_dir(t) for t in range(3)]


def test_prepare_refuses_a_stale_task_list(
    capsys: pytest.CaptureFixture[str], write_params: Callable[..., Path]
) -> None:
    write_params("data: {dataset: digits, init_cls: 4, increment: 3}\n", tasks=5)
    assert _prepare_all(1) == 2
    err = capsys.readouterr().err
    assert "tasks: params.yaml lists 5 task(s) but data.* has 3" in err
    assert "run `python -m sdlora tasks --write`" in err
    assert not Path(PREPARED_DIR).exists()


def test_prepare_refuses_a_task_the_section_lacks(
    capsys: pytest.CaptureFixture[str], write_params: Callable[..., Path]
) -> None:
    write_params("data: {dataset: digits, tasks: [[1, 2], [3]]}\n", tasks=2)
    assert stage_main("prepare", ["--params", "params.yaml", "--task", "2"]) == 2
    assert "tasks: no entry 2 (params.yaml lists tasks 0..1)" in capsys.readouterr().err


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
    assert _prepare_all(1) == 2
    assert message in capsys.readouterr().err
    assert not Path(PREPARED_DIR).exists()


def test_prepare_writes_where_it_is_told(write_params: Callable[..., Path]) -> None:
    """The command docs/data.md shows, run as DVC runs it; and the library call."""
    write_params("data: {dataset: digits, init_cls: 4, increment: 3}\n", tasks=3)
    done = subprocess.run(
        [sys.executable, str(REPO / "pipelines/prepare.py"), "--params", "params.yaml",
         "--task", "1", "--out", "elsewhere/task_01"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (Path("elsewhere/task_01/task.json")).is_file()
    assert not Path(PREPARED_DIR).exists()
    doc = prepare_stage(load_config("params.yaml"), 1, out="other")
    assert json.loads(Path("other/task.json").read_text()) == doc
    assert (
        Path("other/train.parquet").read_bytes()
        == Path("elsewhere/task_01/train.parquet").read_bytes()
    )
