"""A prepared split's identity: equal for the same files wherever they lie, else different."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from sdlora.cli import sdlora
from sdlora.config import DataConfig
from sdlora.data.identity import split_identity
from sdlora.data.prepare import prepare


def _prepared(root: Path, out: Path, seed: int = 0) -> Path:
    cfg = DataConfig(dataset="imagefolder", root=str(root), init_cls=2, increment=2, augment="none")
    prepare(cfg, seed=seed, out=out)
    return out


def test_same_files_elsewhere_same_identity_a_change_shows(
    tmp_path: Path, cub_factory: Callable[..., Path], folder_factory: Callable[..., list[Path]]
) -> None:
    folder_factory(tmp_path / "a", ["cat", "dog", "eel", "fox"], train_per_class=3)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    first = split_identity(_prepared(tmp_path / "a", tmp_path / "pa"))
    moved = split_identity(_prepared(tmp_path / "b", tmp_path / "pb"))
    assert moved == first  # another root, the same files: the same identity
    assert [(t["train"], t["test"]) for t in first["tasks"]] == [(6, 2), (6, 2)]
    assert sorted(first["class_order"]) == ["cat", "dog", "eel", "fox"]

    reseeded = split_identity(_prepared(tmp_path / "a", tmp_path / "ps", seed=3))
    assert reseeded["class_order"] != first["class_order"]
    assert reseeded["file_list_sha256"] != first["file_list_sha256"]

    (tmp_path / "b" / "train" / "cat" / "art_0.jpg").rename(tmp_path / "b/train/cat/new.jpg")
    renamed = split_identity(_prepared(tmp_path / "b", tmp_path / "pr"))
    changed = [a != b for a, b in zip(first["tasks"], renamed["tasks"], strict=True)]
    assert sum(changed) == 1 and renamed["file_list_sha256"] != first["file_list_sha256"]


def test_command_prints_one_line_per_task(
    tmp_path: Path, folder_factory: Callable[..., list[Path]]
) -> None:
    folder_factory(tmp_path / "a", ["cat", "dog", "eel", "fox"])
    prepared = _prepared(tmp_path / "a", tmp_path / "p")
    result = CliRunner().invoke(sdlora, ["identity", str(prepared)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{prepared}: imagefolder (split: train/<class>/, test/<class>/), 2 tasks"
    assert lines[1].startswith("file list  sha256:") and len(lines) == 6
    assert lines[4].split()[:3] == ["0", "8", "2"]
    as_json = CliRunner().invoke(sdlora, ["identity", str(prepared), "--json"])
    assert '"file_list_sha256"' in as_json.output
