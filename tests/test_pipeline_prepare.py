"""pipelines/prepare.py: parse --params/--out, run the library, exit 2 on bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _entry() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "prepare_stage", REPO / "pipelines" / "prepare.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage_writes_splits(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(
        "seed: 3\nprogress: false\ndata: {dataset: digits, init_cls: 4, increment: 3}\n"
    )
    assert _entry().main(["--params", str(params), "--out", str(tmp_path / "deep" / "out")]) == 0
    manifest = json.loads((tmp_path / "deep" / "out" / "manifest.json").read_text())
    assert [t["num_classes"] for t in manifest["tasks"]] == [4, 3, 3]
    assert manifest["params"]["seed"] == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data: {dataset: imagenet-r}\n", "data.root is required"),
        ("data: {dataset: imagenet-r, root: /nonexistent/x}\n", "'imagenet-r' at /nonexistent/x"),
    ],
)
def test_bad_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(text)
    assert _entry().main(["--params", str(params), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
